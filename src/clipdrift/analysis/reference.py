"""The published study's numbers, and the reproduced-vs-published comparison.

The packaged CSVs copy the publication's numbers verbatim (accuracies in percent):
``paper_cells.csv`` its 16 cell means, ``paper_methods.csv`` its averages over the four rates
(which include the ERF drift, published only at that level), ``paper_correlations.csv`` its
Pearson correlations within each dataset over its 40 runs. They are loaded in the artifacts'
units: accuracies as fractions, drifts in percent, under the run table's column names, so a
comparison is a join and a subtraction.

Like with like: the published cell SDs are population SDs (ddof 0), so the cell comparison is
made on a cell table computed with ``ddof=0`` (the rest of the report keeps sample SDs).
"""

from __future__ import annotations

import math
from importlib import resources

import pandas as pd

from clipdrift.analysis.tables import sort_grid

# published column -> run-table metric
PUBLISHED_METRICS = {
    "best_val_acc": "best_select_acc",
    "entropy_drift_pct": "drift_entropy_pct",
    "erf_drift_pct": "drift_erf95_pct",
    "cifar100_zeroshot": "zs_top1",
}
PERCENT_COLUMNS = ("best_val_acc", "cifar100_zeroshot")  # published in percent
PUBLISHED_PRETRAINED_ZEROSHOT = 0.6022  # CIFAR-100, single template, pretrained ViT-B/32
# ablations: the authors' earlier single-seed runs (EuroSAT, seed 42, lr 1e-5 for Full FT and its
# variants, 1e-4 for LoRA's, as their code ran them; blank where they gave no number), by the names
# configs/paper-ablations.yaml gives those variants
PUBLISHED_FILES = {"cells": "paper_cells.csv", "methods": "paper_methods.csv",
                   "correlations": "paper_correlations.csv", "ablations": "paper_ablations.csv"}
PUBLISHED_SD_DDOF = 0  # the published cell SDs are population SDs


def load_reference(level: str = "cells") -> pd.DataFrame:
    """The published cell means (``level="cells"``: dataset, method, lr) or the published
    averages over the four rates (``level="methods"``), in run-table units and names."""
    if level not in PUBLISHED_FILES:
        raise ValueError(f"reference level {level!r} is unknown: use one of {sorted(PUBLISHED_FILES)}")
    source = resources.files("clipdrift") / "resources" / PUBLISHED_FILES[level]
    with source.open() as handle:
        frame = pd.read_csv(handle, dtype={"lr": str, "dataset": str, "method": str})
    if level == "correlations":  # metric names are values here, not columns
        return frame.assign(x=frame["x"].map(PUBLISHED_METRICS), y=frame["y"].map(PUBLISHED_METRICS))
    for column in PERCENT_COLUMNS:
        frame[column] = frame[column] / 100.0
    return frame.rename(columns=PUBLISHED_METRICS)


def _keys(reference: pd.DataFrame) -> list[str]:
    return [k for k in ("dataset", "method", "lr") if k in reference]


