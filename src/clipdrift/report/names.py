"""The report's figures in reading order: each one's title, its caption (the page's and the one
Snakemake's ``report()`` shows, written beside the figure), the function that draws it and what
the study must measure for it.

Standard library only: the Snakefile reads them to declare the report step's outputs on every
start, so a drawing is named: a function of :mod:`clipdrift.report.figures` (which imports those
drawn elsewhere, so that the report's code digest covers every drawing), called by its
:func:`~clipdrift.report.figures.make_figures`.
"""

from dataclasses import dataclass, field

# Up to this many methods share a panel; with more, each method family (a method and its
# variants) has panels of its own, methods without variants this many a panel, the reference
# methods drawn bold in each.
SHARED_PANEL_METHODS = 4
_FAMILIES = (f" With more than {SHARED_PANEL_METHODS} methods, each method with variants has panels of its own "
             f"and the methods without share panels {SHARED_PANEL_METHODS} at a time, Full FT and LoRA drawn bold in "
             "each.")


@dataclass(frozen=True)
class Figure:
    """``draw`` is called with the study's tables named in ``reads`` (``pretrained``: the
    pretrained model's scores) and ``options``; it returns the figure, or None where the tables
    hold nothing to draw."""

    title: str
    caption: str
    draw: str
    reads: tuple[str, ...]
    options: dict = field(default_factory=dict)
    # or "curves" (curves.enabled), "trajectories" (curves.epochs), "trace" (the entropy trace), "weights"
    # (weights.enabled), "weight_pairs" (that and two runs of a dataset), "intervention" (weights.intervention)
    needs: str = "always"


