"""The names of the study's tables (what the aggregate step writes under tables/) and of the
metrics in them: one entry per metric column, used by the findings' sentences and by every
table of the report.

Standard library only: the Snakefile reads the table names to declare the aggregate step's
outputs on every start.
"""

from dataclasses import dataclass

# Table names as written under tables/ (the paper tables only for the paper preset).
TABLES = ("runs", "cells", "methods", "layers", "stats", "correlations", "cka_entropy", "probe_sensitivity", "curves",
          "layer_groups", "layer_tests", "traces", "zeroshot", "curve_tasks", "weights", "weight_layers", "intruder_sweep",
          "weight_overlap", "intervention", "intervention_effects", "method_ranking")
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
    "weight_drift_pct": Metric("relative weight change", "weight change ‖ΔW‖/‖W0‖ (%)",
                               "the mean over the image tower's matrices of the change's norm relative to the "
                               "pretrained matrix; 0 = unchanged", shown=("cells", "runs")),
    "weight_rank90": Metric("rank-90 of the weight change", "ΔW rank-90",
                            "the median over the changed matrices of the fewest singular directions holding 90% of "
                            "the change's energy (weights.energy_share)", shown=("cells", "runs"), compared=True),
    "weight_effective_rank": Metric("effective rank of the weight change", "ΔW effective rank",
                                    "the median over the changed matrices of exp(entropy of ΔW's normalised singular "
                                    "values)", shown=("runs",)),
    "weight_intruders": Metric("intruder dimensions", "intruders",
                               "over the tower's matrices: top singular directions of a fine-tuned matrix with no "
                               "pretrained one within the cosine threshold (weights.top_k, weights.epsilon); compare "
                               "with the random baseline", shown=("cells", "runs"), compared=True),
    "weight_random_intruders": Metric("random-direction intruders", "random intruders",
                                      "what as many random directions count at the same dimensions: chance alone",
                                      shown=("runs",)),
    "weight_intruder_energy": Metric("intruders' energy share", "intruder energy",
                                     "the mean over the matrices of the intruders' share of the matrix's squared "
                                     "singular values; 0 = none", shown=("runs",)),
    "weight_delta_magnitude": Metric("magnitude change ΔM", "magnitude change ΔM",
                                     "the mean over output units and matrices of |‖W_n‖ − ‖W0_n‖| (DoRA's "
                                     "decomposition)", shown=("runs",)),
    "weight_delta_direction": Metric("direction change ΔD", "direction change ΔD",
                                     "the mean over output units and matrices of 1 − cos(W_n, W0_n)", shown=("runs",)),
    "weight_dm_slope": Metric("slope of ΔM against ΔD", "ΔM–ΔD slope",
                              "the least-squares slope of the magnitude change against the direction change over "
                              "every layer's query matrix through training (DoRA's view): its sign tells whether a "
                              "method moves magnitude and direction together or trades one for the other",
                              shown=("cells", "runs"), compared=True),
    "trainable_params": Metric("trainable parameters", "trainable params", "the parameters the method trains",
                               shown=("runs",)),
    "train_time_s": Metric("training time", "train time (s)", "wall time of the fine-tune", shown=("runs",)),
    "images_per_s": Metric("training throughput", "images/s", "training images per second; higher is faster",
                           shown=("runs",)),
}


# The run table's weight-space columns: each a summary over the tower's matrices at the drift checkpoint of
# one measure of clipdrift.measure.weights (totals for counts, medians for ranks over the matrices the run
# changed, means for the rest; clipdrift.analysis.weights computes them)
WEIGHT_SUMMARIES = {
    "weight_drift_pct": ("relative_drift", "mean"),
    "weight_rank90": ("rank90", "median"),
    "weight_effective_rank": ("effective_rank", "median"),
    "weight_intruders": ("intruders", "sum"),
    "weight_random_intruders": ("random_intruders", "sum"),
    "weight_intruder_energy": ("intruder_energy", "mean"),
    "weight_delta_magnitude": ("delta_magnitude", "mean"),
    "weight_delta_direction": ("delta_direction", "mean"),
}
# ... and the slope of ΔM against ΔD through training (clipdrift.analysis.weights.magnitude_direction_slopes)
DM_SLOPE = "weight_dm_slope"


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
