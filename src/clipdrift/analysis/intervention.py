"""The intruder intervention over a study: per cell, kind (intruders removed, or the uniform
control) and share kept, the suite-mean scores; and per cell and share, what removing the
intruders gives back beyond removing as much change uniformly, paired within each run (the same
run's two states), with its mean over seeds and the seeds' interval."""

from __future__ import annotations

import pandas as pd

from clipdrift.analysis.stats import bootstrap_ci
from clipdrift.analysis.suite import suite_curves
from clipdrift.analysis.tables import CELL_KEYS, RUN_KEYS, drop_diverged, normalise_keys, over_seeds, sort_grid

INTERVENTION_MEASURES = ("zs_top1", "zs_retention", "indomain_acc", "drift_entropy_pct", "weight_distance")
PAIRED = {"zs_gain": "zs_top1", "retention_gain": "zs_retention", "indomain_gain": "indomain_acc"}


def intervention_points(intervention: pd.DataFrame | None, pretrained: dict, runs: pd.DataFrame | None = None
                        ) -> pd.DataFrame:
    """Per run, kind and share kept: suite means (:func:`clipdrift.analysis.suite.suite_curves`)."""
    if intervention is None or intervention.empty:
        return pd.DataFrame(columns=[*RUN_KEYS, "kind", "keep", *INTERVENTION_MEASURES])
    means, _ = suite_curves(normalise_keys(intervention), pretrained)
    return drop_diverged(means, runs)


def intervention_table(points: pd.DataFrame) -> pd.DataFrame:
    """Per cell, kind and share kept: each measure's mean and SD over seeds, and n."""
    return over_seeds(points, ["kind", "keep"], INTERVENTION_MEASURES)


def intervention_effects(points: pd.DataFrame, confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Per cell and share kept below 1: the intruders' state minus the control's, per run, then
    mean, SD, n and a bootstrap interval over seeds (``zs_gain``: zero-shot top-1, ``retention_gain``,
    ``indomain_gain``: in-domain accuracy; above 0: removing intruders did better)."""
    columns = [*CELL_KEYS, "keep", "n", *(f"{name}_{s}" for name in PAIRED for s in ("mean", "sd", "ci_low", "ci_high"))]
    if points.empty:
        return pd.DataFrame(columns=columns)
    wide = points[points["keep"] < 1.0].pivot_table(index=[*RUN_KEYS, "keep"], columns="kind",
                                                    values=list(PAIRED.values()))
    if wide.empty:
        return pd.DataFrame(columns=columns)
    gains = pd.DataFrame({name: wide[(measure, "intruders")] - wide[(measure, "uniform")]
                          for name, measure in PAIRED.items()}).reset_index()
    rows = []
    for key, group in gains.groupby([*CELL_KEYS, "keep"], sort=False):
        row = dict(zip([*CELL_KEYS, "keep"], key)) | {"n": int(group["seed"].nunique())}
        for name in PAIRED:
            low, high = bootstrap_ci(group[name], confidence=confidence, seed=seed)
            row |= {f"{name}_mean": group[name].mean(), f"{name}_sd": group[name].std(), f"{name}_ci_low": low,
                    f"{name}_ci_high": high}
        rows.append(row)
    return sort_grid(pd.DataFrame(rows, columns=columns), extra=["keep"])
