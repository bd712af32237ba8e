"""Is drift causal? The regularised variants (APR, entropy floor) against plain Full FT, read from
the numbers, with "inconclusive" where they cannot tell.

Per variant, dataset and matched learning rate:

- **Transfer at matched accuracy** (the frontier's matching,
  :func:`clipdrift.analysis.frontier.matched_accuracy`): the variant's end point against Full FT's
  weight interpolation at the same in-domain accuracy, with a Welch interval over the Full FT
  seeds that reach that accuracy. A verdict (``more``, ``less``, ``no difference``) only where
  at least :data:`MIN_SEEDS_REACHING` of them do; otherwise ``inconclusive``, naming the seed a
  single-seed match rests on.
- **Pinned attention**, judged per layer: the variant's root-mean-square per-layer entropy drift
  (``drift_entropy_layers_pct``, which a layer mean can hide) smaller than Full FT's, Holm-adjusted
  Welch p < alpha in the study's comparisons table, and no sign flip of the layer-mean drift (a
  drift pushed from one side of zero to the other is named a sign flip, not pinned).

One overall finding per dataset then counts the conclusive cells and ties the answer to what
zero-shot tracks across the study's runs (its correlations with entropy drift, CKA and in-domain
accuracy), whichever way it falls.
"""

from __future__ import annotations

import pandas as pd

from clipdrift.analysis.compare import comparisons
from clipdrift.analysis.frontier import matched_accuracy
from clipdrift.analysis.tables import LAYER_DRIFT_METRIC, lr_order
from clipdrift.analysis.wording import finding, p_text, points
from clipdrift.model.methods import REFERENCE_PAIR

PLAIN = REFERENCE_PAIR[0]  # the method the regulariser variants change
MIN_SEEDS_REACHING = 2
FLIP_MIN_PCT = 0.5  # a layer-mean drift this close to zero has no sign worth naming
DRIFTS = {"drift_entropy_pct": "drift", LAYER_DRIFT_METRIC: "layers"}
# what zero-shot may track across the runs: the correlations table's x against zs_top1
TRACKED = {"drift_entropy_pct": "entropy drift", "cka_mean": "CKA", "best_select_acc": "in-domain accuracy"}


def regularised_variants(variants: dict[str, dict] | None) -> list[str]:
    """The variants of Full FT that carry an attention regulariser (``variants``: name → its
    methods: entry, as :func:`clipdrift.pipeline.plan.method_entries` gives it)."""
    return [name for name, entry in (variants or {}).items()
            if entry.get("method") == PLAIN and entry.get("regulariser") and name != PLAIN]


