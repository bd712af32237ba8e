"""Figures of the held-out suite: each task's retention against the learning rate, and the
suite mean beside it."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from clipdrift.analysis.tables import CELL_KEYS, lr_order, method_label, method_order
from clipdrift.report.plotting import canvas, legend, method_color

SUITE_MEAN = "suite mean"


def _with_suite_mean(zeroshot: pd.DataFrame) -> pd.DataFrame:
    """Per-run retention per task plus a ``suite mean`` task (only with several tasks)."""
    tasks = list(dict.fromkeys(zeroshot["task"]))
    if len(tasks) < 2:
        return zeroshot
    means = zeroshot.groupby([*CELL_KEYS, "seed"], as_index=False, sort=False)["retention"].mean()
    return pd.concat([zeroshot, means.assign(task=SUITE_MEAN)], ignore_index=True)


def suite_retention(zeroshot: pd.DataFrame | None) -> Figure | None:
    """Per dataset (rows) and held-out task (columns, then the suite mean): retention (% of the
    pretrained model's zero-shot top-1) against the learning rate, per method, mean ± SD over seeds."""
    if zeroshot is None or zeroshot.empty:
        return None
    frame = _with_suite_mean(zeroshot.dropna(subset=["retention"]))
    if frame.empty:
        return _undefined()
    datasets, tasks = sorted(frame["dataset"].unique()), list(dict.fromkeys(frame["task"]))
    methods = method_order(frame["method"])
    figure, axes = canvas(len(datasets), len(tasks), 3.6, 3.0)
    for row, dataset in enumerate(datasets):
        for column, task in enumerate(tasks):
            ax, part = axes[row, column], frame[(frame["dataset"] == dataset) & (frame["task"] == task)]
            for method in methods:
                cells = part[part["method"] == method].groupby("lr")["retention"].agg(["mean", "std"])
                lrs = lr_order(cells.index)
                if not lrs:
                    continue
                x, mean = [float(lr) for lr in lrs], 100 * cells.loc[lrs, "mean"].to_numpy()
                sd = 100 * np.nan_to_num(cells.loc[lrs, "std"].to_numpy())
                colour = method_color(method, methods)
                ax.plot(x, mean, marker="o", color=colour, label=method_label(method))
                ax.fill_between(x, mean - sd, mean + sd, color=colour, alpha=0.15, linewidth=0)
            ax.axhline(100, color="0.35", linestyle="--", linewidth=1)
            ax.set_xscale("log")
            ax.set_title(f"{dataset} → {task}", fontsize=9)
            ax.set_xlabel("learning rate")
            ax.set_ylabel("retention (% of pretrained)")
    legend(figure, axes)
    return figure


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

