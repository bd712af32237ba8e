"""Names of the study's tables and report figures.

Kept apart from ``clipdrift.analysis`` so that the Snakefile, which needs them to declare the
aggregate and report outputs, does not import pandas, scipy and matplotlib on every start
(every ``snakemake -n`` and every SLURM job step parses it).
"""

# Table names as written under tables/ (the paper tables only for the paper preset).
TABLES = ("runs", "cells", "methods", "layers", "stats", "correlations", "cka_entropy", "probe_sensitivity", "curves")
PAPER_TABLES = ("paper_cells", "paper_methods", "paper_correlations")

# Report figures in reading order, with their titles.
FIGURES = {
    "lr_panels": "Learning-rate panels",
    "layer_entropy_drift": "Per-layer entropy drift",
    "layer_erf_drift": "Per-layer ERF@0.95 drift",
    "drift_vs_zeroshot": "Attention drift vs zero-shot accuracy",
    "cka_profiles": "CKA to the pretrained model per layer",
    "indomain_vs_zeroshot": "In-domain vs zero-shot accuracy",
}
# Figures of the curves (curves.enabled) and of the per-epoch trajectories (curves.epochs).
CURVE_FIGURES = {"frontier": "Robustness frontier: weight interpolation"}
TRAJECTORY_FIGURES = {"trajectories": "Per-epoch trajectories"}
