"""The report's figures in reading order, with their titles.

No imports: the Snakefile reads them to declare the report step's outputs on every start.
"""

FIGURES = {
    "lr_panels": "Learning-rate panels",
    "layer_entropy_drift": "Per-layer entropy drift",
    "layer_erf_drift": "Per-layer ERF@0.95 drift",
    "drift_vs_zeroshot": "Attention drift vs zero-shot accuracy",
    "cka_profiles": "CKA to the pretrained model per layer",
    "indomain_vs_zeroshot": "In-domain vs zero-shot accuracy",
    "suite_retention": "Held-out suite: retention per task",
}
# Figures of the curves (curves.enabled) and of the per-epoch trajectories (curves.epochs).
CURVE_FIGURES = {"frontier": "Robustness frontier: weight interpolation"}
TRAJECTORY_FIGURES = {"trajectories": "Per-epoch trajectories"}
# The figure of the traced attention entropy (training.entropy_trace_every > 0).
TRACE_FIGURES = {"collapse_traces": "Collapse onset: attention entropy through training"}
