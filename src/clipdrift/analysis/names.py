"""The names of the study's tables (what the aggregate step writes under tables/) and of the
metrics in them: one entry per metric column, used by the findings' sentences and by every
table of the report.

Standard library only: the Snakefile reads the table names to declare the aggregate step's
outputs on every start.
"""

from dataclasses import dataclass

# Table names as written under tables/ (the paper tables only for the paper preset).
TABLES = ("runs", "cells", "methods", "layers", "stats", "correlations", "cka_entropy", "probe_sensitivity", "curves",
          "layer_groups", "layer_tests", "traces", "zeroshot", "curve_tasks")
PAPER_TABLES = ("paper_cells", "paper_methods", "paper_correlations", "paper_ablations")


@dataclass(frozen=True)
class Metric:
    """A metric column: how a sentence names it, and its label in a table (with its unit)."""

    words: str
    label: str


METRICS = {
    "best_select_acc": Metric("selection accuracy", "selection acc. (%)"),
    "final_test_acc": Metric("test accuracy", "test acc. (%)"),
    "zs_top1": Metric("zero-shot top-1", "zero-shot top-1 (%)"),
    "zs_top5": Metric("zero-shot top-5", "zero-shot top-5 (%)"),
    "zs_balanced": Metric("zero-shot balanced accuracy", "zero-shot balanced (%)"),
    "drift_entropy_pct": Metric("CLS-attention entropy drift", "entropy drift (%)"),
    "drift_entropy_layers_pct": Metric("per-layer entropy drift (RMS)", "per-layer entropy drift, RMS (%)"),
    "drift_erf95_pct": Metric("ERF@0.95 drift", "ERF drift (%)"),
    "drift_gini_pct": Metric("Gini drift", "Gini drift (%)"),
    "drift_head_diversity_pct": Metric("head-diversity drift", "head div. drift (%)"),
    "drift_rollout_entropy_pct": Metric("rollout entropy drift", "rollout entropy drift (%)"),
    "drift_p2p_entropy_pct": Metric("patch-to-patch entropy drift", "p2p entropy drift (%)"),
    "cka_mean": Metric("mean CKA to the pretrained model", "mean CKA"),
    "trainable_params": Metric("trainable parameters", "trainable params"),
    "train_time_s": Metric("training time", "train time (s)"),
    "images_per_s": Metric("training throughput", "images/s"),
}


def metric_label(column: str) -> str:
    """A metric's table label (the column name for a column without an entry)."""
    return METRICS[column].label if column in METRICS else column


def metric_words(column: str) -> str:
    """How a sentence names a metric (the column name for a column without an entry)."""
    return METRICS[column].words if column in METRICS else column
