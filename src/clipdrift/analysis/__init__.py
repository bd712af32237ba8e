"""The study's analysis: tidy tables, statistics, findings, figures, the published comparison.

Pure functions of the run artifacts (``docs/artifacts.md``); no model code and no file I/O —
the aggregate and report scripts read artifacts, call these, and write with ``clipdrift.io``.

- ``tables``: :func:`run_table`, :func:`cell_table`, :func:`method_table`, :func:`layer_table`
- ``stats`` / ``compare``: :func:`bootstrap_ci`, :func:`holm`, :func:`comparisons`, :func:`correlations`
- ``findings``: regimes that method-only averages hide, as generated sentences
- ``reference``: the published cell means and :func:`paper_comparison`
- ``figures``: :func:`make_figures` and the individual figures
"""

from __future__ import annotations

import pandas as pd

from clipdrift.analysis.compare import comparisons, correlations
from clipdrift.analysis.findings import findings, pretrained_top1
from clipdrift.analysis.reference import PUBLISHED_PRETRAINED_ZEROSHOT, load_reference, paper_comparison
from clipdrift.analysis.stats import bootstrap_ci, holm
from clipdrift.analysis.tables import cell_table, layer_table, method_table, run_table
from clipdrift.outputs import PAPER_TABLES, TABLES

__all__ = [
    "PUBLISHED_PRETRAINED_ZEROSHOT",
    "TABLES",
    "bootstrap_ci",
    "build_tables",
    "cell_table",
    "comparisons",
    "correlations",
    "findings",
    "holm",
    "layer_table",
    "load_reference",
    "method_table",
    "paper_comparison",
    "pretrained_top1",
    "run_table",
]


def build_tables(
    histories: list[dict],
    zeroshot: list[dict],
    attention: pd.DataFrame | None,
    cka: pd.DataFrame | None,
    compare_with_paper: bool = False,
) -> dict[str, pd.DataFrame]:
    """Every table of the study, keyed by the names in ``TABLES`` (+ ``PAPER_TABLES`` when
    ``compare_with_paper``: the study is the paper preset)."""
    runs = run_table(histories, zeroshot, attention, cka)
    tables = {
        "runs": runs,
        "cells": cell_table(runs),
        "methods": method_table(runs),
        "layers": layer_table(attention, cka, runs=runs),
        "stats": comparisons(runs),
        "correlations": correlations(runs),
    }
    if compare_with_paper:
        tables["paper_cells"] = paper_comparison(tables["cells"], load_reference("cells"))
        tables["paper_methods"] = paper_comparison(tables["methods"], load_reference("methods"))
    return tables
