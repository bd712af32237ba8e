"""Every method against Full FT on the robustness frontier: which keeps the most zero-shot
transfer at the in-domain accuracy it reaches, and at what cost in trainable parameters and
training speed.

Per dataset, method and matched learning rate, the frontier's matching
(:func:`clipdrift.analysis.frontier.matched_accuracy`): the method's end point (mean in-domain
accuracy over its seeds, x*) against Full FT's weight interpolation at x*; ``zs_kept`` is the
method's zero-shot there minus Full FT's (positive: it keeps more than Full FT does at the same
accuracy). A method more accurate than every Full FT interpolation reaches has no match at that
rate. Per dataset and method, the mean over its matched rates ranks the methods (Full FT itself
is the zero every other method is measured from); its trainable parameters and images per
second stand beside it. Pure functions of the curves and run tables.
"""

from __future__ import annotations

import pandas as pd

from clipdrift.analysis.frontier import matched_accuracy
from clipdrift.analysis.tables import lr_order, method_label, method_order
from clipdrift.analysis.wording import finding, points
from clipdrift.model.methods import REFERENCE_PAIR

REFERENCE = REFERENCE_PAIR[0]  # Full FT: the interpolation every method is matched on
COSTS = ("trainable_params", "images_per_s")


def matched_transfer(curves: pd.DataFrame, methods) -> pd.DataFrame:
    """Per dataset, method (other than Full FT) and matched rate: its end point against Full FT's
    interpolation at its in-domain accuracy (``matched_accuracy``'s columns, ``method`` naming
    the method and ``zs_kept`` its difference)."""
    frames = [matched_accuracy(curves, (REFERENCE, method)) for method in method_order(methods) if method != REFERENCE]
    frames = [frame for frame in frames if not frame.empty]
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True).rename(columns={"diff": "zs_kept"}).assign(
        method=lambda frame: frame["method_b"])


def method_ranking(curves: pd.DataFrame | None, runs: pd.DataFrame) -> pd.DataFrame:
    """Per dataset, one row per method, ranked by the zero-shot it keeps at matched in-domain
    accuracy (mean over the rates where Full FT's interpolation reaches it), with its mean
    in-domain accuracy and zero-shot, trainable parameters and images per second."""
    if curves is None or curves.empty or REFERENCE not in set(runs["method"]):
        return pd.DataFrame()
    matched = matched_transfer(curves, runs["method"].unique())
    ok = runs[~runs["diverged"]]
    rows = []
    for (dataset, method), group in ok.groupby(["dataset", "method"], sort=False):
        mine = matched[(matched["dataset"] == dataset) & (matched["method"] == method)] if not matched.empty else matched
        reached = mine[mine["n_a_reaching"] > 0] if not mine.empty else mine
        rows.append({
            "dataset": dataset, "method": method, "label": method_label(method),
            "zs_kept": 0.0 if method == REFERENCE else (reached["zs_kept"].mean() if len(reached) else float("nan")),
            "rates_matched": len(lr_order(group["lr"])) if method == REFERENCE else len(reached),
            "rates": len(lr_order(group["lr"])),
            "best_select_acc": group["best_select_acc"].mean(), "zs_top1": group["zs_top1"].mean(),
            **{cost: group[cost].median() for cost in COSTS if cost in group},
        })
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table["rank"] = table.groupby("dataset")["zs_kept"].rank(ascending=False, method="min", na_option="bottom")
    table["rank"] = table["rank"].astype(int)
    return table.sort_values(["dataset", "rank", "method"], kind="stable").reset_index(drop=True)


def ranking_findings(ranking: pd.DataFrame) -> list[dict]:
    """Per dataset: the methods in rank order with the zero-shot each keeps against Full FT at its
    own in-domain accuracy, and each one's trainable parameters."""
    found = []
    for dataset, rows in (ranking.groupby("dataset", sort=True) if not ranking.empty else []):
        ranked = rows[rows["method"] != REFERENCE]
        if ranked.empty:
            continue
        parts = [f"{row.rank}. {row.label} {_kept(row)}" for row in ranked.itertuples()]
        unmatched = ranked.loc[ranked["zs_kept"].isna(), "label"].tolist()
        sentence = (f"On {dataset}, zero-shot kept against Full FT's weight interpolation at the same in-domain accuracy "
                    f"(mean over the matched rates) ranks the methods " + "; ".join(parts) + "."
                    + (f" {', '.join(unmatched)} reach an accuracy no Full FT interpolation does: no match."
                       if unmatched else ""))
        found.append(finding("method_ranking", dataset, sentence,
                             kept={row.method: row.zs_kept for row in ranked.itertuples()}))
    return found


def _kept(row) -> str:
    if pd.isna(row.zs_kept):
        return "(no match)"
    params = f", {int(row.trainable_params):,} trainable" if "trainable_params" in row._fields else ""
    return f"{points(row.zs_kept)} points at {row.rates_matched}/{row.rates} rates{params}"
