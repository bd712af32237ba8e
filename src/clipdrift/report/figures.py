"""The report's figures, as matplotlib ``Figure`` objects (no pyplot state, no file I/O).

Figures are built with ``matplotlib.figure.Figure`` directly, so they render with the Agg
canvas whatever backend the caller has, and many reports in one process leak nothing.
Accuracies are drawn in percent. Bands and error bars are ± one SD over seeds; seeds are drawn
as points where the figure has room, so n is visible, and diverged runs as red crosses.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import blended_transform_factory

from clipdrift.analysis.names import metric_label
from clipdrift.analysis.stats import correlation
from clipdrift.analysis.tables import lr_order, method_label, method_order
from clipdrift.analysis.wording import pretrained_top1
from clipdrift.model.methods import METHODS
from clipdrift.report.names import FIGURES, SHARED_PANEL_METHODS
from clipdrift.report.plotting import (
    MethodStyle,
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

# suite_retention and collapse_traces are drawn by their names in FIGURES
from clipdrift.report.suite_figures import SUITE_MEAN, frontier_panels, suite_retention  # noqa: F401
from clipdrift.report.trace_figures import collapse_traces  # noqa: F401
from clipdrift.report.weight_figures import (  # noqa: F401
    intervention_curves,
    weight_intruders,
    weight_overlap,
    weight_plane,
)

LR_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
PANEL_LABELS = {
    "best_select_acc": "best selection accuracy (%)",
    "final_test_acc": "final test accuracy (%)",
    "zs_top1": "zero-shot top-1 (%)",
    "drift_entropy_pct": "entropy drift (% of pretrained)",
    "drift_erf95_pct": "ERF@0.95 drift (% of pretrained)",
    "cka_mean": "mean CKA to pretrained",
}
ACCURACIES = ("best_select_acc", "final_select_acc", "final_test_acc", "zs_top1", "zs_top5", "zs_balanced")



def _scale(metric: str) -> float:
    return 100.0 if metric in ACCURACIES else 1.0



def _lr_axis(ax, lrs: list[str]) -> None:
    ax.set_xscale("log")
    ax.set_xticks([float(lr) for lr in lrs], labels=lrs)
    ax.minorticks_off()
    ax.set_xlabel("learning rate")


def _offsets(methods: list[str]) -> dict[str, float]:
    """Small multiplicative x offsets per method, so bands and seeds of two methods at the same
    rate do not hide each other on the log axis."""
    spread = np.linspace(-0.04, 0.04, len(methods)) if len(methods) > 1 else [0.0]
    return {m: 10**s for m, s in zip(methods, spread)}


def _method_curve(ax, runs: pd.DataFrame, metric: str, style: MethodStyle, shift: float) -> None:
    ok = runs[~runs["diverged"]].dropna(subset=[metric])
    if ok.empty:
        return
    scale = _scale(metric)
    stats = ok.groupby("lr")[metric].agg(["mean", "std"]).reindex(lr_order(ok["lr"]))
    x = np.array([float(lr) for lr in stats.index]) * shift
    mean, sd = stats["mean"].to_numpy() * scale, stats["std"].fillna(0).to_numpy() * scale
    ax.plot(x, mean, **style.line(zorder=3))
    ax.fill_between(x, mean - sd, mean + sd, color=style.color, alpha=0.15, linewidth=0)
    ax.scatter(ok["lr_value"] * shift, ok[metric] * scale, s=10, color=style.color, alpha=0.5, zorder=2)


def _mark_diverged(ax, runs: pd.DataFrame) -> bool:
    bad = runs[runs["diverged"]]
    if bad.empty:
        return False
    at_bottom = blended_transform_factory(ax.transData, ax.transAxes)
    ax.scatter(
        bad["lr_value"],
        np.full(len(bad), 0.04),
        transform=at_bottom,
        marker="x",
        color="red",
        s=40,
        zorder=4,
        clip_on=False,
        label="diverged run (left out)",
    )
    return True


def lr_panels(
    runs: pd.DataFrame, pretrained=None, metrics: tuple[str, ...] = ("best_select_acc", "drift_entropy_pct", "zs_top1")
) -> Figure:
    """Rows: datasets (× method families, when there are many methods); columns: ``metrics``
    against the learning rate, one line per method with a ± SD band over seeds, the seeds as
    points, and the pretrained zero-shot accuracy as a dashed reference."""
    metrics = [m for m in metrics if m in runs and runs[m].notna().any()]
    if not metrics:
        return None  # the study did not measure them (e.g. the weight-space drift, turned off)
    datasets, methods = sorted(runs["dataset"].unique()), method_order(runs["method"])
    rows = [(dataset, title, members) for dataset in datasets for title, members in method_groups(methods)]
    figure, axes = canvas(len(rows), len(metrics), 4.2, 3.2)
    shifts, reference, styles = _offsets(methods), pretrained_top1(pretrained), method_styles(methods)
    for row, (dataset, title, members) in enumerate(rows):
        data = runs[runs["dataset"] == dataset]
        for col, metric in enumerate(metrics):
            ax = axes[row, col]
            for method in members:
                _method_curve(ax, data[data["method"] == method], metric, styles[method], shifts[method])
            if metric == "zs_top1" and not np.isnan(reference):
                ax.axhline(100 * reference, color="0.35", linestyle="--", label="pretrained")
            if metric.startswith("drift_"):
                ax.axhline(0, color="0.35", linewidth=0.8)
            elif metric in ACCURACIES:
                _mark_diverged(ax, data[data["method"].isin(members)])
            _lr_axis(ax, lr_order(data["lr"]))
            if metric == "weight_intruders" and "weight_random_intruders" in data:
                ax.axhline(data["weight_random_intruders"].mean(), color="0.35", linestyle=":", label="random directions")
            ax.set_ylabel(PANEL_LABELS.get(metric, metric_label(metric)))
            ax.set_title(panel_title(dataset, PANEL_LABELS.get(metric, metric_label(metric)).split(" (")[0], group=title),
                         fontsize=9)
    legend(figure, axes, methods=methods)
    return figure


def _layer_matrix(layers: pd.DataFrame, dataset: str, quantity: str) -> pd.DataFrame:
    data = layers[(layers["dataset"] == dataset) & (layers["quantity"] == quantity)]
    rows = cell_rows(data)
    matrix = data.pivot_table(index=["method", "lr"], columns="layer", values="mean").reindex(rows)
    matrix.index = [f"{method_label(m)} · {lr}" for m, lr in rows]
    matrix.columns = [int(layer) + 1 for layer in matrix.columns]  # blocks 1..n, as the CKA profiles number them
    return matrix


def layer_heatmaps(
    layers: pd.DataFrame, quantity: str = "entropy_drift_pct", label: str | None = None
) -> Figure | None:
    """One heatmap per dataset: rows method × learning rate, columns layers, colour the mean
    per-layer drift over seeds on one symmetric scale centred at zero."""
    data = layers[layers["quantity"] == quantity] if not layers.empty else layers
    if data.empty:
        return None
    datasets = sorted(data["dataset"].unique())
    matrices = [_layer_matrix(data, d, quantity) for d in datasets]
    limit = max(float(np.nanmax(np.abs(m.to_numpy()))) for m in matrices) or 1.0
    n_layers = max(m.shape[1] for m in matrices)
    figure, axes = canvas(1, len(datasets), 0.55 * n_layers + 2.8, 0.35 * max(len(m) for m in matrices) + 1.4)
    for ax, dataset, matrix in zip(axes[0], datasets, matrices):
        # symmetric limits on a diverging map put zero at the centre (seaborn's center= uses a deprecated API)
        sns.heatmap(
            matrix,
            ax=ax,
            cmap="vlag",
            vmin=-limit,
            vmax=limit,
            annot=n_layers <= 16,
            fmt=".1f",
            annot_kws={"fontsize": 7},
            linewidths=0.5,
            cbar_kws={"label": label or quantity.replace("_", " ")},
        )
        ax.set_title(dataset, fontsize=10)
        ax.set_xlabel("block")
        ax.set_ylabel("")
    return figure


def drift_vs_zeroshot(
    runs: pd.DataFrame, pretrained=None, x: str = "drift_entropy_pct", y: str = "zs_top1"
) -> Figure | None:
    """One panel per dataset (× method family, when there are many methods): every non-diverged
    run, colour by method, marker by rate, with Pearson r (95% interval), Spearman ρ and n over
    every method of the dataset in the title."""
    ok = runs[~runs["diverged"]].dropna(subset=[x, y]) if {x, y} <= set(runs) else runs.iloc[:0]
    if ok.empty:
        return None
    datasets, methods = sorted(ok["dataset"].unique()), method_order(ok["method"])
    lrs, styles = lr_order(ok["lr"]), method_styles(methods)
    markers = {lr: LR_MARKERS[i % len(LR_MARKERS)] for i, lr in enumerate(lrs)}
    panels = [(dataset, title, members) for dataset in datasets for title, members in method_groups(methods)]
    figure, axes = canvas(*wrapped(len(panels)), 4.4, 3.8)
    reference = pretrained_top1(pretrained)
    for ax, (dataset, title, members) in zip(axes.flat, panels):
        data = ok[ok["dataset"] == dataset]
        for (method, lr), group in data[data["method"].isin(members)].groupby(["method", "lr"]):
            ax.scatter(group[x] * _scale(x), group[y] * _scale(y), color=styles[method].color, marker=markers[lr],
                       s=40 if method in METHODS else 26, alpha=0.85, edgecolor="white", linewidth=0.4)
        if not np.isnan(reference) and y == "zs_top1":
            ax.axhline(100 * reference, color="0.35", linestyle="--")
        ax.axvline(0, color="0.35", linewidth=0.8)
        ax.set_title(panel_title(dataset, _correlation_text(correlation(data[x], data[y])), group=title), fontsize=9)
        ax.set_xlabel(PANEL_LABELS.get(x, x))
        ax.set_ylabel(PANEL_LABELS.get(y, y))
    hide_unused(axes, len(panels))
    handles = [Line2D([], [], color=styles[m].color, marker="o", linestyle="", label=styles[m].label) for m in methods]
    handles += [Line2D([], [], color="0.4", marker=markers[lr], linestyle="", label=f"lr {lr}") for lr in lrs]
    if not np.isnan(reference):
        handles.append(Line2D([], [], color="0.35", linestyle="--", label="pretrained zero-shot"))
    legend(figure, handles=handles)
    return figure


def _correlation_text(result: dict) -> str:
    if np.isnan(result["pearson_r"]):
        return f"correlation not computable (n = {result['n']})"
    interval = (
        ""
        if np.isnan(result["pearson_ci_low"])
        else f" [{result['pearson_ci_low']:.2f}, {result['pearson_ci_high']:.2f}]"
    )
    return f"r = {result['pearson_r']:.2f}{interval}, ρ = {result['spearman_rho']:.2f}, n = {result['n']}"


def cka_profiles(layers: pd.DataFrame, quantity: str = "cka_linear_cls") -> Figure | None:
    """One panel per dataset × method, wrapped into rows; one line per learning rate (darker =
    higher), mean CKA to the pretrained model after each block with a ± SD band over seeds."""
    data = layers[layers["quantity"] == quantity] if not layers.empty else layers
    if data.empty:
        return None
    datasets, methods, lrs = sorted(data["dataset"].unique()), method_order(data["method"]), lr_order(data["lr"])
    colors = dict(zip(lrs, sns.color_palette("crest", len(lrs))))
    panels = [(dataset, method) for dataset in datasets for method in methods]
    figure, axes = canvas(*wrapped(len(panels)), 3.6, 2.8)
    for ax, (dataset, method) in zip(axes.flat, panels):
        part = data[(data["dataset"] == dataset) & (data["method"] == method)]
        for lr in lr_order(part["lr"]):
            line = part[part["lr"] == lr].sort_values("layer")
            sd = line["sd"].fillna(0)
            ax.plot(line["layer"], line["mean"], marker="o", markersize=3, color=colors[lr], label=f"lr {lr}")
            ax.fill_between(line["layer"], line["mean"] - sd, line["mean"] + sd, color=colors[lr], alpha=0.15,
                            linewidth=0)
        ax.set_ylim(min(0.0, float(data["mean"].min()) - 0.05), 1.05)
        ax.set_title(panel_title(dataset, method_label(method)), fontsize=10)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("after block (0 = embeddings)")
        ax.set_ylabel("CKA to pretrained")
    hide_unused(axes, len(panels))
    legend(figure, axes, methods=methods)
    return figure


def indomain_vs_zeroshot(
    cells: pd.DataFrame, pretrained=None, x: str = "final_test_acc", y: str = "zs_top1"
) -> Figure | None:
    """The robustness-paper view: per dataset (× method family, when there are many methods),
    in-domain accuracy against zero-shot accuracy, cell means with ± SD bars, each method's
    rates joined in order, the pretrained model as the origin point (a star where its in-domain
    zero-shot accuracy is known, else a line)."""
    if f"{x}_mean" not in cells or cells[f"{x}_mean"].isna().all():
        x = "best_select_acc"
    if f"{x}_mean" not in cells or f"{y}_mean" not in cells or cells[f"{y}_mean"].isna().all():
        return None
    datasets, methods = sorted(cells["dataset"].unique()), method_order(cells["method"])
    panels = [(dataset, title, members) for dataset in datasets for title, members in method_groups(methods)]
    styles = method_styles(methods)
    figure, axes = canvas(*wrapped(len(panels)), 4.6, 4.0)
    reference = pretrained_top1(pretrained)
    indomain = (pretrained or {}).get("indomain", {}) if isinstance(pretrained, dict) else {}
    for ax, (dataset, title, members) in zip(axes.flat, panels):
        for method in members:
            part = cells[(cells["dataset"] == dataset) & (cells["method"] == method)].dropna(
                subset=[f"{x}_mean", f"{y}_mean"])
            if not part.empty:
                _cell_path(ax, part, x, y, styles[method], label_rates=len(members) <= SHARED_PANEL_METHODS)
        _pretrained_origin(ax, reference, indomain.get(dataset))
        ax.set_title(panel_title(dataset, group=title), fontsize=10)
        ax.set_xlabel(f"in-domain {PANEL_LABELS.get(x, x)}")
        ax.set_ylabel(PANEL_LABELS.get(y, y))
    hide_unused(axes, len(panels))
    legend(figure, axes, methods=methods)
    return figure


def _cell_path(ax, part: pd.DataFrame, x: str, y: str, style: MethodStyle, label_rates: bool) -> None:
    """One method's cells, its learning rates joined in order (each labelled, where few methods share the panel)."""
    ax.errorbar(100 * part[f"{x}_mean"], 100 * part[f"{y}_mean"], xerr=100 * part[f"{x}_sd"].fillna(0),
                yerr=100 * part[f"{y}_sd"].fillna(0), capsize=2, **style.line())
    if not label_rates:
        return
    for row in part.itertuples():
        ax.annotate(row.lr, (100 * getattr(row, f"{x}_mean"), 100 * getattr(row, f"{y}_mean")),
                    textcoords="offset points", xytext=(4, 4), fontsize=7, color=style.color)


