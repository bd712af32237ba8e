"""The weight-space figures: where intruder dimensions appear (layer × method × learning rate),
the magnitude–direction plane each method moves in, and how alike runs' changes are."""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from clipdrift.analysis.tables import lr_order, method_label, method_order
from clipdrift.analysis.weights import CHECKPOINT_STATE, comparable_overlap
from clipdrift.analysis.wording import pretrained_top1
from clipdrift.report.plotting import (
    canvas,
    cell_rows,
    hide_unused,
    legend,
    lr_lines,
    method_groups,
    method_styles,
    panel_title,
    wrapped,
)

PROJECTION_COLUMN = "proj"  # the visual projection's column, after the blocks


def _by_layer(layers: pd.DataFrame, dataset: str, measure: str) -> pd.DataFrame:
    """Rows method × learning rate, columns blocks 1..n then the projection: ``measure``'s seed
    mean summed over each layer's matrices."""
    data = layers[layers["dataset"] == dataset]
    sums = data.groupby(["method", "lr", "layer"])[f"{measure}_mean"].sum(min_count=1).unstack("layer")
    sums = sums.reindex(cell_rows(data))
    blocks = sorted(c for c in sums.columns if c >= 0)
    sums = sums[blocks + [c for c in sums.columns if c < 0]]
    sums.columns = [int(b) + 1 for b in blocks] + [PROJECTION_COLUMN] * (len(sums.columns) - len(blocks))
    sums.index = [f"{method_label(m)} · {lr}" for m, lr in sums.index]
    return sums


def weight_intruders(weight_layers: pd.DataFrame | None, measure: str = "intruders") -> Figure | None:
    """One heatmap per dataset: rows method × learning rate, columns the blocks and the
    projection, colour the intruder dimensions per layer (summed over its matrices, mean over seeds)."""
    if weight_layers is None or weight_layers.empty:
        return None
    datasets = sorted(weight_layers["dataset"].unique())
    matrices = [_by_layer(weight_layers, d, measure) for d in datasets]
    top = max(float(np.nanmax(m.to_numpy())) for m in matrices) or 1.0
    columns = max(m.shape[1] for m in matrices)
    figure, axes = canvas(1, len(datasets), 0.55 * columns + 2.8, 0.35 * max(len(m) for m in matrices) + 1.4)
    for ax, dataset, matrix in zip(axes[0], datasets, matrices):
        sns.heatmap(matrix, ax=ax, cmap="rocket_r", vmin=0, vmax=top, annot=columns <= 16, fmt=".1f",
                    annot_kws={"fontsize": 7}, linewidths=0.5, cbar_kws={"label": "intruder dimensions"})
        ax.set_title(dataset, fontsize=10)
        ax.set_xlabel("block (proj: the visual projection)")
        ax.set_ylabel("")
    return figure


def _plane_points(weights: pd.DataFrame) -> pd.DataFrame:
    """Per cell and weight state (the kept epochs, else the drift checkpoint): ΔM and ΔD, the mean
    over the tower's matrices per run, then over seeds."""
    epochs = weights[weights["state"] != CHECKPOINT_STATE]
    chosen = epochs if not epochs.empty else weights[weights["state"] == CHECKPOINT_STATE]
    per_run = chosen.groupby(["dataset", "method", "lr", "seed", "epoch"])[["delta_magnitude", "delta_direction"]].mean()
    return per_run.groupby(["dataset", "method", "lr", "epoch"]).mean().reset_index()


def weight_plane(weights: pd.DataFrame | None) -> Figure | None:
    """Per dataset (× method family): every cell's path in the plane of magnitude change ΔM against
    direction change ΔD through its kept epochs (or its drift checkpoint alone), darker for higher rates."""
    if weights is None or weights.empty or weights["delta_magnitude"].notna().sum() == 0:
        return None
    points = _plane_points(weights)
    datasets, methods = sorted(points["dataset"].unique()), method_order(points["method"])
    styles = method_styles(methods)
    panels = [(dataset, title, members) for dataset in datasets for title, members in method_groups(methods)]
    figure, axes = canvas(1, len(panels), 4.6, 3.8)
    for ax, (dataset, title, members) in zip(axes[0], panels):
        for method in members:
            part = points[(points["dataset"] == dataset) & (points["method"] == method)]
            for lr, line in lr_lines(styles[method], lr_order(part["lr"])):
                path = part[part["lr"] == lr].sort_values("epoch")
                ax.plot(path["delta_direction"], path["delta_magnitude"], **line)
        ax.set_xscale("symlog", linthresh=1e-6)
        ax.set_xlabel("direction change ΔD (mean 1 − cos per unit)")
        ax.set_ylabel("magnitude change ΔM (mean |Δ‖W_n‖|)")
        ax.set_title(panel_title(dataset, "ΔM against ΔD", group=title), fontsize=9)
    legend(figure, axes, methods=methods)
    return figure