def paper_comparison(table: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    """Reproduced vs published, one row per (cell, metric).

    ``table`` is the cell table (for cell-level references) or the method table (for the
    published averages). ``within_sd``: the published value lies within one seed SD of the
    reproduced mean; ``within_range``: within the reproduced seeds' min–max. Both are NA where
    the reproduction has no spread (a missing cell, one seed, or the method level, whose SD is
    across rates rather than seeds). Learning rates are matched by value, not spelling.
    """
    keys = _keys(reference)
    metrics = [m for m in reference.columns if m not in keys and f"{m}_mean" in table]
    left, right = reference.copy(), table.copy()
    if "lr" in keys:
        left["_lr"], right["_lr"] = left["lr"].map(float), right["lr"].map(float)
        right = right.drop(columns="lr")
    join = [k for k in keys if k != "lr"] + (["_lr"] if "lr" in keys else [])
    merged = left.merge(right, on=join, how="left", suffixes=("", "_reproduced"))
    rows = []
    for _, row in merged.iterrows():
        for metric in metrics:
            rows.append({k: row[k] for k in keys} | _compare(row, metric))
    frame = pd.DataFrame(rows)
    frame[["within_sd", "within_range"]] = frame[["within_sd", "within_range"]].astype("boolean")
    return sort_grid(frame, extra=["metric"])


def _compare(row: pd.Series, metric: str) -> dict:
    published, mean = row[metric], row.get(f"{metric}_mean")
    sd = row.get(f"{metric}_sd", math.nan)  # absent at the method level: no seed spread there
    n = row.get(f"{metric}_n", row.get(f"{metric}_n_lr"))  # seeds per cell, or rates per method
    low, high = row.get(f"{metric}_min"), row.get(f"{metric}_max")
    difference = mean - published
    return {
        "metric": metric,
        "published": published,
        "reproduced_mean": mean,
        "reproduced_sd": float(sd),
        "reproduced_n": 0 if pd.isna(n) else int(n),
        "difference": difference,
        "within_sd": pd.NA if pd.isna(sd) or pd.isna(mean) else bool(abs(difference) <= sd),
        "within_range": pd.NA if pd.isna(low) or pd.isna(high) or low == high else bool(low <= published <= high),
    }


OTHER_DEFINITION = "not the published definition"


def ablation_comparison(table: pd.DataFrame, reference: pd.DataFrame, published: dict[str, bool]) -> pd.DataFrame:
    """The authors' ablation numbers beside the study's cells of the same variant and rate, only
    where the study trained that variant with the published definition (``published``: method →
    whether it did, :func:`clipdrift.pipeline.protocol.published_ablation_definitions`). A cell of
    another definition is marked so (``definition``) and its numbers are left out, never compared."""
    frame = paper_comparison(table, reference)
    frame = frame[frame["published"].notna()].reset_index(drop=True)
    same = frame["method"].map(lambda method: bool(published.get(method, False)))
    ran = frame["reproduced_n"] > 0
    frame["definition"] = [("published" if ok else OTHER_DEFINITION) if r else "not run" for ok, r in zip(same, ran)]
    other = ran & ~same
    frame.loc[other, ["reproduced_mean", "reproduced_sd", "difference"]] = math.nan
    frame.loc[other, "reproduced_n"] = 0
    frame.loc[other, ["within_sd", "within_range"]] = pd.NA
    return frame


def paper_correlations(correlations: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    """Published vs measured Pearson r, one row per published (dataset, x, y).

    ``correlations``: the study's correlation table (:func:`clipdrift.analysis.compare.correlations`).
    ``within_ci``: the published r lies inside the measured r's 95% Fisher-z interval (NA
    where the study has no interval: fewer than 4 runs, or the pair was not measured).
    """
    measured = correlations.rename(columns={"n": "measured_n", "pearson_r": "measured_r"})
    keep = ["dataset", "x", "y", "measured_r", "pearson_ci_low", "pearson_ci_high", "measured_n"]
    merged = reference.merge(measured[keep] if not measured.empty else pd.DataFrame(columns=keep),
                             on=["dataset", "x", "y"], how="left")
    merged = merged.rename(columns={"r": "published_r", "n_runs": "published_n"})
    merged["difference"] = merged["measured_r"] - merged["published_r"]
    inside = (merged["pearson_ci_low"] <= merged["published_r"]) & (merged["published_r"] <= merged["pearson_ci_high"])
    merged["within_ci"] = inside.astype("boolean").mask(merged["pearson_ci_low"].isna())
    merged["measured_n"] = merged["measured_n"].fillna(0).astype(int)
    columns = ["dataset", "x", "y", "published_r", "published_n", "measured_r", "pearson_ci_low", "pearson_ci_high",
               "measured_n", "difference", "within_ci"]
    return merged[columns]
