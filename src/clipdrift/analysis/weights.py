"""The weight-space drift of a study: per run (summaries over its tower's matrices at the drift
checkpoint, which the run table carries), per cell × layer × matrix, the intruder sweep per cell,
and how alike runs' changes are (subspace overlap between methods and between seeds).

The per-run measures are :mod:`clipdrift.measure.weights`'; a matrix a method left unchanged (a
LoRA run's unadapted matrices) has no rank and is left out of the rank summaries.
"""

from __future__ import annotations

import pandas as pd

from clipdrift.analysis.names import DM_SLOPE, WEIGHT_SUMMARIES
from clipdrift.analysis.tables import (
    CELL_KEYS,
    RUN_KEYS,
    drop_diverged,
    method_order,
    normalise_keys,
    over_seeds,
    sort_grid,
)

CHECKPOINT_STATE = "final"  # the per-run tables' state of the drift checkpoint (the rest: kept epochs)
WEIGHT_MEASURES = ("relative_drift", "effective_rank", "stable_rank", "rank90", "intruders", "intruder_energy",
                   "random_intruders", "delta_magnitude", "delta_direction")
RANK_MEASURES = ("effective_rank", "stable_rank", "rank90")
OVERLAP_KINDS = ("seeds", "methods", "rates", "other")
SLOPE_MATRIX = "q_proj"  # DoRA's ΔM–ΔD figure: the query matrices of every layer through training


def at_checkpoint(weights: pd.DataFrame | None) -> pd.DataFrame:
    """The rows of the drift checkpoint (not the kept epochs)."""
    if weights is None or weights.empty:
        return pd.DataFrame(columns=[*RUN_KEYS, "layer", "matrix", *WEIGHT_MEASURES])
    frame = normalise_keys(weights)
    return frame[frame["state"] == CHECKPOINT_STATE].drop(columns=["state", "epoch"])


def weight_run_summary(weights: pd.DataFrame | None) -> pd.DataFrame:
    """Per run: :data:`WEIGHT_SUMMARIES` over its matrices at the drift checkpoint, and
    :func:`magnitude_direction_slopes`."""
    rows = at_checkpoint(weights)
    if rows.empty:
        return pd.DataFrame(columns=[*RUN_KEYS, *WEIGHT_SUMMARIES, DM_SLOPE])
    changed = rows.assign(**{m: rows[m].where(rows["relative_drift"] > 0) for m in RANK_MEASURES})
    grouped = changed.groupby(RUN_KEYS, sort=False)
    summary = pd.DataFrame({name: grouped[measure].agg(how) for name, (measure, how) in WEIGHT_SUMMARIES.items()})
    summary["weight_drift_pct"] *= 100.0
    slopes = magnitude_direction_slopes(weights)
    return summary.reset_index().merge(slopes, on=RUN_KEYS, how="left")


def magnitude_direction_slopes(weights: pd.DataFrame) -> pd.DataFrame:
    """Per run: the least-squares slope of ΔM against ΔD over every layer's ``SLOPE_MATRIX`` at
    every weight state (the kept epochs and the drift checkpoint), as DoRA (Liu et al. 2024) plots
    the query matrices through training; NaN where ΔD does not vary (fewer than two such points)."""
    frame = normalise_keys(weights)
    points = frame[(frame["matrix"] == SLOPE_MATRIX) & frame["delta_direction"].notna()]
    rows = []
    for key, group in points.groupby(RUN_KEYS, sort=False):
        spread = group["delta_direction"].var()
        slope = (group["delta_direction"].cov(group["delta_magnitude"]) / spread
                 if len(group) > 1 and spread > 0 else float("nan"))
        rows.append(dict(zip(RUN_KEYS, key)) | {DM_SLOPE: slope})
    return pd.DataFrame(rows, columns=[*RUN_KEYS, DM_SLOPE])