def _pretrained_origin(ax, zeroshot: float, indomain: float | None) -> None:
    if np.isnan(zeroshot):
        return
    if indomain is not None:
        ax.scatter(
            [100 * indomain],
            [100 * zeroshot],
            marker="*",
            s=160,
            color="black",
            zorder=5,
            label="pretrained (zero-shot)",
        )
    else:
        ax.axhline(100 * zeroshot, color="0.35", linestyle="--", label="pretrained zero-shot")



def frontier(curves: pd.DataFrame, pretrained=None, curve_tasks: pd.DataFrame | None = None) -> Figure | None:
    """Per dataset (× method family, when there are many methods): in-domain accuracy (x) against
    held-out zero-shot (y) along each (method, learning rate)'s weight interpolation, mean over
    seeds; alpha = 1 (the run) filled, the pretrained model the origin (star, where its in-domain
    zero-shot accuracy is known). With a suite of several held-out tasks: the suite mean and then
    each task, in columns."""
    points = curves[curves["kind"] == "alpha"] if curves is not None and not curves.empty else None
    if points is None or points.empty:
        return None
    datasets, methods = sorted(points["dataset"].unique()), method_order(points["method"])
    tasks = frontier_panels(curve_tasks)
    indomain = (pretrained or {}).get("indomain", {}) if isinstance(pretrained, dict) else {}
    by_task = (pretrained or {}).get("tasks", {}) if isinstance(pretrained, dict) else {}
    columns = [("", points, pretrained_top1(pretrained))]
    if tasks:
        alpha_tasks = curve_tasks[curve_tasks["kind"] == "alpha"]
        columns = [(SUITE_MEAN, points, pretrained_top1(pretrained))]
        columns += [(f"→ {task}", alpha_tasks[alpha_tasks["task"] == task], by_task.get(task, np.nan)) for task in tasks]
    rows = [(dataset, title, members) for dataset in datasets for title, members in method_groups(methods)]
    figure, axes = canvas(len(rows), len(columns), 4.2, 3.8)
    styles = method_styles(methods)
    for row, (dataset, title, members) in enumerate(rows):
        for column, (task, frame, reference) in enumerate(columns):
            ax = axes[row, column]
            _frontier_panel(ax, frame[frame["dataset"] == dataset], members, styles)
            _pretrained_origin(ax, reference, indomain.get(dataset))
            ax.set_title(panel_title(dataset, task, group=title), fontsize=9)
            ax.set_xlabel("in-domain test accuracy (%)")
            ax.set_ylabel("held-out zero-shot top-1 (%)")
    legend(figure, axes, methods=methods)
    return figure


