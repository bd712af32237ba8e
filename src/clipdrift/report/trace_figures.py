"""The collapse-onset figure: each run's traced CLS-attention entropy through training."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from clipdrift.analysis.collapse import COLLAPSE_DROP
from clipdrift.analysis.tables import lr_order, method_label, method_order
from clipdrift.analysis.traces import trace_onsets
from clipdrift.report.plotting import canvas, legend, method_color


def collapse_traces(traces: pd.DataFrame | None) -> Figure | None:
    """Rows: datasets; columns: learning rates. The layer-mean CLS-attention entropy drift (% of
    pretrained) against the fraction of training, one line per method or variant (mean over
    seeds); the dotted line is the collapse threshold (−1%), and a marker on it each method's mean
    collapse onset over the seeds that reached it."""
    if traces is None or traces.empty:
        return None
    onsets = trace_onsets(traces).dropna(subset=["onset"])
    datasets, methods = sorted(traces["dataset"].unique()), method_order(traces["method"])
    lrs = lr_order(traces["lr"])
    figure, axes = canvas(len(datasets), len(lrs), 4.2, 3.2)
    for row, dataset in enumerate(datasets):
        for column, lr in enumerate(lrs):
            ax = axes[row, column]
            part = traces[(traces["dataset"] == dataset) & (traces["lr"] == lr)]
            for method in methods:
                mean = part[part["method"] == method].groupby("fraction")["drift_pct"].mean().sort_index()
                if not mean.empty:
                    ax.plot(100 * mean.index, mean, color=method_color(method, methods), linewidth=1.3,
                            label=method_label(method))
                onset = onsets[(onsets["dataset"] == dataset) & (onsets["lr"] == lr) & (onsets["method"] == method)]
                if not onset.empty:
                    ax.plot(100 * onset["onset"], [-100 * COLLAPSE_DROP] * len(onset), marker="v", linestyle="none",
                            color=method_color(method, methods), markersize=7)
            ax.axhline(-100 * COLLAPSE_DROP, color="0.4", linestyle=":", linewidth=1)
            ax.axhline(0, color="0.75", linewidth=0.8)
            ax.set_title(f"{dataset} · lr {lr}", fontsize=10)
            ax.set_xlabel("training (% of steps)")
            ax.set_ylabel("entropy drift (% of pretrained)")
    legend(figure, axes)
    return figure