FIGURES = {
    'lr_panels': Figure(
        'Learning-rate panels',
        ('Per dataset (rows), against the matched learning rate: best selection accuracy, drift of the '
         'layer-mean CLS-attention entropy (% of the pretrained value) and zero-shot top-1. Lines are cell '
         "means, bands ± 1 SD over seeds, dots single seeds; the dashed line is the pretrained model's "
         'zero-shot accuracy; red crosses mark diverged runs, which no mean includes.' + _FAMILIES),
        draw="lr_panels", reads=("runs", "pretrained")),
    'layer_entropy_drift': Figure(
        'Per-layer entropy drift',
        ('Per-layer drift of the CLS-attention entropy (% of the pretrained value), mean over seeds, for every '
         'method × learning rate, blocks numbered from 1. One colour scale for all panels, centred at zero.'),
        draw="layer_heatmaps", reads=("layers",),
        options={"quantity": "entropy_drift_pct", "label": "entropy drift (% of pretrained)"}),
    'layer_erf_drift': Figure(
        'Per-layer ERF@0.95 drift',
        ('Per-layer drift of ERF@0.95 (the smallest fraction of patches holding 95% of the CLS attention), '
         'mean over seeds, as above.'),
        draw="layer_heatmaps", reads=("layers",),
        options={"quantity": "erf95_drift_pct", "label": "ERF@0.95 drift (% of pretrained)"}),
    'drift_vs_zeroshot': Figure(
        'Attention drift vs zero-shot accuracy',
        ('Every non-diverged run: layer-mean entropy drift against zero-shot top-1. Colour: method; marker: '
         'learning rate. Titles give Pearson r with its 95% interval, Spearman ρ and n over every run of the '
         'dataset, whatever its method.' + _FAMILIES),
        draw="drift_vs_zeroshot", reads=("runs", "pretrained")),
    'cka_profiles': Figure(
        'CKA to the pretrained model per layer',
        ('Linear CKA between the pretrained and fine-tuned CLS hidden states after each block (0: the embedding '
         'output; 1 = unchanged representation), one panel per dataset and method, mean ± SD over seeds; darker '
         'lines are higher learning rates.'),
        draw="cka_profiles", reads=("layers",)),
    'indomain_vs_zeroshot': Figure(
        'In-domain vs zero-shot accuracy',
        ('In-domain accuracy against zero-shot accuracy of the same final weights, cell means ± SD over seeds; '
         "each method's learning rates are joined in order (labelled where few methods share a panel). The "
         'pretrained model is the origin point (star) where its in-domain zero-shot accuracy is known, else the '
         'dashed line.' + _FAMILIES),
        draw="indomain_vs_zeroshot", reads=("cells", "pretrained")),
    'suite_retention': Figure(
        'Held-out suite: retention per task',
        ('Held-out suite: per dataset (rows) and held-out task (columns; with several tasks the suite mean '
         "last), each method's zero-shot top-1 after fine-tuning divided by the pretrained model's on the same "
         'task (retention; the dashed line is 100%: nothing lost), against the learning rate, mean ± SD over '
         'seeds.' + _FAMILIES),
        draw="suite_retention", reads=("zeroshot",)),
    'frontier': Figure(
        'Robustness frontier: weight interpolation',
        ("The robustness frontier: per dataset, each (method, learning rate)'s weight interpolation from the "
         "pretrained tower (alpha 0) to the run's final weights (alpha 1, filled marker): in-domain test "
         'accuracy against held-out zero-shot top-1, mean over seeds; darker lines are higher learning rates; '
         'the star is the pretrained model (its in-domain zero-shot accuracy). A curve above another at the '
         'same in-domain accuracy keeps more transfer for what it learns. The interpolation is in merged-weight '
         'space for every method, W0 + alpha (W_merged - W0): for LoRA the same as scaling its adapters, for '
         'the other adapter methods not their own scaling.' + _FAMILIES),
        draw="frontier", reads=("curves", "pretrained", "curve_tasks"), needs='curves'),
    'trajectories': Figure(
        'Per-epoch trajectories',
        ('Per kept epoch, mean over seeds: held-out zero-shot top-1 (dashed: the pretrained model; dotted: '
         'half of it) and the drift of the layer-mean CLS-attention entropy, per method × learning rate '
         '(darker = higher).' + _FAMILIES),
        draw="trajectories", reads=("curves", "pretrained"), needs='trajectories'),
    'collapse_traces': Figure(
        'Collapse onset: attention entropy through training',
        ("Collapse onset: each method's or variant's layer-mean CLS-attention entropy drift through training "
         '(mean over seeds), per dataset and learning rate; the dotted line is the collapse threshold (-1%): a '
         "run's onset is the first traced step at or below it; every panel on one scale." + _FAMILIES),
        draw="collapse_traces", reads=("traces",), needs='trace'),
    'weight_change': Figure(
        'Weight-space drift against the learning rate',
        ("Per dataset (rows), against the matched learning rate: the image tower's weight change "
         "(‖ΔW‖/‖W0‖, mean over its matrices), the rank holding 90% of the change's energy and its effective "
         'rank (medians over the matrices the method changed; LoRA\'s cannot exceed its rank r), and the '
         'intruder dimensions summed over the matrices, the dotted line what random directions of the same '
         'dimensions count. Lines are cell means, bands ± 1 SD over seeds, dots single seeds.' + _FAMILIES),
        draw="lr_panels", reads=("runs", "pretrained"),
        options={"metrics": ("weight_drift_pct", "weight_rank90", "weight_effective_rank", "weight_intruders")},
        needs="weights"),
    'weight_intruders': Figure(
        'Intruder dimensions by layer',
        ('Intruder dimensions (top singular directions of a fine-tuned matrix with no pretrained direction '
         'within the cosine threshold) per block, summed over its attention and MLP matrices, and in the visual '
         'projection, mean over seeds, for every method × learning rate.'),
        draw="weight_intruders", reads=("weight_layers",), needs="weights"),
    'weight_plane': Figure(
        'Magnitude and direction of the change',
        ("The path of each method × learning rate through the plane of direction change ΔD (mean 1 − cos between a "
         "fine-tuned and a pretrained output unit's weights) and magnitude change ΔM (mean change of a unit's "
         'norm), means over the tower\'s matrices and seeds, through the kept epochs (or at the drift '
         'checkpoint), darker for higher rates. DoRA\'s decomposition: Full FT and LoRA are reported to move '
         'the two in opposite proportions.' + _FAMILIES),
        draw="weight_plane", reads=("weights",), needs="weights"),
    'overlap_matrix': Figure(
        "How alike the runs' changes are",
        ("Subspace overlap of the changes of two cells (‖U_Aᵀ U_B‖²/r of their top-r left singular directions, mean over "
         "the tower's matrices and the pairs of runs of different seeds): 1 = the same directions. The diagonal "
         'is the overlap between the seeds of one cell, the noise floor any difference between methods must '
         'clear; the title gives what random subspaces of that rank overlap.'),
        draw="weight_overlap", reads=("weight_overlap",), needs="weight_pairs"),
    'intervention_curves': Figure(
        'Removing the intruders',
        ("Per dataset (rows) and method (columns): zero-shot top-1 (suite mean, mean over seeds) of the run's "
         'weights with a share λ of its intruder dimensions kept (solid; λ = 1 is the run itself, 0 removes them '
         "all), against its control, each matrix's change shrunk uniformly to the same distance from the "
         'pretrained weights (dashed); darker for higher learning rates; dotted, the pretrained model. A solid '
         'line above its dashed one: the intruders held more of the forgetting than as much change elsewhere.'),
        draw="intervention_curves", reads=("intervention", "pretrained"), needs="intervention"),
}


def study_figures(curves: bool, trajectories: bool, traced: bool, weights: bool = False,
                  intervention: bool = False, runs_per_dataset: int = 2) -> list[str]:
    """The figures a study's report holds, in reading order (comparing runs' weight changes takes
    two runs of a dataset)."""
    measured = {"always": True, "curves": curves, "trajectories": trajectories, "trace": traced, "weights": weights,
                "weight_pairs": weights and runs_per_dataset > 1, "intervention": intervention}
    return [name for name, figure in FIGURES.items() if measured[figure.needs]]
