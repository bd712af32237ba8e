"""The robustness frontier and the trajectories: what the curves of the runs answer.

- **Matched in-domain accuracy.** Does LoRA keep more zero-shot *at the same in-domain accuracy*,
  or only because it learns less? At each matched learning rate, LoRA's end point (alpha = 1,
  mean in-domain accuracy over its seeds) fixes an accuracy x*; every Full FT run's interpolation
  curve (alpha from 0 to 1, WiSE-FT) is followed to where it first reaches x*, and its zero-shot
  there is read off linearly between the two alpha points around it. The difference to LoRA's
  end-point zero-shot has a Welch interval over the seeds. Full FT's interpolation "reaches LoRA's
  end point" when it keeps at least LoRA's zero-shot there.
- **Trajectories.** At which epoch does Full FT's mean zero-shot fall below half the pretrained
  model's?

Pure functions of the curves table (``tables/curves``) and the run table; no model code.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from clipdrift.analysis.stats import welch
from clipdrift.analysis.tables import RUN_KEYS, lr_order, method_label, normalise_keys, sort_grid
from clipdrift.analysis.wording import finding, pct
from clipdrift.model.methods import REFERENCE_PAIR

CURVE_METRICS = ("indomain_acc", "zs_top1", "drift_entropy_pct", "drift_erf_pct")


def curve_points(curves: pd.DataFrame | None, runs: pd.DataFrame | None = None, extra=()) -> pd.DataFrame:
    """All runs' curve points, diverged runs left out, sorted by run, kind, point (and ``extra``)."""
    if curves is None or curves.empty:
        return pd.DataFrame(columns=[*RUN_KEYS, "kind", "point", *extra, *CURVE_METRICS, "zs_retention"])
    frame = normalise_keys(curves)
    if runs is not None:
        bad = normalise_keys(runs.loc[runs["diverged"], RUN_KEYS]).assign(_bad=True)
        frame = frame.merge(bad, on=RUN_KEYS, how="left")
        frame = frame[frame["_bad"].isna()].drop(columns="_bad")
    return sort_grid(frame, extra=["seed", "kind", "point", *extra])


def first_crossing(x: np.ndarray, y: np.ndarray, target: float) -> float:
    """y where the path (x, y), taken in order, first reaches x = target (linear between
    points); NaN if it never does."""
    for (x0, y0), (x1, y1) in zip(zip(x[:-1], y[:-1]), zip(x[1:], y[1:])):
        if min(x0, x1) <= target <= max(x0, x1):
            return float(y0 if x1 == x0 else y0 + (target - x0) * (y1 - y0) / (x1 - x0))
    return float(y[0]) if len(x) == 1 and x[0] == target else math.nan


def matched_accuracy(points: pd.DataFrame, methods: tuple[str, str] = REFERENCE_PAIR) -> pd.DataFrame:
    """Per dataset and rate where both methods have interpolation curves: method b's end point
    (in-domain accuracy x*, zero-shot) against method a's interpolation curves at x*."""
    a, b = methods
    alpha = points[points["kind"] == "alpha"]
    rows = []
    for (dataset, lr), group in alpha.groupby(["dataset", "lr"], sort=False):
        ends = group[(group["method"] == b) & (group["point"] == 1.0)]
        curves = group[group["method"] == a]
        if ends.empty or curves.empty:
            continue
        target = float(ends["indomain_acc"].mean())
        seeds = curves.sort_values("point").groupby("seed")
        reached = np.array([first_crossing(run["indomain_acc"].to_numpy(), run["zs_top1"].to_numpy(), target)
                            for _, run in seeds], dtype=float)
        reaching = " ".join(str(seed) for (seed, _), value in zip(seeds, reached) if np.isfinite(value))
        test = welch(reached[np.isfinite(reached)], ends["zs_top1"])  # b's end minus a at b's accuracy
        rows.append({
            "dataset": dataset, "lr": lr, "method_a": a, "method_b": b, "indomain_acc": target,
            "zs_b_end": float(ends["zs_top1"].mean()), "n_b": len(ends),
            "zs_a_at_match": float(np.nanmean(reached)) if np.isfinite(reached).any() else math.nan,
            "n_a_reaching": int(np.isfinite(reached).sum()), "n_a": len(reached), "seeds_a_reaching": reaching,
            "diff": test["diff"], "diff_ci_low": test["diff_ci_low"], "diff_ci_high": test["diff_ci_high"],
            "p_welch": test["p_welch"],
        })
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame["a_reaches_b"] = frame["zs_a_at_match"] >= frame["zs_b_end"]
    return frame