def regulariser_rows(curves: pd.DataFrame, runs: pd.DataFrame, variant: str, alpha: float = 0.05,
                     family: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per dataset and matched rate: the transfer at matched accuracy and the attention drifts of
    the variant and Full FT, each with its verdict (the module docstring). ``family``: the study's
    comparisons table, whose Holm-adjusted p-values the drift verdicts read (default: this pair's)."""
    matched = matched_accuracy(curves, (PLAIN, variant))
    metrics = [m for m in DRIFTS if m in runs]
    family = comparisons(runs, metrics=metrics, pairs=[(PLAIN, variant)], alpha=alpha) if family is None else family
    if matched.empty or family.empty:
        return pd.DataFrame()
    rows = matched
    for metric, name in DRIFTS.items():
        drift = family[(family["method_a"] == PLAIN) & (family["method_b"] == variant) & (family["metric"] == metric)]
        drift = drift[["dataset", "lr", "mean_a", "mean_b", "p_welch_holm"]].rename(
            columns={"mean_a": f"{name}_plain", "mean_b": f"{name}_variant", "p_welch_holm": f"p_{name}"})
        rows = rows.merge(drift, on=["dataset", "lr"], how="left")
    rows["transfer"] = [_transfer(row) for row in rows.itertuples()]
    rows["sign_flip"] = ((rows["drift_plain"].abs() >= FLIP_MIN_PCT) & (rows["drift_variant"].abs() >= FLIP_MIN_PCT)
                         & (rows["drift_plain"] * rows["drift_variant"] < 0))
    rows["pins_attention"] = ((rows["layers_variant"] < rows["layers_plain"]) & (rows["p_layers"] < alpha)
                              & ~rows["sign_flip"])
    rows["keeps_transfer"] = rows["transfer"] == "more"
    return rows


def _transfer(row) -> str:
    if row.n_a_reaching < MIN_SEEDS_REACHING or pd.isna(row.diff_ci_low):
        return "inconclusive"
    return "more" if row.diff_ci_low > 0 else "less" if row.diff_ci_high < 0 else "no difference"


def _rate_text(row) -> str:
    if row.transfer == "inconclusive":
        seeds = f" (seed {row.seeds_a_reaching})" if row.n_a_reaching == 1 else ""
        transfer = (f"inconclusive: {row.n_a_reaching} of {row.n_a} Full FT seeds{seeds} reach its "
                    f"{100 * row.indomain_acc:.1f}% in-domain accuracy")
    else:
        transfer = (f"{points(row.diff)} points zero-shot at {100 * row.indomain_acc:.1f}% in-domain "
                    f"(95% CI {points(row.diff_ci_low)} to {points(row.diff_ci_high)}: {row.transfer})")
    flip = " (a sign flip)" if row.sign_flip else ""
    return (f"at {row.lr}: {transfer}; per-layer entropy drift {row.layers_variant:.2f}% vs {row.layers_plain:.2f}% RMS "
            f"(Holm-adjusted Welch {p_text(row.p_layers)}), layer-mean {row.drift_variant:+.2f}% vs "
            f"{row.drift_plain:+.2f}%{flip}")


def _verdict(rows: pd.DataFrame, variant: str) -> str:
    conclusive = rows[rows["transfer"] != "inconclusive"]
    pinned = conclusive[conclusive["pins_attention"]]
    flips = rows[rows["sign_flip"]]["lr"].tolist()
    undecided = len(rows) - len(conclusive)
    inconclusive = f"; {undecided} of {len(rows)} rate(s) inconclusive" if undecided else ""
    flipped = f"; it flipped the layer-mean drift's sign at {', '.join(flips)}" if flips else ""
    if conclusive.empty:
        return f"{variant} gives no conclusive answer: too few Full FT seeds reach its accuracy at any rate{flipped}"
    if pinned.empty:
        return f"{variant} did not measurably pin the per-layer attention at a conclusive rate{flipped}{inconclusive}"
    kept = int(pinned["keeps_transfer"].sum())
    if kept == len(pinned):
        return (f"where {variant} pinned the attention ({len(pinned)} rate(s)) it also kept more transfer"
                f"{flipped}{inconclusive}")
    return (f"{variant} pinned the attention at {len(pinned)} rate(s) and kept more transfer at matched accuracy at "
            f"{kept} of them{flipped}{inconclusive}")


def regulariser_findings(curves: pd.DataFrame | None, runs: pd.DataFrame, variants: dict[str, dict] | None,
                         alpha: float = 0.05, family: pd.DataFrame | None = None,
                         correlations: pd.DataFrame | None = None) -> list[dict]:
    """One finding per dataset and regularised variant (kind ``regulariser``), then one overall
    answer per dataset (kind ``causal``), from the numbers."""
    if curves is None or curves.empty or PLAIN not in set(runs["method"]):
        return []
    found, cells = [], []
    for variant in regularised_variants(variants):
        table = regulariser_rows(curves, runs, variant, alpha, family)
        for dataset, rows in (table.groupby("dataset", sort=True) if not table.empty else []):
            rows = rows.set_index("lr").loc[lr_order(rows["lr"])].reset_index()
            cells.append(rows.assign(variant=variant))
            sentence = (f"On {dataset}, {variant} against Full FT at matched in-domain accuracy — "
                        + "; ".join(_rate_text(r) for r in rows.itertuples()) + f". So {_verdict(rows, variant)}.")
            found.append(finding("regulariser", dataset, sentence, variant=variant, rates=len(rows),
                                 pins_attention=int(rows["pins_attention"].sum()),
                                 keeps_transfer=int(rows["keeps_transfer"].sum()),
                                 inconclusive=int((rows["transfer"] == "inconclusive").sum()),
                                 sign_flips=int(rows["sign_flip"].sum()),
                                 diff={r.lr: float(r.diff) for r in rows.itertuples()}))
    if cells:
        found += overall_answer(pd.concat(cells, ignore_index=True), correlations)
    return found


def overall_answer(cells: pd.DataFrame, correlations: pd.DataFrame | None) -> list[dict]:
    """Per dataset: across every regularised variant and rate, what pinning the attention bought,
    and what zero-shot tracks across the study's runs."""
    out = []
    for dataset, rows in cells.groupby("dataset", sort=True):
        conclusive = rows[rows["transfer"] != "inconclusive"]
        pinned = conclusive[conclusive["pins_attention"]]
        kept = int(pinned["keeps_transfer"].sum())
        if pinned.empty:
            answer = "no regulariser pinned the per-layer attention at a conclusive rate, so this study cannot say"
        elif kept == 0:
            answer = ("pinning the attention bought no transfer at matched accuracy: here the drift goes with the "
                      "forgetting without causing it")
        else:
            answer = f"pinning the attention bought transfer at matched accuracy in {kept} of {len(pinned)} pinned cells"
        tracks = _tracks(correlations, dataset)
        sentence = (f"Is drift causal? On {dataset}, over {len(rows)} (regulariser, rate) cells: {len(conclusive)} "
                    f"conclusive, {len(pinned)} with the attention pinned, {kept} of those keeping more zero-shot — "
                    f"{answer}.{tracks}")
        out.append(finding("causal", dataset, sentence, cells=len(rows), conclusive=len(conclusive),
                           pinned=len(pinned), kept=kept))
    return out


def _tracks(correlations: pd.DataFrame | None, dataset: str) -> str:
    if correlations is None or correlations.empty:
        return ""
    rows = correlations[(correlations["dataset"] == dataset) & (correlations["y"] == "zs_top1")
                        & correlations["x"].isin(list(TRACKED))].dropna(subset=["pearson_r"])
    if rows.empty:
        return ""
    ranked = rows.assign(strength=rows["pearson_r"].abs()).sort_values("strength", ascending=False)
    parts = ", ".join(f"{TRACKED[r.x]} r = {r.pearson_r:+.2f}" for r in ranked.itertuples())
    return (f" Across the study's runs zero-shot top-1 tracks {TRACKED[ranked.iloc[0]['x']]} most closely "
            f"(Pearson {parts}).")
