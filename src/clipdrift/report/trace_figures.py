"""The collapse-onset figure: each run's traced CLS-attention entropy through training."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from clipdrift.analysis.collapse import COLLAPSE_DROP
from clipdrift.analysis.tables import lr_order, method_order
from clipdrift.analysis.traces import trace_onsets
from clipdrift.report.plotting import canvas, legend, method_groups, method_styles, panel_title


def collapse_traces(traces: pd.DataFrame | None) -> Figure | None:
    """Rows: datasets (× method family when there are many methods); columns: learning rates.
    The layer-mean CLS-attention entropy drift (% of pretrained) against the fraction of
    training, one line per method or variant (mean over seeds); the dotted line is the collapse
    threshold (−1%), and a marker on it each method's mean collapse onset over the seeds that
    reached it."""
    if traces is None or traces.empty:
        return None
    onsets = trace_onsets(traces).dropna(subset=["onset"])
    datasets, methods = sorted(traces["dataset"].unique()), method_order(traces["method"])
    lrs, styles = lr_order(traces["lr"]), method_styles(methods)
    rows = [(dataset, title, members) for dataset in datasets for title, members in method_groups(methods)]
    figure, axes = canvas(len(rows), len(lrs), 4.2, 3.2, sharey=True)  # one scale: panels compare
    for row, (dataset, title, members) in enumerate(rows):
        for column, lr in enumerate(lrs):
            ax = axes[row, column]
            part = traces[(traces["dataset"] == dataset) & (traces["lr"] == lr)]
            for method in members:
                mean = part[part["method"] == method].groupby("fraction")["drift_pct"].mean().sort_index()
                if not mean.empty:
                    ax.plot(100 * mean.index, mean, **styles[method].line(marker=None))
                onset = onsets[(onsets["dataset"] == dataset) & (onsets["lr"] == lr) & (onsets["method"] == method)]
                if not onset.empty:
                    ax.plot(100 * onset["onset"], [-100 * COLLAPSE_DROP] * len(onset), marker=styles[method].marker,
                            linestyle="none", color=styles[method].color, markersize=7, markeredgecolor="black",
                            markeredgewidth=0.5)
            ax.axhline(-100 * COLLAPSE_DROP, color="0.4", linestyle=":", linewidth=1)
            ax.axhline(0, color="0.75", linewidth=0.8)
            ax.set_title(panel_title(f"{dataset} · lr {lr}", group=title), fontsize=9)
            ax.set_xlabel("training (% of steps)")
            ax.set_ylabel("entropy drift (%)")
            ax.yaxis.set_tick_params(labelleft=True)
    legend(figure, axes, methods=methods)
    return figure
