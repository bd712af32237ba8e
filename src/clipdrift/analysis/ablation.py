"""Is drift causal? The regularised variants (APR, entropy floor) against plain Full FT, read from
the numbers: at each matched learning rate, does pinning the attention keep more zero-shot at the
*same in-domain accuracy* (the frontier's matching: the variant's end point against Full FT's
weight interpolation at that accuracy, :func:`clipdrift.analysis.frontier.matched_accuracy`), and
did it pin the attention at all (its entropy drift against Full FT's, Welch)?"""

from __future__ import annotations

import pandas as pd

from clipdrift.analysis.compare import comparisons
from clipdrift.analysis.frontier import matched_accuracy
from clipdrift.analysis.tables import lr_order
from clipdrift.analysis.wording import finding, points

PLAIN = "full"


def regularised_variants(variants: dict[str, dict] | None) -> list[str]:
    """The variants of Full FT that carry an attention regulariser (``variants``: name → its
    methods: entry, as :func:`clipdrift.pipeline.plan.method_entries` gives it)."""
    return [name for name, entry in (variants or {}).items()
            if entry.get("method") == PLAIN and entry.get("regulariser") and name != PLAIN]


def regulariser_rows(curves: pd.DataFrame, runs: pd.DataFrame, variant: str, alpha: float = 0.05,
                     family: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per dataset and matched rate: zero-shot at matched in-domain accuracy (variant minus Full FT,
    Welch interval over seeds) beside the entropy drift of both (the Welch p of the difference,
    Holm-adjusted within ``family``: the study's comparisons table, or this pair's own)."""
    matched = matched_accuracy(curves, (PLAIN, variant))
    family = comparisons(runs, metrics=["drift_entropy_pct"], pairs=[(PLAIN, variant)], alpha=alpha) \
        if family is None else family
    if matched.empty or family.empty:
        return pd.DataFrame()
    drift = family[(family["method_a"] == PLAIN) & (family["method_b"] == variant)
                   & (family["metric"] == "drift_entropy_pct")]
    drift = drift[["dataset", "lr", "mean_a", "mean_b", "p_welch_holm"]].rename(
        columns={"mean_a": "drift_plain", "mean_b": "drift_variant", "p_welch_holm": "p_drift"})
    rows = matched.merge(drift, on=["dataset", "lr"], how="left")
    rows["pins_attention"] = (rows["drift_variant"].abs() < rows["drift_plain"].abs()) & (rows["p_drift"] < alpha)
    rows["keeps_transfer"] = rows["diff_ci_low"] > 0
    return rows


def _verdict(rows: pd.DataFrame, variant: str) -> str:
    pinned = rows[rows["pins_attention"]]
    if pinned.empty:
        return (f"{variant} did not measurably pin the attention (no rate with a smaller entropy drift, Holm-adjusted "
                "Welch p < 0.05)")
    kept = int(pinned["keeps_transfer"].sum())
    if kept == len(pinned):
        return f"where {variant} pinned the attention ({len(pinned)} rate(s)) it also kept more transfer: it pinned both"
    if kept == 0:
        return (f"{variant} pinned the attention at {len(pinned)} rate(s) but kept no more transfer at matched "
                "accuracy there: it pinned only the attention")
    return f"{variant} pinned the attention at {len(pinned)} rate(s) and kept more transfer at {kept} of them"


def _interval(row) -> str:
    if pd.isna(row.diff_ci_low):  # too few Full FT seeds reach the variant's accuracy for an interval
        return f"no interval: {row.n_a_reaching} of {row.n_a} Full FT seeds reach that accuracy"
    return f"95% CI {points(row.diff_ci_low)} to {points(row.diff_ci_high)}"


def regulariser_findings(curves: pd.DataFrame | None, runs: pd.DataFrame, variants: dict[str, dict] | None,
                         alpha: float = 0.05, family: pd.DataFrame | None = None) -> list[dict]:
    """One finding per dataset and regularised variant (kind ``regulariser``), from the numbers."""
    if curves is None or curves.empty or PLAIN not in set(runs["method"]):
        return []
    found = []
    for variant in regularised_variants(variants):
        table = regulariser_rows(curves, runs, variant, alpha, family)
        for dataset, rows in (table.groupby("dataset", sort=True) if not table.empty else []):
            rows = rows.set_index("lr").loc[lr_order(rows["lr"])].reset_index()
            parts = [f"at {r.lr}: {points(r.diff)} points zero-shot at {100 * r.indomain_acc:.1f}% in-domain "
                     f"({_interval(r)}), entropy drift {r.drift_variant:+.2f}% vs {r.drift_plain:+.2f}%"
                     for r in rows.itertuples()]
            sentence = (f"On {dataset}, {variant} against Full FT at matched in-domain accuracy — " + "; ".join(parts)
                        + f". So {_verdict(rows, variant)}.")
            found.append(finding("regulariser", dataset, sentence, variant=variant, rates=len(rows),
                                 pins_attention=int(rows["pins_attention"].sum()),
                                 keeps_transfer=int(rows["keeps_transfer"].sum()),
                                 diff={r.lr: float(r.diff) for r in rows.itertuples()}))
    return found
