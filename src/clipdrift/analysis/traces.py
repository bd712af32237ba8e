"""The traced CLS-attention entropy of every run as one table (``tables/traces``), and each
cell's mean collapse onset read from it, for the collapse-onset figure."""

from __future__ import annotations

import pandas as pd

from clipdrift.analysis.collapse import COLLAPSE_DROP, trace_points
from clipdrift.analysis.tables import drop_diverged, normalise_keys, sort_grid

TRACE_COLUMNS = ["dataset", "method", "lr", "seed", "step", "fraction", "entropy", "drift_pct"]


def entropy_traces(histories: list[dict], runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every traced point of every run (diverged runs left out): the step, the fraction of the
    run's steps, the layer-mean CLS-attention entropy and its drift (% of the pretrained value)."""
    rows = []
    for history in histories:
        traced = history.get("entropy_trace")
        if not traced:
            continue
        pretrained, total = float(traced["pretrained"]), int(traced["total_steps"])
        keys = {"dataset": history["dataset"], "method": history["method"], "lr": history["lr"], "seed": history["seed"]}
        rows += [{**keys, "step": step, "fraction": step / total, "entropy": value,
                  "drift_pct": 100.0 * (value - pretrained) / pretrained} for step, value in trace_points(history)]
    if not rows:
        return pd.DataFrame(columns=TRACE_COLUMNS)
    frame = drop_diverged(normalise_keys(pd.DataFrame(rows, columns=TRACE_COLUMNS)), runs)
    return sort_grid(frame, extra=["seed", "step"])


def trace_onsets(traces: pd.DataFrame, drop: float = COLLAPSE_DROP) -> pd.DataFrame:
    """Per dataset, method and rate: the mean fraction of training at which a seed's traced entropy
    first fell ``drop`` below pretrained (clipdrift's ``collapse_onset``), over the seeds that fell
    that far (``n_collapsed`` of ``n_seeds``)."""
    columns = ["dataset", "method", "lr", "onset", "n_collapsed", "n_seeds"]
    if traces.empty:
        return pd.DataFrame(columns=columns)
    below = traces[traces["drift_pct"] <= -100.0 * drop]
    first = below.groupby(["dataset", "method", "lr", "seed"])["fraction"].min()
    seeds = traces.groupby(["dataset", "method", "lr"])["seed"].nunique().rename("n_seeds")
    onsets = first.groupby(["dataset", "method", "lr"]).agg(onset="mean", n_collapsed="size")
    frame = seeds.to_frame().join(onsets).reset_index()
    frame["n_collapsed"] = frame["n_collapsed"].fillna(0).astype(int)
    return frame[columns]
