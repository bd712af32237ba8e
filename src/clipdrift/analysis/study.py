"""Every table of a study at once, from its runs' artifacts (the aggregate step)."""

from __future__ import annotations

import pandas as pd

from clipdrift.analysis.compare import comparison_pairs, comparisons, correlations
from clipdrift.analysis.frontier import curve_points
from clipdrift.analysis.layergroups import layer_groups
from clipdrift.analysis.reference import (
    PUBLISHED_METRICS,
    PUBLISHED_SD_DDOF,
    load_reference,
    paper_comparison,
    paper_correlations,
)
from clipdrift.analysis.relations import cka_entropy_relations
from clipdrift.analysis.sensitivity import probe_sensitivity
from clipdrift.analysis.tables import cell_table, layer_table, method_table, run_table


def build_tables(
    histories: list[dict],
    zeroshot: list[dict],
    attention: pd.DataFrame | None,
    cka: pd.DataFrame | None,
    compare_with_paper: bool = False,
    sensitivity: pd.DataFrame | None = None,
    curves: pd.DataFrame | None = None,
    bases: dict[str, str] | None = None,
) -> dict[str, pd.DataFrame]:
    """Every table of the study, keyed by the names in ``TABLES`` (+ ``PAPER_TABLES`` when
    ``compare_with_paper``: the study is the paper preset). ``sensitivity``: the runs'
    probe-sensitivity tables, concatenated (None when the study did not measure it). ``bases``:
    each method or variant name → the method it trains with (variants are compared with it)."""
    runs = run_table(histories, zeroshot, attention, cka)
    tables = {
        "runs": runs,
        "cells": cell_table(runs),
        "methods": method_table(runs),
        "layers": layer_table(attention, cka, runs=runs),
        "stats": comparisons(runs, pairs=comparison_pairs(runs["method"].unique(), bases)),
        "layer_groups": layer_groups(attention, runs),
        "correlations": correlations(runs),
        "cka_entropy": cka_entropy_relations(runs, attention, cka),
        "probe_sensitivity": probe_sensitivity(sensitivity, runs),
        "curves": curve_points(curves, runs),
    }
    if compare_with_paper:
        published = load_reference("cells")
        like_published = cell_table(runs, metrics=list(PUBLISHED_METRICS.values()), ci_metrics=(),
                                    ddof=PUBLISHED_SD_DDOF)
        tables["paper_cells"] = paper_comparison(like_published, published)
        tables["paper_methods"] = paper_comparison(tables["methods"], load_reference("methods"))
        tables["paper_correlations"] = paper_correlations(tables["correlations"], load_reference("correlations"))
    return tables
