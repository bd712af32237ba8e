"""Does the representation drift (CKA) track the attention drift (entropy)? Correlations at the
run level and layer by layer, with permutation p-values.

- Run level, within each dataset over its non-diverged runs: the run's mean linear CKA of the
  CLS token over the blocks (``cka_mean``) against its layer-mean CLS-attention entropy
  drift (``drift_entropy_pct``).
- Layer level, within each dataset and layer over the runs: block *i*'s CLS-attention entropy
  drift against the CKA of block *i*'s output. In the CKA tables layer 0 is the embedding output,
  so block *i*'s output is CKA layer *i + 1*: ``pairing = same_layer``. The published code paired
  CKA entry *i* (counting the embedding output as entry 0) with attention layer *i*, i.e. each
  block's attention with the *previous* block's output; those rows are kept as
  ``pairing = published_offset`` so the two can be compared, and the report says which is which.

Pearson r and Spearman ρ each get a two-sided permutation p-value over re-pairings (exact where
n! is small enough, Monte-Carlo otherwise): with 10–40 runs per dataset, no normal-theory
assumption is needed.
"""

from __future__ import annotations

import pandas as pd

from clipdrift.analysis.stats import CORRELATION_METHODS, permutation_correlation
from clipdrift.analysis.tables import RUN_KEYS, drop_diverged, layer_quantities

PAIRINGS = {"same_layer": 1, "published_offset": 0}  # CKA layer = attention layer + offset
RELATION_COLUMNS = ["dataset", "level", "pairing", "layer", "x", "y", "n", "method", "r", "p_perm", "perm_exact",
                    "n_permutations"]
LAYER_X, LAYER_Y = "entropy_drift_pct", "cka_linear_cls"


def _rows(dataset: str, level: str, pairing: str, layer: int, x, y, x_name: str, y_name: str, seed: int) -> list[dict]:
    return [
        {"dataset": dataset, "level": level, "pairing": pairing, "layer": layer, "x": x_name, "y": y_name,
         "method": method, **permutation_correlation(x, y, method, seed)}
        for method in CORRELATION_METHODS
    ]


def run_level(runs: pd.DataFrame, seed: int = 0) -> list[dict]:
    ok = runs[~runs["diverged"]]
    if "cka_mean" not in ok or "drift_entropy_pct" not in ok:
        return []
    return [
        row
        for dataset, group in ok.groupby("dataset", sort=True)
        for row in _rows(dataset, "run", "mean_over_layers", -1, group["drift_entropy_pct"], group["cka_mean"],
                         "drift_entropy_pct", "cka_mean", seed)
    ]


def paired_layers(attention: pd.DataFrame, cka: pd.DataFrame, runs: pd.DataFrame | None, offset: int) -> pd.DataFrame:
    """Per run and attention layer: its entropy drift and the CKA of layer ``layer + offset``."""
    quantities = drop_diverged(layer_quantities(attention, cka), runs)
    wide = quantities[quantities["quantity"].isin([LAYER_X, LAYER_Y])].pivot_table(
        index=RUN_KEYS + ["layer"], columns="quantity", values="value").reset_index()
    if LAYER_X not in wide or LAYER_Y not in wide:
        return pd.DataFrame(columns=RUN_KEYS + ["layer", LAYER_X, LAYER_Y])
    drift = wide[RUN_KEYS + ["layer", LAYER_X]].dropna()
    cka_values = wide[RUN_KEYS + ["layer", LAYER_Y]].dropna().assign(layer=lambda f: f["layer"] - offset)
    return drift.merge(cka_values, on=RUN_KEYS + ["layer"], how="inner")


def layer_level(attention: pd.DataFrame | None, cka: pd.DataFrame | None, runs: pd.DataFrame | None,
                seed: int = 0) -> list[dict]:
    if attention is None or cka is None or attention.empty or cka.empty:
        return []
    rows = []
    for pairing, offset in PAIRINGS.items():
        pairs = paired_layers(attention, cka, runs, offset)
        for (dataset, layer), group in pairs.groupby(["dataset", "layer"], sort=True):
            rows += _rows(dataset, "layer", pairing, int(layer), group[LAYER_X], group[LAYER_Y], LAYER_X, LAYER_Y, seed)
    return rows


def cka_entropy_relations(runs: pd.DataFrame, attention: pd.DataFrame | None, cka: pd.DataFrame | None,
                          seed: int = 0) -> pd.DataFrame:
    """The run-level and per-layer correlations of CKA with entropy drift (module docstring)."""
    rows = run_level(runs, seed) + layer_level(attention, cka, runs, seed)
    return pd.DataFrame(rows, columns=RELATION_COLUMNS)
