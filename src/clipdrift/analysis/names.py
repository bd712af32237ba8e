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
    """A metric column: how a sentence names it, its label in a table (with its unit), how to read
    its value, and where the report uses it: the tables that show it (``cells``: the cell and
    method tables; ``runs``: the per-run table), whether methods are tested on it per cell (the
    comparisons table) and whether the cell table gives it a bootstrap interval."""

    words: str
    label: str
    reads: str
    shown: tuple[str, ...] = ()
    compared: bool = False
    interval: bool = False


_ACCURACY = "higher is better"
_DRIFT = "% change from the pretrained model's value; 0 = unchanged"
_HEADLINE = {"shown": ("cells", "runs"), "compared": True, "interval": True}

METRICS = {
    "best_select_acc": Metric("selection accuracy", "selection acc. (%)",
                              "the best accuracy on the selection split over the epochs; " + _ACCURACY, **_HEADLINE),
    "final_test_acc": Metric("test accuracy", "test acc. (%)", _ACCURACY, **_HEADLINE),
    "zs_top1": Metric("zero-shot top-1", "zero-shot top-1 (%)", _ACCURACY, **_HEADLINE),
    "zs_top5": Metric("zero-shot top-5", "zero-shot top-5 (%)", _ACCURACY, shown=("runs",)),
    "zs_balanced": Metric("zero-shot balanced accuracy", "zero-shot balanced (%)", _ACCURACY, shown=("runs",)),
    "drift_entropy_pct": Metric("CLS-attention entropy drift", "entropy drift (%)",
                                _DRIFT + "; below 0 = attention more concentrated", **_HEADLINE),
    "drift_entropy_layers_pct": Metric("per-layer entropy drift (RMS)", "per-layer entropy drift, RMS (%)",
                                       "how far the layers moved whatever the sign; 0 = unchanged",
                                       shown=("cells",), compared=True),
    "drift_erf95_pct": Metric("ERF@0.95 drift", "ERF drift (%)", _DRIFT + "; below 0 = fewer patches hold 95% "
                              "of the CLS attention", **_HEADLINE),
    "drift_gini_pct": Metric("Gini drift", "Gini drift (%)", _DRIFT + "; above 0 = attention more unequal",
                             shown=("runs",)),
    "drift_head_diversity_pct": Metric("head-diversity drift", "head div. drift (%)",
                                       _DRIFT + "; below 0 = heads more alike", shown=("runs",)),
    "drift_rollout_entropy_pct": Metric("rollout entropy drift", "rollout entropy drift (%)", _DRIFT,
                                        shown=("runs",)),
    "drift_p2p_entropy_pct": Metric("patch-to-patch entropy drift", "p2p entropy drift (%)", _DRIFT,
                                    shown=("runs",)),
    "cka_mean": Metric("mean CKA to the pretrained model", "mean CKA",
                       "1 = the same representation as the pretrained model", **_HEADLINE),
    "trainable_params": Metric("trainable parameters", "trainable params", "the parameters the method trains",
                               shown=("runs",)),
    "train_time_s": Metric("training time", "train time (s)", "wall time of the fine-tune", shown=("runs",)),
    "images_per_s": Metric("training throughput", "images/s", "training images per second; higher is faster",
                           shown=("runs",)),
}


def shown_in(table: str) -> tuple[str, ...]:
    """The metric columns a report table shows (``cells`` or ``runs``), in the registry's order."""
    return tuple(name for name, metric in METRICS.items() if table in metric.shown)


def compared_metrics() -> tuple[str, ...]:
    """The metrics methods are tested on per cell (the comparisons table)."""
    return tuple(name for name, metric in METRICS.items() if metric.compared)


def interval_metrics() -> tuple[str, ...]:
    """The metrics the cell table gives a bootstrap interval: the ones the report's story rests on."""
    return tuple(name for name, metric in METRICS.items() if metric.interval)


def metric_label(column: str) -> str:
    """A metric's table label (the column name for a column without an entry)."""
    return METRICS[column].label if column in METRICS else column


def metric_words(column: str) -> str:
    """How a sentence names a metric (the column name for a column without an entry)."""
    return METRICS[column].words if column in METRICS else column
