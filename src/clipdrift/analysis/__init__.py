"""The study's analysis: tidy tables, statistics, findings, figures, the published comparison.

Pure functions of the run artifacts (``docs/artifacts.md``); no model code and no file I/O —
the aggregate and report scripts read artifacts, call these, and write with ``clipdrift.core.io``.

- ``tables``: :func:`run_table`, :func:`cell_table`, :func:`method_table`, :func:`layer_table`
- ``stats`` / ``compare``: :func:`bootstrap_ci`, :func:`holm`, :func:`comparisons`, :func:`correlations`
- ``findings``: regimes that method-only averages hide, as generated sentences
- ``reference``: the published numbers, :func:`paper_comparison`, :func:`paper_correlations`
- ``relations``: CKA against entropy drift, per run and per layer, with permutation p-values
- ``sensitivity``: how much of a drift the probe subset alone could explain
- ``figures``: :func:`make_figures` and the individual figures
"""

from __future__ import annotations

import pandas as pd

from clipdrift.analysis.compare import comparisons, correlations
from clipdrift.analysis.findings import findings, pretrained_top1
from clipdrift.analysis.frontier import curve_points
from clipdrift.analysis.reference import (
    PUBLISHED_METRICS,
    PUBLISHED_PRETRAINED_ZEROSHOT,
    PUBLISHED_SD_DDOF,
    load_reference,
    paper_comparison,
    paper_correlations,
)
from clipdrift.analysis.relations import cka_entropy_relations
from clipdrift.analysis.sensitivity import probe_sensitivity, sensitivity_summary
from clipdrift.analysis.stats import bootstrap_ci, holm
from clipdrift.analysis.tables import cell_table, layer_table, method_table, run_table
from clipdrift.pipeline.artifacts import PAPER_TABLES, TABLES

__all__ = [
    "PAPER_TABLES",
    "PUBLISHED_PRETRAINED_ZEROSHOT",
    "TABLES",
    "bootstrap_ci",
    "build_tables",
    "cka_entropy_relations",
    "cell_table",
    "comparisons",
    "correlations",
    "findings",
    "holm",
    "layer_table",
    "load_reference",
    "method_table",
    "paper_comparison",
    "paper_correlations",
    "pretrained_top1",
    "probe_sensitivity",
    "run_table",
    "sensitivity_summary",
]


def build_tables(
    histories: list[dict],
    zeroshot: list[dict],
    attention: pd.DataFrame | None,
    cka: pd.DataFrame | None,
    compare_with_paper: bool = False,
    sensitivity: pd.DataFrame | None = None,
    curves: pd.DataFrame | None = None,
) -> dict[str, pd.DataFrame]:
    """Every table of the study, keyed by the names in ``TABLES`` (+ ``PAPER_TABLES`` when
    ``compare_with_paper``: the study is the paper preset). ``sensitivity``: the runs'
    probe-sensitivity tables, concatenated (None when the study did not measure it)."""
    runs = run_table(histories, zeroshot, attention, cka)
    tables = {
        "runs": runs,
        "cells": cell_table(runs),
        "methods": method_table(runs),
        "layers": layer_table(attention, cka, runs=runs),
        "stats": comparisons(runs),
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
