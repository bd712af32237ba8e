"""Method comparisons at matched learning rates, and correlations across runs."""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import pandas as pd

from clipdrift.analysis.names import compared_metrics
from clipdrift.analysis.stats import cohens_d, correlation, holm, permutation, welch
from clipdrift.analysis.tables import method_order, present, sort_grid
from clipdrift.model.methods import REFERENCE_PAIR

CORRELATION_PAIRS = (
    ("drift_entropy_pct", "zs_top1"),
    ("drift_erf95_pct", "zs_top1"),
    ("cka_mean", "zs_top1"),
    ("best_select_acc", "zs_top1"),
    ("drift_entropy_pct", "best_select_acc"),  # published alongside drift vs zero-shot
    ("weight_intruders", "zs_retention"),  # do intruders go with forgetting (Shuttleworth et al.)?
    ("weight_intruder_energy", "zs_retention"),
    ("weight_intruders", "drift_entropy_pct"),  # and with the attention's drift?
)


def _comparison_row(a, b, seed: int) -> dict:
    return {
        "n_a": int(a.notna().sum()),
        "mean_a": a.mean(),
        "sd_a": a.std(),
        "n_b": int(b.notna().sum()),
        "mean_b": b.mean(),
        "sd_b": b.std(),
        **welch(a, b),
        "cohens_d": cohens_d(a, b),
        **permutation(a, b, seed=seed),
    }


def method_pairs(methods: Iterable[str]) -> list[tuple[str, str]]:
    """The pairs of the study's methods it compares, in method order (Full FT, LoRA, ...): (a, b)
    asks what b does compared with a. Every method against Full FT and LoRA (the reference pair,
    whichever the study has), and those two against each other; every pair in a study with neither."""
    ordered = method_order(methods)
    pairs = list(itertools.combinations(ordered, 2))
    references = set(REFERENCE_PAIR) & set(ordered)
    return [(a, b) for a, b in pairs if not references or {a, b} & references]


def comparison_pairs(methods: Iterable[str], bases: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """The questions a study asks: every pair of its plain methods, and each variant against the
    plain method it builds on (``bases``: method or variant name → its method; a variant whose
    method is not in the study is compared with nothing)."""
    methods, bases = list(methods), bases or {}
    plain = [m for m in methods if bases.get(m, m) == m]
    variants = [(bases[m], m) for m in method_order(methods) if bases.get(m, m) != m and bases[m] in plain]
    return method_pairs(plain) + variants


def comparisons(
    runs: pd.DataFrame,
    metrics: Iterable[str] | None = None,
    pairs: Iterable[tuple[str, str]] | None = None,
    alpha: float = 0.05,
    seed: int = 0,
) -> pd.DataFrame:
    """Per method pair, dataset, lr and metric: method b vs method a over seeds (``pairs``:
    every pair of the study's methods unless given; e.g. LoRA vs Full FT), with Cohen's d.

    ``diff`` is mean_b − mean_a with Welch's 95% interval; ``p_welch`` and ``p_perm`` (exact
    permutation where feasible) are Holm-adjusted within each metric across the whole grid of
    (pair, dataset, lr) comparisons — one family per question asked. Diverged runs are left out.
    ``metrics``: those :mod:`clipdrift.analysis.names` marks as compared, unless given.
    """
    metrics = list(compared_metrics() if metrics is None else metrics)
    ok = runs[~runs["diverged"]]
    rows = []
    for method_a, method_b in method_pairs(runs["method"]) if pairs is None else pairs:
        for (dataset, lr), group in ok.groupby(["dataset", "lr"], sort=False):
            arm_a, arm_b = group[group["method"] == method_a], group[group["method"] == method_b]
            if arm_a.empty or arm_b.empty:
                continue  # not a matched comparison at this rate
            for metric in present(runs, metrics):
                row = {"dataset": dataset, "lr": lr, "metric": metric, "method_a": method_a, "method_b": method_b}
                rows.append(row | _comparison_row(arm_a[metric].dropna(), arm_b[metric].dropna(), seed))
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    for p in ("p_welch", "p_perm"):
        table[f"{p}_holm"] = table.groupby("metric")[p].transform(holm)
        table[f"reject_{p}_holm"] = table[f"{p}_holm"] < alpha
    table["family_size"] = table.groupby("metric")["p_welch"].transform("count").astype(int)
    # one block per metric (one Holm family), in the order asked for, then the grid
    rank = {m: i for i, m in enumerate(dict.fromkeys(metrics))}
    table = sort_grid(table).assign(_rank=lambda t: t["metric"].map(rank))
    return table.sort_values("_rank", kind="stable").drop(columns="_rank").reset_index(drop=True)


def correlations(runs: pd.DataFrame, pairs: Iterable[tuple[str, str]] = CORRELATION_PAIRS) -> pd.DataFrame:
    """Per dataset and (x, y) pair, across all non-diverged runs of both methods: Pearson r with
    its 95% interval and Spearman ρ."""
    ok = runs[~runs["diverged"]]
    rows = [
        {"dataset": dataset, "x": x, "y": y, **correlation(group[x], group[y])}
        for dataset, group in ok.groupby("dataset", sort=True)
        for x, y in pairs
        if x in runs and y in runs
    ]
    return pd.DataFrame(rows)