def _frontier_panel(ax, part: pd.DataFrame, methods: list[str], styles: dict[str, MethodStyle]) -> None:
    for method in methods:
        rows = part[part["method"] == method]
        for lr, line in lr_lines(styles[method], lr_order(rows["lr"])):
            mean = rows[rows["lr"] == lr].groupby("point")[["indomain_acc", "zs_top1"]].mean().sort_index()
            ax.plot(100 * mean["indomain_acc"], 100 * mean["zs_top1"], **line)
            if 1.0 in mean.index:
                end = mean.loc[1.0]
                ax.scatter([100 * end["indomain_acc"]], [100 * end["zs_top1"]], color=line["color"], s=46,
                           marker=styles[method].marker, edgecolor="black", linewidth=0.6, zorder=4)


def trajectories(curves: pd.DataFrame, pretrained=None) -> Figure | None:
    """Per dataset (× method family, when there are many methods): zero-shot top-1 and
    CLS-attention entropy drift (columns) against the epoch, one line per method × learning rate
    (mean over seeds; darker = higher rate); dashed: the pretrained zero-shot and half of it."""
    points = curves[curves["kind"] == "epoch"] if curves is not None and not curves.empty else None
    if points is None or points.empty:
        return None
    datasets, methods = sorted(points["dataset"].unique()), method_order(points["method"])
    panels = (("zs_top1", "zero-shot top-1 (%)", 100.0), ("drift_entropy_pct", "entropy drift (%)", 1.0))
    rows = [(dataset, title, members) for dataset in datasets for title, members in method_groups(methods)]
    figure, axes = canvas(len(rows), len(panels), 4.6, 3.2)
    reference, styles = pretrained_top1(pretrained), method_styles(methods)
    for row, (dataset, title, members) in enumerate(rows):
        part = points[points["dataset"] == dataset]
        for column, (metric, label, scale) in enumerate(panels):
            ax = axes[row, column]
            for method in members:
                rows_of = part[part["method"] == method]
                for lr, line in lr_lines(styles[method], lr_order(rows_of["lr"])):
                    mean = rows_of[rows_of["lr"] == lr].groupby("point")[metric].mean().sort_index()
                    ax.plot(mean.index, scale * mean, **line)
            if metric == "zs_top1" and not np.isnan(reference):
                ax.axhline(100 * reference, color="0.35", linestyle="--", linewidth=1)
                ax.axhline(50 * reference, color="0.6", linestyle=":", linewidth=1)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("epoch")
            ax.set_ylabel(label)
            ax.set_title(panel_title(dataset, group=title), fontsize=9)
    legend(figure, axes, methods=methods)
    return figure


def make_figures(tables: dict[str, pd.DataFrame], pretrained=None) -> dict[str, Figure]:
    """Every report figure that the tables can support, drawn as :data:`clipdrift.report.names.FIGURES`
    says and keyed by its name there (in order).

    ``tables`` needs ``runs`` and ``cells`` (as :func:`build_tables` returns or as read back from
    Parquet); ``pretrained`` is the pretrained model over the suite
    (:func:`clipdrift.analysis.suite.pretrained_suite`), optionally with ``"indomain": {dataset:
    accuracy}`` for the frontier's origin point."""
    given = {"layers": pd.DataFrame(columns=["dataset", "method", "lr", "quantity", "layer", "mean", "sd", "n"]),
             **{name: table for name, table in tables.items() if table is not None}, "pretrained": pretrained}
    built = {}
    for name, entry in FIGURES.items():
        figure = globals()[entry.draw](*(given.get(table) for table in entry.reads), **entry.options)
        if figure is not None:
            built[name] = figure
    return built
