"""Every table and finding of a study at once, from its runs' artifacts (the aggregate step)."""

from __future__ import annotations

import pandas as pd

from clipdrift.analysis.ablation import regulariser_findings
from clipdrift.analysis.compare import comparison_pairs, comparisons, correlations
from clipdrift.analysis.findings import findings
from clipdrift.analysis.frontier import curve_points
from clipdrift.analysis.intervention import intervention_effects, intervention_points, intervention_table
from clipdrift.analysis.layergroups import layer_groups, layer_pair_tests
from clipdrift.analysis.ranking import method_ranking, ranking_findings
from clipdrift.analysis.reference import (
    PUBLISHED_METRICS,
    PUBLISHED_SD_DDOF,
    ablation_comparison,
    load_reference,
    paper_comparison,
    paper_correlations,
)
from clipdrift.analysis.relations import cka_entropy_relations
from clipdrift.analysis.sensitivity import probe_sensitivity
from clipdrift.analysis.suite import pretrained_suite, suite_curves, suite_means, zeroshot_table
from clipdrift.analysis.tables import cell_table, layer_table, method_table, run_table
from clipdrift.analysis.traces import entropy_traces
from clipdrift.analysis.variants import family_findings
from clipdrift.analysis.weight_findings import weight_findings
from clipdrift.analysis.weights import (
    intruder_sweep_table,
    weight_layer_table,
    weight_overlap_table,
    weight_run_summary,
    weight_table,
)


def build_tables(
    histories: list[dict],
    zeroshot: list[dict],
    attention: pd.DataFrame | None,
    cka: pd.DataFrame | None,
    compare_with_paper: bool = False,
    sensitivity: pd.DataFrame | None = None,
    curves: pd.DataFrame | None = None,
    variants: dict[str, dict] | None = None,
    pretrained_zeroshot: list[dict] | None = None,
    published_definitions: dict[str, bool] | None = None,
    weights: pd.DataFrame | None = None,
    intruder_sweep: pd.DataFrame | None = None,
    weight_overlap: pd.DataFrame | None = None,
    intervention: pd.DataFrame | None = None,
) -> dict[str, pd.DataFrame]:
    """Every table of the study, keyed by the names in ``TABLES`` (+ ``PAPER_TABLES`` when
    ``compare_with_paper``: the study is the paper preset). ``zeroshot``: the runs' score files
    (one record per held-out task); ``pretrained_zeroshot``: the pretrained model's score per
    task, which retention divides by. ``sensitivity``: the runs'
    probe-sensitivity tables, concatenated (None when the study did not measure it). ``variants``:
    each method or variant name → its ``methods:`` entry (``{"method": ..., ...}``): a variant is
    compared with the method it trains with. ``published_definitions``: which methods the study
    trains with the published ablations' definitions (only those are set beside the authors'
    ablation numbers). ``weights``, ``intruder_sweep``: the runs' weight-space drift tables,
    concatenated; ``weight_overlap``: the study's overlap table (None when it did not measure them);
    ``intervention``: the runs' intruder-intervention tables, concatenated (None when off)."""
    bases = {name: entry["method"] for name, entry in (variants or {}).items()}
    pretrained = pretrained_suite(pretrained_zeroshot or [])
    per_task = zeroshot_table(zeroshot, pretrained)
    runs = run_table(histories, suite_means(per_task), attention, cka, weight_run_summary(weights))
    curves, curve_tasks = suite_curves(curves, pretrained)
    pairs = comparison_pairs(runs["method"].unique(), bases)
    tables = {
        "runs": runs,
        "zeroshot": per_task,
        "cells": cell_table(runs),
        "methods": method_table(runs),
        "layers": layer_table(attention, cka, runs=runs),
        "stats": comparisons(runs, pairs=pairs),
        "layer_groups": layer_groups(attention, runs),
        "layer_tests": layer_pair_tests(attention, runs, [(a, b) for a, b in pairs if bases.get(b, b) != b]),
        "traces": entropy_traces(histories, runs),
        "correlations": correlations(runs),
        "cka_entropy": cka_entropy_relations(runs, attention, cka),
        "probe_sensitivity": probe_sensitivity(sensitivity, runs),
        "curves": curve_points(curves, runs),
        "curve_tasks": curve_points(curve_tasks, runs, extra=["task"]),
        "weights": weight_table(weights),
        "weight_layers": weight_layer_table(weights, runs),
        "intruder_sweep": intruder_sweep_table(intruder_sweep, runs),
        "weight_overlap": weight_overlap_table(weight_overlap, runs),
    }
    intervened = intervention_points(intervention, pretrained, runs)
    tables["intervention"] = intervention_table(intervened)
    tables["intervention_effects"] = intervention_effects(intervened)
    tables["method_ranking"] = method_ranking(tables["curves"], runs)
    if compare_with_paper:
        published = load_reference("cells")
        like_published = cell_table(runs, metrics=list(PUBLISHED_METRICS.values()), ci_metrics=(),
                                    ddof=PUBLISHED_SD_DDOF)
        tables["paper_cells"] = paper_comparison(like_published, published)
        tables["paper_methods"] = paper_comparison(tables["methods"], load_reference("methods"))
        tables["paper_correlations"] = paper_correlations(tables["correlations"], load_reference("correlations"))
        tables["paper_ablations"] = ablation_comparison(like_published, load_reference("ablations"),
                                                        published_definitions or {})
    return tables


def study_findings(tables: dict[str, pd.DataFrame], pretrained_zeroshot: list[dict],
                   variants: dict[str, dict] | None = None) -> list[dict]:
    """The study's findings (:func:`clipdrift.analysis.findings.findings`), then what its
    regularised variants answer (:func:`clipdrift.analysis.ablation.regulariser_findings`) and what
    every variant family changes (:func:`clipdrift.analysis.variants.family_findings`)."""
    # on the suite means: the pretrained model's suite-mean top-1 against the runs'
    found = findings(tables["runs"], pretrained_suite(pretrained_zeroshot), sensitivity=tables["probe_sensitivity"],
                     family=tables["stats"],
                     curves=tables["curves"])
    return (found + regulariser_findings(tables["curves"], tables["runs"], variants, family=tables["stats"],
                                         correlations=tables["correlations"])
            + family_findings(tables["stats"], variants) + weight_findings(tables)
            + ranking_findings(tables.get("method_ranking", pd.DataFrame())))
