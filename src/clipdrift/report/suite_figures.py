"""Figures of the held-out suite: each task's retention against the learning rate, and the
suite mean beside it."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from clipdrift.analysis.tables import CELL_KEYS, lr_order, method_order
from clipdrift.report.plotting import MethodStyle, canvas, legend, method_groups, method_styles, panel_title

SUITE_MEAN = "suite mean"


def _with_suite_mean(zeroshot: pd.DataFrame) -> pd.DataFrame:
    """Per-run retention per task plus a ``suite mean`` task (only with several tasks)."""
    tasks = list(dict.fromkeys(zeroshot["task"]))
    if len(tasks) < 2:
        return zeroshot
    means = zeroshot.groupby([*CELL_KEYS, "seed"], as_index=False, sort=False)["retention"].mean()
    return pd.concat([zeroshot, means.assign(task=SUITE_MEAN)], ignore_index=True)


def suite_retention(zeroshot: pd.DataFrame | None) -> Figure | None:
    """Per dataset (rows, × method family when there are many methods) and held-out task
    (columns, then the suite mean): retention (% of the pretrained model's zero-shot top-1)
    against the learning rate, per method, mean ± SD over seeds."""
    if zeroshot is None or zeroshot.empty:
        return None
    frame = _with_suite_mean(zeroshot.dropna(subset=["retention"]))
    if frame.empty:
        return _undefined()
    datasets, tasks = sorted(frame["dataset"].unique()), list(dict.fromkeys(frame["task"]))
    methods, lrs = method_order(frame["method"]), lr_order(frame["lr"])
    rows = [(dataset, title, members) for dataset in datasets for title, members in method_groups(methods)]
    figure, axes = canvas(len(rows), len(tasks), 3.6, 3.0)
    styles = method_styles(methods)
    for row, (dataset, title, members) in enumerate(rows):
        for column, task in enumerate(tasks):
            ax, part = axes[row, column], frame[(frame["dataset"] == dataset) & (frame["task"] == task)]
            for method in members:
                _retention_line(ax, part[part["method"] == method], styles[method])
            ax.axhline(100, color="0.35", linestyle="--", linewidth=1)
            ax.set_xscale("log")
            ax.set_xticks([float(lr) for lr in lrs], labels=lrs, fontsize=8)  # the study's rates, no others
            ax.minorticks_off()
            ax.set_title(panel_title(f"{dataset} → {task}", group=title), fontsize=9)
            ax.set_xlabel("learning rate")
            ax.set_ylabel("retention (% of pretrained)")
    legend(figure, axes, methods=methods)
    return figure


def _retention_line(ax, runs: pd.DataFrame, style: MethodStyle) -> None:
    cells = runs.groupby("lr")["retention"].agg(["mean", "std"])
    lrs = lr_order(cells.index)
    if not lrs:
        return
    x, mean = [float(lr) for lr in lrs], 100 * cells.loc[lrs, "mean"].to_numpy()
    sd = 100 * np.nan_to_num(cells.loc[lrs, "std"].to_numpy())
    ax.plot(x, mean, **style.line())
    ax.fill_between(x, mean - sd, mean + sd, color=style.color, alpha=0.12, linewidth=0)


def _undefined() -> Figure:
    figure, axes = canvas(1, 1, 6.0, 1.6)
    axes[0, 0].text(0.5, 0.5, "Retention is undefined: the pretrained model scores 0% zero-shot top-1 on every held-out "
                    "task\n(see the held-out suite table for the top-1 of each run).", ha="center", va="center")
    axes[0, 0].set_axis_off()
    return figure


def frontier_panels(curve_tasks: pd.DataFrame | None) -> list[str]:
    """The held-out tasks that get a frontier panel of their own (none with a single task)."""
    if curve_tasks is None or curve_tasks.empty:
        return []
    tasks = list(dict.fromkeys(curve_tasks["task"]))
    return tasks if len(tasks) > 1 else []

