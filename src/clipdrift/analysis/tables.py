"""Tidy tables of the study: one row per run, per cell, per method and per layer.

A *run* is one (dataset, method, lr, seed); a *cell* is one (dataset, method, lr) over its
seeds. Learning rates stay the canonical strings of the config (``"1e-05"``) and are ordered by
their numeric value. Accuracies are fractions in [0, 1] as in every artifact; drifts are
percentages of the pretrained value.

Diverged runs stay in the run table, flagged, and are left out of every mean; the cell table
counts them (``n_diverged``) so that a thin cell is visible instead of silently smaller.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import pandas as pd

from clipdrift.analysis.collapse import collapse_columns
from clipdrift.analysis.names import DM_SLOPE, WEIGHT_SUMMARIES, interval_metrics
from clipdrift.analysis.stats import bootstrap_ci
from clipdrift.model.methods import METHODS, lineup

RUN_KEYS = ["dataset", "method", "lr", "seed"]
CELL_KEYS = ["dataset", "method", "lr"]

# Per-layer attention statistics (layer >= 0) and whole-network ones (rollout, layer -1).
LAYER_METRICS = ("entropy", "erf95", "gini", "head_diversity", "p2p_entropy")
NETWORK_METRICS = ("rollout_entropy", "rollout_erf95", "rollout_gini")
ATTENTION_METRICS = LAYER_METRICS + NETWORK_METRICS

# The run-level number CKA is summarised by: linear CKA of the CLS token over the blocks
# (layer 0 is the embedding output, whose CLS is the same for every image: CKA undefined).
CKA_SUMMARY = {"variant": "linear", "token": "cls", "min_layer": 1}

ACCURACY_METRICS = (
    "best_select_acc",
    "final_select_acc",
    "final_test_acc",
    "zs_top1",
    "zs_top5",
    "zs_balanced",
    "zs_retention",
)
DRIFT_METRICS = tuple(f"drift_{m}_pct" for m in ATTENTION_METRICS)
# How far the layers moved whatever the sign: the root mean square over blocks of the per-layer entropy
# drift (%), which a layer-mean drift can hide (+33 / -27 / +36 averages to +14)
LAYER_DRIFT_METRIC = "drift_entropy_layers_pct"
COST_METRICS = ("trainable_params", "train_time_s", "images_per_s")
# The collapse onsets at 1% (clipdrift's fraction of steps, the published fraction of the trace): a cell's
# mean over the seeds whose entropy fell that far, n counting them (a seed that never did is not a number)
ONSET_METRICS = ("collapse_onset", "collapse_onset_1_published")
# The weight-space summaries: columns only where a study measures them
WEIGHT_METRICS = (*WEIGHT_SUMMARIES, DM_SLOPE)
CELL_METRICS = (ACCURACY_METRICS + DRIFT_METRICS + (LAYER_DRIFT_METRIC, "cka_mean") + WEIGHT_METRICS + COST_METRICS
                + ONSET_METRICS)


def method_label(method: str) -> str:
    return METHODS[method].label if method in METHODS else method


def lr_order(lrs: Iterable[str]) -> list[str]:
    """Distinct canonical learning-rate strings, smallest first."""
    return sorted(set(lrs), key=float)


def method_order(methods: Iterable[str]) -> list[str]:
    """Distinct method names in the study's one order (:func:`clipdrift.model.methods.lineup`)."""
    return lineup(methods)


def sort_grid(frame: pd.DataFrame, extra: Iterable[str] = ()) -> pd.DataFrame:
    """Sort by dataset, method (Full FT first), numeric learning rate, then ``extra`` columns."""
    rank = {m: i for i, m in enumerate(method_order(frame["method"]))} if "method" in frame else {}
    keys = frame.assign(
        _method=frame["method"].map(rank) if "method" in frame else 0,
        _lr=frame["lr"].map(float) if "lr" in frame else 0.0,
    )
    by = [c for c in ("dataset", "_method", "_lr") if c in keys] + list(extra)
    return keys.sort_values(by, kind="stable").drop(columns=["_method", "_lr"]).reset_index(drop=True)


