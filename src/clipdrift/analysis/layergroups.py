"""Where in the tower drift concentrates: the per-layer drift of each cell's runs split into
early, middle and late blocks (consecutive thirds: blocks 1-4 / 5-8 / 9-12 of ViT-B/32) and
compared by a one-way ANOVA, as published (p > 0.46 there)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from clipdrift.analysis.stats import one_way_anova
from clipdrift.analysis.tables import CELL_KEYS, drop_diverged, layer_quantities, sort_grid

LAYER_GROUPS = ("early", "middle", "late")
GROUPED_METRICS = ("entropy", "erf95")


def layer_group_of(layers: list[int]) -> dict[int, str]:
    """Each block index → its group: the sorted blocks cut into consecutive thirds (np.array_split)."""
    ordered = sorted(layers)
    return {layer: group for group, part in zip(LAYER_GROUPS, np.array_split(ordered, len(LAYER_GROUPS)))
            for layer in part.tolist()}


def layer_groups(attention: pd.DataFrame | None, runs: pd.DataFrame | None = None,
                 metrics: tuple[str, ...] = GROUPED_METRICS) -> pd.DataFrame:
    """Per cell and metric: the mean per-layer drift (%) of each layer group over its layers and
    the cell's (non-diverged) seeds, and a one-way ANOVA across the groups of those values."""
    columns = CELL_KEYS + ["metric", *(f"{g}_mean" for g in LAYER_GROUPS), "f", "p_anova", "n_groups", "n_per_group"]
    quantities = drop_diverged(layer_quantities(attention, None), runs)
    wanted = [f"{m}_drift_pct" for m in metrics]
    drift = quantities[quantities["quantity"].isin(wanted)] if not quantities.empty else quantities
    if drift.empty:
        return pd.DataFrame(columns=columns)
    drift = drift.assign(metric=drift["quantity"].str.removesuffix("_drift_pct"),
                         group=drift["layer"].map(layer_group_of(drift["layer"].unique().tolist())))
    rows = []
    for (dataset, method, lr, metric), cell in drift.groupby([*CELL_KEYS, "metric"], sort=False):
        groups = [cell.loc[cell["group"] == g, "value"].to_numpy() for g in LAYER_GROUPS]
        rows.append({"dataset": dataset, "method": method, "lr": lr, "metric": metric,
                     **{f"{g}_mean": float(np.mean(v)) if len(v) else np.nan for g, v in zip(LAYER_GROUPS, groups)},
                     **one_way_anova(groups), "n_per_group": min(len(v) for v in groups)})
    return sort_grid(pd.DataFrame(rows, columns=columns), extra=["metric"])