def weight_layer_table(weights: pd.DataFrame | None, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per cell, layer and matrix at the drift checkpoint: each measure's mean and SD over the
    non-diverged seeds, and n."""
    return over_seeds(drop_diverged(at_checkpoint(weights), runs), ["layer", "matrix"], WEIGHT_MEASURES)


def intruder_sweep_table(sweep: pd.DataFrame | None, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per cell, ``top_k`` and ``epsilon``: the intruders over the tower's matrices (and the random
    baseline's), summed per run, then mean and SD over seeds."""
    columns = [*CELL_KEYS, "top_k", "epsilon", "n", "intruders_mean", "intruders_sd", "random_intruders_mean",
               "intruder_energy_mean"]
    if sweep is None or sweep.empty:
        return pd.DataFrame(columns=columns)
    rows = drop_diverged(normalise_keys(sweep), runs)
    per_run = rows.groupby([*RUN_KEYS, "top_k", "epsilon"], sort=False).agg(
        intruders=("intruders", "sum"), random_intruders=("random_intruders", "sum"),
        intruder_energy=("intruder_energy", "mean")).reset_index()
    grouped = per_run.groupby([*CELL_KEYS, "top_k", "epsilon"], sort=False)
    table = grouped.agg(n=("seed", "size"), intruders_mean=("intruders", "mean"), intruders_sd=("intruders", "std"),
                        random_intruders_mean=("random_intruders", "mean"),
                        intruder_energy_mean=("intruder_energy", "mean"))
    return sort_grid(table.reset_index()[columns], extra=["top_k", "epsilon"])


def overlap_kind(pair: pd.DataFrame) -> pd.Series:
    """``seeds`` (one method at one rate), ``methods`` (two at one rate), ``rates`` (one method at
    two rates) or ``other``."""
    same_method, same_lr = pair["method_a"] == pair["method_b"], pair["lr_a"] == pair["lr_b"]
    kind = pd.Series("other", index=pair.index)
    kind[same_method & same_lr] = "seeds"
    kind[~same_method & same_lr] = "methods"
    kind[same_method & ~same_lr] = "rates"
    return kind


def weight_overlap_table(overlap: pd.DataFrame | None, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per dataset, pair of cells (method and rate each) and ``seeds`` (the pairs of runs of
    ``different`` seeds, or of the ``same`` seed): the subspace overlap of their runs' changes,
    averaged over the tower's matrices per pair of runs, then mean, SD and n over the pairs;
    ``chance``: what random subspaces would overlap; ``kind``: :func:`overlap_kind`. Each pair of
    cells appears once, in the study's order (a ≤ b)."""
    columns = ["dataset", "kind", "seeds", "method_a", "lr_a", "method_b", "lr_b", "n_pairs", "overlap_mean",
               "overlap_sd", "chance"]
    if overlap is None or overlap.empty:
        return pd.DataFrame(columns=columns)
    frame = _without_diverged_pairs(overlap, runs)
    frame = frame.astype({"lr_a": str, "lr_b": str, "method_a": str, "method_b": str})
    frame = _ordered_pairs(frame)
    pair_keys = ["dataset", "method_a", "lr_a", "seed_a", "method_b", "lr_b", "seed_b"]
    per_pair = frame.groupby(pair_keys, sort=False).agg(overlap=("overlap", "mean"), chance=("chance", "mean"))
    per_pair = per_pair.reset_index()
    # two runs of one seed share their data order and head, which makes their changes more alike
    # whatever their method, and a cell's seed floor has no such pair: they are summarised apart
    per_pair["seeds"] = (per_pair["seed_a"] == per_pair["seed_b"]).map({True: "same", False: "different"})
    grouped = per_pair.groupby(["dataset", "seeds", "method_a", "lr_a", "method_b", "lr_b"], sort=False)
    table = grouped.agg(n_pairs=("overlap", "size"), overlap_mean=("overlap", "mean"), overlap_sd=("overlap", "std"),
                        chance=("chance", "mean")).reset_index()
    table["kind"] = overlap_kind(table)
    methods = _method_rank(table)
    order = table.assign(_ma=table["method_a"].map(methods), _la=table["lr_a"].map(float),
                         _mb=table["method_b"].map(methods), _lb=table["lr_b"].map(float))
    order = order.sort_values(["dataset", "seeds", "_ma", "_la", "_mb", "_lb"], kind="stable")
    return order[columns].reset_index(drop=True)


def _without_diverged_pairs(overlap: pd.DataFrame, runs: pd.DataFrame | None) -> pd.DataFrame:
    if runs is None:
        return overlap
    bad = {tuple(r) for r in normalise_keys(runs.loc[runs["diverged"], RUN_KEYS]).itertuples(index=False)}
    side = lambda s: list(zip(overlap["dataset"], overlap[f"method_{s}"].astype(str), overlap[f"lr_{s}"].astype(str),  # noqa: E731
                              overlap[f"seed_{s}"].astype(int)))
    keep = [a not in bad and b not in bad for a, b in zip(side("a"), side("b"))]
    return overlap[keep]


def _method_rank(frame: pd.DataFrame) -> dict[str, int]:
    return {m: i for i, m in enumerate(method_order(pd.concat([frame["method_a"], frame["method_b"]])))}


def _ordered_pairs(frame: pd.DataFrame) -> pd.DataFrame:
    """Each pair with its earlier cell (study order: method, then rate) as a."""
    methods = _method_rank(frame)
    key_a = list(zip(frame["method_a"].map(methods), frame["lr_a"].map(float), frame["seed_a"]))
    key_b = list(zip(frame["method_b"].map(methods), frame["lr_b"].map(float), frame["seed_b"]))
    swap = pd.Series([b < a for a, b in zip(key_a, key_b)], index=frame.index)
    swapped = frame.copy()
    for key in ("method", "lr", "seed"):
        a, b = f"{key}_a", f"{key}_b"
        swapped.loc[swap, a], swapped.loc[swap, b] = frame.loc[swap, b], frame.loc[swap, a]
    return swapped


def weight_table(weights: pd.DataFrame | None) -> pd.DataFrame:
    """Every run's rows (drift checkpoint and kept epochs × layer × matrix), in the study's order."""
    if weights is None or weights.empty:
        return pd.DataFrame(columns=[*RUN_KEYS, "state", "epoch", "layer", "matrix", *WEIGHT_MEASURES])
    return sort_grid(normalise_keys(weights), extra=["seed", "state", "epoch", "layer", "matrix"])


def comparable_overlap(overlap: pd.DataFrame) -> pd.DataFrame:
    """The overlap rows that compare like with like: pairs of different seeds where the study has
    several seeds (the seed floor is of such pairs), else (one seed) the pairs of that seed."""
    different = overlap[overlap["seeds"] == "different"]
    return different if not different.empty else overlap[overlap["seeds"] == "same"]
