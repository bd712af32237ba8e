"""How much of a measured attention drift could the choice of probe images alone explain?

Input: the probe-sensitivity tables of the runs (``metrics/probe_sensitivity/<run>.parquet``:
per probe seed and model state, the all-layer mean CLS-attention entropy and the rollout
entropy). Per metric:

- the pretrained model's coefficient of variation over the probe subsets (one per dataset: every
  run of a dataset measures the same pretrained model on the same subsets, which is checked);
- each run's fine-tuned coefficient of variation, and its drift computed on every probe subset
  (fine-tuned vs pretrained on the *same* images): mean and SD across the subsets;
- ``probe_explains``: the run's drift on the study's probe lies within two across-probe SDs of
  zero, i.e. a different probe subset could have produced a drift of the opposite sign or none.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from clipdrift.analysis.tables import RUN_KEYS, drift_pct, normalise_keys, sort_grid

SENSITIVITY_METRICS = {"entropy": "drift_entropy_pct", "rollout_entropy": "drift_rollout_entropy_pct"}
EXPLAINED_SDS = 2.0
COLUMNS = ["dataset", "method", "lr", "seed", "metric", "n_probes", "mean", "sd", "cv_pct",
           "drift_mean", "drift_sd", "drift_min", "drift_max", "drift_measured", "probe_explains"]


def _cv(values: pd.Series) -> tuple[float, float, float]:
    mean, sd = float(values.mean()), float(values.std(ddof=1))
    return mean, sd, 100.0 * sd / abs(mean) if mean else np.nan


def _pretrained_rows(frame: pd.DataFrame) -> list[dict]:
    """One row per dataset and metric; refuses runs that disagree about the pretrained values."""
    baseline = frame[frame["state"] == "baseline"]
    spread = baseline.groupby(["dataset", "metric", "probe_seed"])["value"].agg(lambda v: float(np.ptp(v)))
    scale = baseline["value"].abs().max()
    if len(spread) and spread.max() > 1e-6 * max(scale, 1.0):
        raise ValueError("runs of one dataset measured different pretrained values on the same probe subsets: "
                         "their sensitivity tables come from different backbones or probes; rerun them")
    rows = []
    for (dataset, metric), group in baseline.groupby(["dataset", "metric"], sort=True):
        per_seed = group.groupby("probe_seed")["value"].first()
        mean, sd, cv = _cv(per_seed)
        rows.append({"dataset": dataset, "method": "pretrained", "lr": "", "seed": -1, "metric": metric,
                     "n_probes": len(per_seed), "mean": mean, "sd": sd, "cv_pct": cv})
    return rows


def _run_rows(frame: pd.DataFrame, runs: pd.DataFrame | None) -> list[dict]:
    wide = frame.pivot_table(index=RUN_KEYS + ["metric", "probe_seed"], columns="state", values="value").reset_index()
    wide["drift"] = drift_pct(wide["final"], wide["baseline"])
    measured = normalise_keys(runs).set_index(RUN_KEYS) if runs is not None else None
    rows = []
    for (*keys, metric), group in wide.groupby(RUN_KEYS + ["metric"], sort=False):
        mean, sd, cv = _cv(group["final"])
        drift = group["drift"]
        row = dict(zip(RUN_KEYS, keys)) | {
            "metric": metric, "n_probes": len(group), "mean": mean, "sd": sd, "cv_pct": cv,
            "drift_mean": float(drift.mean()), "drift_sd": float(drift.std(ddof=1)),
            "drift_min": float(drift.min()), "drift_max": float(drift.max()),
        }
        column = SENSITIVITY_METRICS.get(metric)
        if measured is not None and column in measured and tuple(keys) in measured.index:
            row["drift_measured"] = float(measured.loc[tuple(keys), column])
            row["probe_explains"] = bool(abs(row["drift_measured"]) <= EXPLAINED_SDS * row["drift_sd"])
        rows.append(row)
    return rows


def probe_sensitivity(sensitivity: pd.DataFrame | None, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """The sensitivity table (module docstring): pretrained rows (``method = "pretrained"``)
    then one row per run and metric. Diverged runs are left out, as everywhere else."""
    if sensitivity is None or sensitivity.empty:
        return pd.DataFrame(columns=COLUMNS)
    frame = normalise_keys(sensitivity)
    if runs is not None:
        diverged = normalise_keys(runs.loc[runs["diverged"], RUN_KEYS]).assign(_bad=True)
        frame = frame.merge(diverged, on=RUN_KEYS, how="left")
        frame = frame[frame["_bad"].isna()].drop(columns="_bad")
    pretrained = pd.DataFrame(_pretrained_rows(frame), columns=COLUMNS)
    tuned = sort_grid(pd.DataFrame(_run_rows(frame, runs), columns=COLUMNS), extra=["seed", "metric"])
    table = pd.concat([pretrained, tuned], ignore_index=True)
    table["probe_explains"] = table["probe_explains"].astype("boolean")
    return table[COLUMNS]


def sensitivity_summary(table: pd.DataFrame, metric: str = "entropy") -> pd.DataFrame:
    """Per dataset: the pretrained CV, the median fine-tuned CV, the median |drift| and median
    across-probe SD of the drift, and how many runs' drift the probe alone could explain."""
    rows = []
    for dataset, group in table[table["metric"] == metric].groupby("dataset", sort=True):
        pretrained = group[group["method"] == "pretrained"]
        tuned = group[group["method"] != "pretrained"]
        explained = tuned["probe_explains"].dropna()
        rows.append({
            "dataset": dataset, "metric": metric,
            "n_probes": int(pretrained["n_probes"].iloc[0]) if len(pretrained) else 0,
            "pretrained_cv_pct": float(pretrained["cv_pct"].iloc[0]) if len(pretrained) else np.nan,
            "median_finetuned_cv_pct": float(tuned["cv_pct"].median()),
            "median_abs_drift": float(tuned["drift_measured"].abs().median()),
            "median_drift_sd": float(tuned["drift_sd"].median()),
            "n_runs": len(tuned), "n_explained": int(explained.sum()), "n_judged": len(explained),
        })
    return pd.DataFrame(rows)