OVERLAP_PANEL_INCHES = 12.0  # the most a panel of the overlap matrix grows to


def weight_overlap(overlap: pd.DataFrame | None) -> Figure | None:
    """One matrix per dataset: every pair of cells' mean subspace overlap (their runs' changes,
    mean over the tower's matrices); the diagonal is the overlap between one cell's seeds, the
    noise floor a difference between methods must clear."""
    if overlap is None or overlap.empty:
        return None
    overlap = comparable_overlap(overlap)
    datasets = sorted(overlap["dataset"].unique())
    frames = [_overlap_matrix(overlap[overlap["dataset"] == d]) for d in datasets]
    size = max(len(f) for f in frames)
    cell = min(0.5, OVERLAP_PANEL_INCHES / size)  # a study of many cells gets smaller cells, not a wall-sized figure
    figure, axes = canvas(1, len(datasets), cell * size + 3.0, cell * size + 1.6)
    for ax, dataset, frame in zip(axes[0], datasets, frames):
        sns.heatmap(frame, ax=ax, cmap="mako_r", vmin=0, vmax=1, annot=size <= 16, fmt=".2f",
                    annot_kws={"fontsize": 7}, linewidths=0.5 if size <= 16 else 0, square=True,
                    xticklabels=True, yticklabels=True,
                    cbar_kws={"label": "subspace overlap (1 = the same directions)"})
        chance = overlap.loc[overlap["dataset"] == dataset, "chance"].mean()
        one_seed = "" if (overlap["seeds"] == "different").all() else " · one seed: no noise floor"
        ax.set_title(f"{dataset} · random subspaces: {chance:.2f}{one_seed}", fontsize=10)
        ax.set_xlabel("")
        ax.set_ylabel("")
    return figure


def _overlap_matrix(overlap: pd.DataFrame) -> pd.DataFrame:
    cells = cell_rows(pd.DataFrame({"method": pd.concat([overlap["method_a"], overlap["method_b"]]),
                                     "lr": pd.concat([overlap["lr_a"], overlap["lr_b"]])}))
    labels = [f"{method_label(m)} · {lr}" for m, lr in cells]
    matrix = pd.DataFrame(np.nan, index=labels, columns=labels)
    where = {cell: label for cell, label in zip(cells, labels)}
    for row in overlap.itertuples():
        a, b = where[(row.method_a, row.lr_a)], where[(row.method_b, row.lr_b)]
        matrix.loc[a, b] = matrix.loc[b, a] = row.overlap_mean
    return matrix


def intervention_curves(intervention: pd.DataFrame | None, pretrained=None) -> Figure | None:
    """One panel per dataset and method (at most four across): zero-shot top-1 (suite mean over
    seeds) against the share of intruder dimensions kept; solid, the intruders removed; dashed,
    the uniform control at the same distance; darker for higher rates; dotted, the pretrained model."""
    if intervention is None or intervention.empty:
        return None
    datasets, methods = sorted(intervention["dataset"].unique()), method_order(intervention["method"])
    styles, reference = method_styles(methods), pretrained_top1(pretrained)
    panels = [(dataset, method) for dataset in datasets for method in methods]
    figure, axes = canvas(*wrapped(len(panels)), 3.8, 3.2)
    for ax, (dataset, method) in zip(axes.flat, panels):
        part = intervention[(intervention["dataset"] == dataset) & (intervention["method"] == method)]
        for lr, line in lr_lines(styles[method], lr_order(part["lr"])):
            for kind, dash in (("intruders", "-"), ("uniform", "--")):
                curve = part[(part["lr"] == lr) & (part["kind"] == kind)].sort_values("keep")
                ax.plot(curve["keep"], 100 * curve["zs_top1_mean"],
                        **{**line, "linestyle": dash, "label": line["label"] if kind == "intruders" else None})
        if reference == reference:  # not NaN
            ax.axhline(100 * reference, color="0.35", linestyle=":", label="pretrained")
        ax.set_xlabel("share of intruder dimensions kept (λ)")
        ax.set_ylabel("zero-shot top-1 (%)")
        ax.set_title(panel_title(dataset, method_label(method)), fontsize=9)
    hide_unused(axes, len(panels))
    kinds = [Line2D([], [], color="0.3", linestyle="-", label="intruders removed"),
             Line2D([], [], color="0.3", linestyle="--", label="uniform control (same distance)")]
    found = {label: handle for ax in axes.flat for handle, label in zip(*ax.get_legend_handles_labels())}
    legend(figure, handles=[found[label] for label in (method_label(m) for m in methods) if label in found]
           + [h for label, h in found.items() if label == "pretrained"] + kinds)
    return figure