def normalise_keys(frame: pd.DataFrame) -> pd.DataFrame:
    """Key columns in one dtype everywhere, so artifacts from different writers join."""
    frame = frame.copy()
    for key in ("dataset", "method", "lr"):
        if key in frame:
            frame[key] = frame[key].astype(str)
    if "seed" in frame:
        frame["seed"] = frame["seed"].astype(int)
    return frame


def _number(value) -> float:
    return math.nan if value is None else float(value)


def _checked_lr(lr) -> str:
    lr = str(lr)
    try:
        float(lr)
    except ValueError:
        raise ValueError(
            f"learning rate {lr!r} is not a number: use the config's canonical string (e.g. '1e-05')"
        ) from None
    return lr


# ------------------------------------------------------------------------------------ runs


def _history_row(history: dict) -> dict:
    params = history.get("trainable_params") or {}
    status = history.get("status", "completed")
    return {
        "dataset": str(history["dataset"]),
        "method": str(history["method"]),
        "lr": _checked_lr(history["lr"]),
        "seed": int(history["seed"]),
        "status": status,
        "diverged": status == "diverged",
        "diverged_at_step": _number(history.get("diverged_at_step")),
        "selection_split": history.get("selection_split"),
        "epochs_run": len(history.get("epochs") or []),
        "best_epoch": _number(history.get("best_epoch")),
        "best_select_acc": _number(history.get("best_select_acc")),
        "final_select_acc": _number(history.get("final_select_acc")),
        "final_test_acc": _number(history.get("final_test_acc")),
        "trainable_params": _number(params.get("total")),
        "train_time_s": _number(history.get("train_time_s")),
        "images_per_s": _number(history.get("images_per_s")),
        "steps": _number(history.get("steps")),
        **collapse_columns(history),
    }