def half_pretrained_epochs(points: pd.DataFrame, pretrained_zs: float, method: str = REFERENCE_PAIR[0]) -> pd.DataFrame:
    """Per dataset and rate: the first kept epoch at which ``method``'s mean zero-shot is below
    half the pretrained model's (NaN: never, among the kept epochs)."""
    epochs = points[(points["kind"] == "epoch") & (points["method"] == method)]
    rows = []
    for (dataset, lr), group in epochs.groupby(["dataset", "lr"], sort=False):
        means = group.groupby("point")["zs_top1"].mean().sort_index()
        below = means[means < 0.5 * pretrained_zs]
        rows.append({"dataset": dataset, "lr": lr, "method": method,
                     "epoch": float(below.index[0]) if len(below) else math.nan,
                     "first_epoch": float(means.index[0]), "last_epoch": float(means.index[-1]),
                     "zs_at_last": float(means.iloc[-1])})
    return pd.DataFrame(rows)


def frontier_findings(points: pd.DataFrame, methods: tuple[str, str] = REFERENCE_PAIR) -> list[dict]:
    """One finding per dataset: at matched in-domain accuracy, which method keeps more zero-shot."""
    a, b = methods
    matched = matched_accuracy(points, methods)
    findings = []
    for dataset, group in (matched.groupby("dataset", sort=True) if not matched.empty else []):
        group = group.set_index("lr").loc[lr_order(group["lr"])].reset_index()
        reaches = int(group["a_reaches_b"].sum())
        widest = group.loc[(group["zs_b_end"] - group["zs_a_at_match"]).abs().fillna(-1).idxmax()]
        interval = ("" if pd.isna(widest["diff_ci_low"]) else
                    f", 95% CI {100 * widest['diff_ci_low']:+.1f} to {100 * widest['diff_ci_high']:+.1f} points")
        sentence = (
            f"On {dataset}, at the in-domain accuracy where {method_label(b)} ends, interpolating "
            f"{method_label(a)} back towards the pretrained weights keeps at least {method_label(b)}'s zero-shot "
            f"at {reaches} of {len(group)} matched learning rates. At {widest['lr']}: {method_label(b)} ends at "
            f"{pct(widest['indomain_acc'])} in-domain with {pct(widest['zs_b_end'])} zero-shot; "
            f"{method_label(a)}'s interpolation at that accuracy keeps {pct(widest['zs_a_at_match'])} "
            f"({widest['n_a_reaching']} of {widest['n_a']} seeds reach it), a difference of "
            f"{100 * widest['diff']:+.1f} points for {method_label(b)}{interval}."
        )
        findings.append(finding("frontier", dataset, sentence, reaches=reaches, n_lrs=len(group), lr=widest["lr"],
                                indomain_acc=widest["indomain_acc"], zs_b_end=widest["zs_b_end"],
                                zs_a_at_match=widest["zs_a_at_match"], diff=widest["diff"]))
    return findings


def trajectory_findings(points: pd.DataFrame, pretrained_zs: float, method: str = REFERENCE_PAIR[0]) -> list[dict]:
    """One finding per dataset: when ``method``'s zero-shot falls below half the pretrained value."""
    if math.isnan(pretrained_zs):
        return []
    epochs = half_pretrained_epochs(points, pretrained_zs, method)
    findings = []
    for dataset, group in (epochs.groupby("dataset", sort=True) if not epochs.empty else []):
        group = group.set_index("lr").loc[lr_order(group["lr"])].reset_index()
        fell = group[group["epoch"].notna()]
        parts = [f"at lr {r.lr} " + (f"already at epoch {int(r.epoch)}, the first measured" if r.epoch == r.first_epoch
                                     else f"by epoch {int(r.epoch)}") for r in fell.itertuples()]
        never = [r.lr for r in group.itertuples() if pd.isna(r.epoch)]
        sentence = (
            f"On {dataset}, {method_label(method)}'s zero-shot top-1 (mean over seeds) falls below half the "
            f"pretrained {pct(pretrained_zs)} " + ("; ".join(parts) if parts else "at no learning rate")
            + (f"; it stays above at {', '.join(never)} through epoch {int(group['last_epoch'].max())}" if never else "")
            + "."
        )
        findings.append(finding("trajectory", dataset, sentence,
                                epochs={r.lr: (None if pd.isna(r.epoch) else int(r.epoch)) for r in group.itertuples()}))
    return findings
