"""Per-layer analyses: where in the tower drift concentrates (:func:`layer_groups`), and the
published regulariser test over layers (:func:`layer_pair_tests`).

Where drift concentrates: the per-layer drift of each cell's runs split into
early, middle and late blocks (consecutive thirds: blocks 1-4 / 5-8 / 9-12 of ViT-B/32) and
tested across the groups, with the unit of replication stated on every row (``unit``):

- ``layers (seed means)``: each layer's drift averaged over the cell's seeds first, then a one-way
  ANOVA across the groups of those layer means (n per group: its layers; needs two or more);
- ``seeds (repeated measures)``: each seed's mean drift in each group, a repeated-measures ANOVA
  with the seeds as subjects (n: the seeds), so seed-to-seed spread is not taken for a layer effect;
- ``layers (one run)``: the published analysis, a one-way ANOVA on one run's per-layer changes
  (one row per seed, ``seed`` set; p > 0.46 there).

Pooling every layer of every seed as independent values, as the table once did, counts each layer
once per seed: on a 3-seed table it can move p by an order of magnitude.

The published regulariser test (``layer_tests``): a variant's run against its base method's run of
the same dataset, rate and seed, paired over the layers' final CLS-attention entropies (paired
t) with Cohen's d of the two runs' layer values (pooled SD, ddof 1); its unit of replication is
the layer, within one pair of runs, so it says how consistently the layers moved, not whether the
variant would move them again with another seed (the ``stats`` table's seed-level tests do).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from clipdrift.analysis.stats import one_way_anova, paired_over_layers, repeated_measures_anova
from clipdrift.analysis.tables import CELL_KEYS, drop_diverged, layer_quantities, sort_grid

LAYER_GROUPS = ("early", "middle", "late")
GROUPED_METRICS = ("entropy", "erf95")
UNITS = ("layers (seed means)", "seeds (repeated measures)", "layers (one run)")
COLUMNS = [*CELL_KEYS, "metric", "unit", "seed", *(f"{g}_mean" for g in LAYER_GROUPS), "f", "p_anova", "n_groups",
           "n_per_group"]


def layer_group_of(layers: list[int]) -> dict[int, str]:
    """Each block index → its group: the sorted blocks cut into consecutive thirds (np.array_split)."""
    ordered = sorted(layers)
    return {layer: group for group, part in zip(LAYER_GROUPS, np.array_split(ordered, len(LAYER_GROUPS)))
            for layer in part.tolist()}


def layer_groups(attention: pd.DataFrame | None, runs: pd.DataFrame | None = None,
                 metrics: tuple[str, ...] = GROUPED_METRICS) -> pd.DataFrame:
    """Per cell and metric (non-diverged runs): the group means of the per-layer drift (%) and
    the test across the groups, for each unit of replication (the module docstring)."""
    quantities = drop_diverged(layer_quantities(attention, None), runs)
    wanted = [f"{m}_drift_pct" for m in metrics]
    drift = quantities[quantities["quantity"].isin(wanted)] if not quantities.empty else quantities
    if drift.empty:
        return pd.DataFrame(columns=COLUMNS)
    drift = drift.assign(metric=drift["quantity"].str.removesuffix("_drift_pct"))
    rows = []
    for (dataset, method, lr, metric), cell in drift.groupby([*CELL_KEYS, "metric"], sort=False):
        per_seed = cell.pivot_table(index="seed", columns="layer", values="value")  # seeds × layers
        group = pd.Series(layer_group_of(per_seed.columns.tolist()))
        key = {"dataset": dataset, "method": method, "lr": lr, "metric": metric}
        rows += [{**key, **row} for row in _cell_rows(per_seed, group)]
    return sort_grid(pd.DataFrame(rows, columns=COLUMNS), extra=["metric"])  # stable: units and seeds in order


def _cell_rows(per_seed: pd.DataFrame, group: pd.Series) -> list[dict]:
    layer_means = per_seed.mean(axis=0)
    by_group = [layer_means[group.index[group == g]].to_numpy() for g in LAYER_GROUPS]
    seed_by_group = per_seed.T.groupby(group).mean().T.reindex(columns=list(LAYER_GROUPS))  # seeds × groups
    rows = [{"unit": UNITS[0], "seed": math.nan, **_means(by_group), **one_way_anova(by_group),
             "n_per_group": min(len(v) for v in by_group)},
            {"unit": UNITS[1], "seed": math.nan, **_means(by_group), **repeated_measures_anova(seed_by_group.to_numpy()),
             "n_per_group": len(per_seed)}]
    for seed, values in per_seed.iterrows():
        one_run = [values[group.index[group == g]].dropna().to_numpy() for g in LAYER_GROUPS]
        rows.append({"unit": UNITS[2], "seed": seed, **_means(one_run), **one_way_anova(one_run),
                     "n_per_group": min(len(v) for v in one_run)})
    return rows


def _means(groups: list[np.ndarray]) -> dict:
    return {f"{g}_mean": float(np.mean(v)) if len(v) else math.nan for g, v in zip(LAYER_GROUPS, groups)}


PAIR_COLUMNS = ["dataset", "method_a", "method_b", "lr", "seed", "metric", "mean_a", "mean_b", "t_paired", "p_paired",
                "cohens_d_layers", "n_layers"]


def layer_pair_tests(attention: pd.DataFrame | None, runs: pd.DataFrame | None, pairs: list[tuple[str, str]],
                     metric: str = "entropy") -> pd.DataFrame:
    """Per pair (base, variant), dataset, rate and seed both ran (neither diverged): the published
    paired test over the layers' final values of ``metric`` (the module docstring)."""
    quantities = drop_diverged(layer_quantities(attention, None), runs)
    if quantities.empty or not pairs:
        return pd.DataFrame(columns=PAIR_COLUMNS)
    final = quantities[quantities["quantity"] == f"{metric}_final"]
    by_run = {key: frame.set_index("layer")["value"] for key, frame in final.groupby(["dataset", "method", "lr", "seed"])}
    rows = []
    for (dataset, method, lr, seed), values in by_run.items():
        for base, variant in pairs:
            other = by_run.get((dataset, variant, lr, seed))
            if method != base or other is None:
                continue
            a, b = values.align(other, join="inner")
            rows.append({"dataset": dataset, "method_a": base, "method_b": variant, "lr": lr, "seed": seed,
                         "metric": metric, "mean_a": float(a.mean()), "mean_b": float(b.mean()),
                         **paired_over_layers(a.to_numpy(), b.to_numpy())})
    frame = pd.DataFrame(rows, columns=PAIR_COLUMNS)
    return sort_grid(frame.rename(columns={"method_b": "method"}), extra=["method_a", "seed"]).rename(
        columns={"method": "method_b"})[PAIR_COLUMNS]