def drift_pct(final, baseline):
    """100 × (final − baseline) / baseline; NaN where the baseline is zero."""
    final, baseline = np.asarray(final, dtype=float), np.asarray(baseline, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(baseline != 0, 100.0 * (final - baseline) / baseline, np.nan)


def per_layer_attention(attention: pd.DataFrame) -> pd.DataFrame:
    """One value per run × metric × state × layer: the head-mean row (head −1) where a metric has
    one (the metrics module computes it on the head-mean map), else the mean over heads."""
    frame = normalise_keys(attention)
    has_mean = frame["head"].eq(-1).groupby(frame["metric"]).transform("any")
    frame = frame[~has_mean | frame["head"].eq(-1)]
    return frame.groupby(RUN_KEYS + ["metric", "state", "layer"], as_index=False)["value"].mean()


def attention_summary(attention: pd.DataFrame | None) -> pd.DataFrame:
    """Per run and metric: the layer-mean baseline, final and drift (whole-network metrics have
    only layer −1, so the same mean is their single value)."""
    columns = (RUN_KEYS + [f"{m}_{s}" for m in ATTENTION_METRICS for s in ("baseline", "final")] + list(DRIFT_METRICS)
               + [LAYER_DRIFT_METRIC])
    if attention is None or attention.empty:
        return pd.DataFrame(columns=columns)
    per_layer = per_layer_attention(attention)
    layer_means = per_layer.groupby(RUN_KEYS + ["metric", "state"])["value"].mean()
    states = layer_means.unstack("state").reindex(columns=["baseline", "final"])
    states["drift"] = drift_pct(states["final"], states["baseline"])
    wide = states.unstack("metric")
    wide.columns = [f"drift_{m}_pct" if s == "drift" else f"{m}_{s}" for s, m in wide.columns]
    wide[LAYER_DRIFT_METRIC] = _layer_drift_rms(per_layer)
    # the known metrics always (NaN if absent), then any others the metrics stage wrote (e.g. erf90)
    extra = [c for c in wide.columns if c not in columns]
    return wide.reset_index().reindex(columns=columns + extra)


def _layer_drift_rms(per_layer: pd.DataFrame, metric: str = "entropy") -> pd.Series:
    """Per run: the root mean square over blocks of ``metric``'s per-layer drift (%)."""
    blocks = per_layer[(per_layer["metric"] == metric) & (per_layer["layer"] >= 0)]
    states = blocks.pivot_table(index=RUN_KEYS + ["layer"], columns="state", values="value")
    if states.empty or not {"baseline", "final"} <= set(states.columns):
        return pd.Series(dtype=float)
    drift = pd.Series(drift_pct(states["final"], states["baseline"]), index=states.index)
    return (drift ** 2).groupby(RUN_KEYS).mean() ** 0.5


def _cka_rows(cka: pd.DataFrame) -> pd.DataFrame:
    frame = normalise_keys(cka)
    defined = frame["defined"].astype(bool) if "defined" in frame else frame["value"].notna()
    return frame[defined & frame["value"].notna()]


def cka_summary(cka: pd.DataFrame | None) -> pd.DataFrame:
    """Per run: mean linear CKA of the CLS token over the blocks (see ``CKA_SUMMARY``)."""
    if cka is None or cka.empty:
        return pd.DataFrame(columns=RUN_KEYS + ["cka_mean"])
    frame = _cka_rows(cka)
    chosen = frame[
        frame["variant"].eq(CKA_SUMMARY["variant"])
        & frame["token"].eq(CKA_SUMMARY["token"])
        & (frame["layer"] >= CKA_SUMMARY["min_layer"])
    ]
    return chosen.groupby(RUN_KEYS, as_index=False)["value"].mean().rename(columns={"value": "cka_mean"})


# The run table's zero-shot columns: suite means over the held-out tasks (clipdrift.analysis.suite).
ZEROSHOT_RUN_COLUMNS = ["zs_task", "zs_templates", "zs_top1", "zs_top5", "zs_balanced", "zs_retention"]


def run_table(
    histories: list[dict],
    zeroshot: pd.DataFrame | None,
    attention: pd.DataFrame | None,
    cka: pd.DataFrame | None,
    weights: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per run: training outcome, zero-shot transfer (``zeroshot``: the suite means per run,
    :func:`clipdrift.analysis.suite.suite_means`), attention drift, CKA, weight-space drift
    (``weights``: the summaries per run, :func:`clipdrift.analysis.weights.weight_run_summary`) and cost.

    Runs without zero-shot or metric artifacts (a diverged run the workflow did not score) get
    NaN there; every run in ``histories`` appears exactly once.
    """
    if not histories:
        raise ValueError("no run histories given: the run table needs at least one history.json")
    runs = pd.DataFrame([_history_row(h) for h in histories])
    duplicated = runs[runs.duplicated(RUN_KEYS, keep=False)]
    if not duplicated.empty:
        raise ValueError(f"the same run appears twice among the histories: {duplicated[RUN_KEYS].to_dict('records')}")
    runs.insert(3, "lr_value", runs["lr"].map(float))
    zeroshot = zeroshot if zeroshot is not None else pd.DataFrame(columns=[*RUN_KEYS, *ZEROSHOT_RUN_COLUMNS])
    parts = [zeroshot, attention_summary(attention), cka_summary(cka)]
    for part in parts + ([weights] if weights is not None and not weights.empty else []):  # measured or absent
        runs = runs.merge(normalise_keys(part), on=RUN_KEYS, how="left", validate="one_to_one")
    return sort_grid(runs, extra=["seed"])


# ------------------------------------------------------------------------------------ cells


def present(frame: pd.DataFrame, metrics: Iterable[str]) -> list[str]:
    return [m for m in metrics if m in frame]


def _seed_list(runs: pd.DataFrame, diverged: bool) -> str:
    return " ".join(str(s) for s in sorted(runs.loc[runs["diverged"] == diverged, "seed"]))


def _counts(runs: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    grouped = runs.groupby(keys, sort=False)
    counts = grouped.agg(n_runs=("seed", "size"), n_diverged=("diverged", "sum"))
    counts["n_diverged"] = counts["n_diverged"].astype(int)
    counts["seeds"] = grouped[["seed", "diverged"]].apply(_seed_list, diverged=False)
    counts["diverged_seeds"] = grouped[["seed", "diverged"]].apply(_seed_list, diverged=True)
    return counts


def _summaries(ok: pd.DataFrame, keys: list[str], metrics: list[str], ddof: int = 1) -> pd.DataFrame:
    grouped = ok.groupby(keys, sort=False)
    parts = []
    for metric in metrics:
        stats = grouped[metric].agg(["mean", lambda values: values.std(ddof=ddof), "count", "min", "max"])
        stats.columns = [f"{metric}_{s}" for s in ("mean", "sd", "n", "min", "max")]
        parts.append(stats)
    return pd.concat(parts, axis=1) if parts else pd.DataFrame(index=grouped.size().index)


def _intervals(ok: pd.DataFrame, keys: list[str], metrics: list[str], confidence: float, seed: int) -> pd.DataFrame:
    rows = {}
    for key, group in ok.groupby(keys, sort=False):
        row = {}
        for metric in metrics:
            row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = bootstrap_ci(
                group[metric], confidence=confidence, seed=seed
            )
        rows[key] = row
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index = pd.MultiIndex.from_tuples(frame.index, names=keys) if len(keys) > 1 else frame.index.rename(keys[0])
    return frame


def cell_table(
    runs: pd.DataFrame,
    metrics: Iterable[str] = CELL_METRICS,
    ci_metrics: Iterable[str] | None = None,
    confidence: float = 0.95,
    seed: int = 0,
    ddof: int = 1,
) -> pd.DataFrame:
    """One row per (dataset, method, lr): for each metric its mean, SD, n, min and max over the
    non-diverged seeds, plus bootstrap intervals of the mean for ``ci_metrics`` (those
    :mod:`clipdrift.analysis.names` gives an interval, unless given).

    SDs are sample SDs (``ddof`` 1); ``ddof=0`` gives population SDs, the published convention.

    ``n_runs`` counts every run of the cell, ``n_diverged`` those left out; a cell whose runs
    all diverged stays in the table with NaN statistics and n = 0.
    """
    metrics = present(runs, metrics)
    ok = runs[~runs["diverged"]]
    cells = _counts(runs, CELL_KEYS)
    cells = cells.join(_summaries(ok, CELL_KEYS, metrics, ddof))
    ci_metrics = interval_metrics() if ci_metrics is None else ci_metrics
    ci_metrics = [m for m in present(runs, ci_metrics) if m in metrics]
    if ci_metrics and not ok.empty:
        cells = cells.join(_intervals(ok, CELL_KEYS, ci_metrics, confidence, seed))
    for column in [c for c in cells if c.endswith("_n")]:
        cells[column] = cells[column].fillna(0).astype(int)
    cells = cells.reset_index()
    cells.insert(3, "lr_value", cells["lr"].map(float))
    return sort_grid(cells)


def method_table(runs: pd.DataFrame, metrics: Iterable[str] = CELL_METRICS) -> pd.DataFrame:
    """One row per (dataset, method) over the learning rates, as the published study averages:
    the mean of the cell means (each rate weighs the same, whatever its seed count), their SD
    across rates, and how many rates contributed."""
    metrics = present(runs, metrics)
    ok = runs[~runs["diverged"]]
    cell_means = ok.groupby(CELL_KEYS, sort=False)[metrics].mean()
    grouped = cell_means.groupby(["dataset", "method"], sort=False)
    parts = []
    for metric in metrics:
        stats = grouped[metric].agg(["mean", "std", "count"])
        stats.columns = [f"{metric}_mean", f"{metric}_sd_across_lr", f"{metric}_n_lr"]
        parts.append(stats)
    table = _counts(runs, ["dataset", "method"]).drop(columns=["seeds", "diverged_seeds"])
    table["lrs"] = runs.groupby(["dataset", "method"], sort=False)["lr"].agg(lambda s: " ".join(lr_order(s)))
    table = table.join(pd.concat(parts, axis=1)) if parts else table
    for column in [c for c in table if c.endswith("_n_lr")]:
        table[column] = table[column].fillna(0).astype(int)
    return sort_grid(table.reset_index())


# ----------------------------------------------------------------------------------- layers


def drop_diverged(frame: pd.DataFrame, runs: pd.DataFrame | None) -> pd.DataFrame:
    """``frame`` without the rows of runs that diverged (as every mean leaves them out)."""
    if runs is None:
        return frame
    bad = normalise_keys(runs.loc[runs["diverged"], RUN_KEYS])
    marked = frame.merge(bad.assign(_bad=True), on=RUN_KEYS, how="left")
    return marked[marked["_bad"].isna()].drop(columns="_bad")


def layer_quantities(attention: pd.DataFrame | None, cka: pd.DataFrame | None) -> pd.DataFrame:
    """Per run and layer: attention baseline/final/drift and every CKA variant, long format."""
    parts = []
    if attention is not None and not attention.empty:
        per_layer = per_layer_attention(attention)
        per_layer = per_layer[per_layer["layer"] >= 0]
        states = per_layer.pivot_table(index=RUN_KEYS + ["metric", "layer"], columns="state", values="value")
        states = states.reindex(columns=["baseline", "final"])
        states["drift_pct"] = drift_pct(states["final"], states["baseline"])
        long = states.stack().rename("value").reset_index()
        long["quantity"] = long["metric"] + "_" + long["state"]
        parts.append(long[RUN_KEYS + ["layer", "quantity", "value"]])
    if cka is not None and not cka.empty:
        frame = _cka_rows(cka)
        frame = frame.assign(quantity="cka_" + frame["variant"] + "_" + frame["token"])
        parts.append(frame[RUN_KEYS + ["layer", "quantity", "value"]])
    return (
        pd.concat(parts, ignore_index=True)
        if parts
        else pd.DataFrame(columns=RUN_KEYS + ["layer", "quantity", "value"])
    )


def layer_table(
    attention: pd.DataFrame | None, cka: pd.DataFrame | None, runs: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Layer profiles: one row per (dataset, method, lr, quantity, layer) with mean, SD, n over
    seeds. Quantities: ``<metric>_baseline``, ``<metric>_final``, ``<metric>_drift_pct`` for the
    per-layer attention metrics and ``cka_<variant>_<token>``. Pass ``runs`` to leave diverged
    runs out, as the cell table does."""
    values = drop_diverged(layer_quantities(attention, cka), runs)
    columns = CELL_KEYS + ["quantity", "layer", "mean", "sd", "n"]
    if values.empty:
        return pd.DataFrame(columns=columns)
    table = values.groupby(CELL_KEYS + ["quantity", "layer"], sort=False)["value"].agg(["mean", "std", "count"])
    table = table.rename(columns={"std": "sd", "count": "n"}).reset_index()
    table["layer"] = table["layer"].astype(int)
    return sort_grid(table[columns], extra=["quantity", "layer"])


def over_seeds(rows: pd.DataFrame, extra: list[str], measures: Iterable[str]) -> pd.DataFrame:
    """Per cell and ``extra`` keys: n and each measure's mean and SD over the seeds in ``rows``,
    in the study's order."""
    measures = list(measures)
    columns = [*CELL_KEYS, *extra, "n", *(f"{m}_{s}" for m in measures for s in ("mean", "sd"))]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    grouped = rows.groupby([*CELL_KEYS, *extra], sort=False)
    table = grouped[measures].agg(["mean", "std"])
    table.columns = [f"{m}_{'sd' if s == 'std' else s}" for m, s in table.columns]
    table.insert(0, "n", grouped.size())
    return sort_grid(table.reset_index()[columns], extra=extra)
