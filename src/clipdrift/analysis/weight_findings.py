"""What the weight-space drift says, in sentences carrying their numbers: how many directions
each method's changes take (rank-90 of ΔW), how many intruder dimensions they grow and where,
against what random directions would count; whether intruders go with forgetting and with the
attention's drift across runs; whether two methods' changes share directions beyond what two
seeds of one method share (the noise floor); and whether removing the intruders gives the
transfer back better than removing as much change uniformly."""

from __future__ import annotations

import pandas as pd

from clipdrift.analysis.names import DM_SLOPE
from clipdrift.analysis.tables import method_label, method_order
from clipdrift.analysis.wording import finding, p_text, small
from clipdrift.model.weights import PROJECTION_LAYER


def weight_findings(tables: dict[str, pd.DataFrame], alpha: float = 0.05) -> list[dict]:
    """Per dataset: :func:`change_rank`, :func:`intruder_sites`, :func:`intruder_relations`,
    :func:`shared_directions` and :func:`intervention_findings`; none where the study did not
    measure the weight-space drift."""
    runs = tables["runs"]
    if "weight_rank90" not in runs or runs["weight_rank90"].isna().all():
        return []
    intervened = intervention_findings(tables.get("intervention_effects"))
    ok = runs[~runs["diverged"]]
    out = []
    for dataset in sorted(ok["dataset"].unique()):
        part = ok[ok["dataset"] == dataset]
        out += [change_rank(part, dataset), magnitude_direction_signs(part, dataset),
                intruder_sites(part, tables["weight_layers"], tables["stats"], dataset, alpha),
                intruder_relations(tables["correlations"], dataset),
                shared_directions(tables["weight_overlap"], dataset)]
        out += [f for f in intervened if f["dataset"] == dataset]
    return [f for f in out if f is not None]


def _spread(values: pd.Series) -> str:
    return f"{values.median():g} (range {values.min():g}–{values.max():g})"


def change_rank(runs: pd.DataFrame, dataset: str) -> dict | None:
    """The rank-90 of each method's changes: the median over its runs of their median matrix."""
    methods = method_order(runs["method"])
    per_method = {m: runs.loc[runs["method"] == m, "weight_rank90"].dropna() for m in methods}
    parts = [f"{method_label(m)}'s {_spread(v)}" for m, v in per_method.items() if not v.empty]
    if not parts:
        return None
    return finding("weight_rank", dataset,
                   f"On {dataset}, the fine-tuned matrices' changes need a median rank-90 (the fewest singular "
                   f"directions holding 90% of a change's energy; per run, the median over the matrices it changed) "
                   f"of {'; '.join(parts)} over the runs.",
                   rank90={m: {"median": v.median(), "min": v.min(), "max": v.max(), "n": len(v)}
                           for m, v in per_method.items() if not v.empty})


def magnitude_direction_signs(runs: pd.DataFrame, dataset: str) -> dict | None:
    """How each method moves magnitude against direction through training: the sign of each run's
    ΔM–ΔD slope over its query matrices (DoRA's view), counted per method."""
    if DM_SLOPE not in runs or runs[DM_SLOPE].isna().all():
        return None
    values, parts = {}, []
    for method in method_order(runs["method"]):
        slopes = runs.loc[runs["method"] == method, DM_SLOPE].dropna()
        if slopes.empty:
            continue
        negative = int((slopes < 0).sum())
        values[method] = {"negative": negative, "n": len(slopes), "median": slopes.median()}
        parts.append(f"{negative} of {len(slopes)} {method_label(method)} runs (median slope {slopes.median():+.2g})")
    return finding("weight_magnitude_direction", dataset,
                   f"On {dataset}, the magnitude change ΔM falls as the direction change ΔD grows (a negative "
                   f"slope over every layer's query matrix through training) in {' and '.join(parts)}. Liu et al. "
                   "(DoRA, 2024) found the sign negative for Full FT and positive for LoRA.", methods=values)


def _site(layer: int, matrix: str) -> str:
    return "the visual projection" if layer == PROJECTION_LAYER else f"block {layer + 1}'s {matrix}"


def intruder_sites(runs, layers: pd.DataFrame, stats: pd.DataFrame, dataset: str, alpha: float) -> dict | None:
    """Each method's intruder dimensions per tower (against random directions), the matrix where
    it grows most, and how many matched cells the methods differ in after Holm."""
    parts, values = [], {}
    for method in method_order(runs["method"]):
        mine = runs[runs["method"] == method]
        count, chance = mine["weight_intruders"].mean(), mine["weight_random_intruders"].mean()
        cells = layers[(layers["dataset"] == dataset) & (layers["method"] == method)]
        sites = cells.groupby(["layer", "matrix"])["intruders_mean"].mean().sort_values(ascending=False)
        where = (f", most in {_site(*sites.index[0])} ({sites.iloc[0]:.1f} per run)"
                 if not sites.empty and sites.iloc[0] > 0 else "")
        parts.append(f"{method_label(method)} {count:.1f}{where}")
        values[method] = {"intruders": count, "random": chance,
                          "top_site": list(sites.index[0]) if not sites.empty and sites.iloc[0] > 0 else None}
    chance = runs["weight_random_intruders"].mean()
    tested = stats[(stats["dataset"] == dataset) & (stats["metric"] == "weight_intruders")] if not stats.empty else stats
    differ = int((tested["p_perm_holm"] < alpha).sum()) if not tested.empty else 0
    test = (f" The methods differ in intruders at {differ} of {len(tested)} matched comparisons (Holm-adjusted "
            f"permutation p < {alpha:g})." if len(tested) else "")
    most = max(v["intruders"] for v in values.values())
    reading = ("at these dimensions chance alone counts as many, so the count does not separate the methods: read "
               "their energy share and the comparison between methods" if chance >= most else
               "fewer than the fine-tuned matrices grow")
    return finding("weight_intruders", dataset,
                   f"On {dataset}, intruder dimensions per tower (mean over runs): {'; '.join(parts)}. As many "
                   f"random directions would count {chance:.1f}: {reading}.{test}",
                   methods=values, random=chance, comparisons=len(tested), differ=differ)


def intruder_relations(correlations: pd.DataFrame, dataset: str) -> dict | None:
    """Across a dataset's runs: intruders against zero-shot retention and against entropy drift."""
    if correlations.empty:
        return None
    rows = correlations[(correlations["dataset"] == dataset) & (correlations["x"] == "weight_intruders")]
    rows = rows[rows["y"].isin(["zs_retention", "drift_entropy_pct"])].set_index("y")
    if rows.empty:
        return None
    words = {"zs_retention": "zero-shot retention", "drift_entropy_pct": "the CLS-attention entropy drift"}
    parts = [f"with {words[y]} at Pearson r = {small(row.pearson_r)} (95% CI {small(row.pearson_ci_low)} to "
             f"{small(row.pearson_ci_high)}, {p_text(row.pearson_p)}; Spearman ρ = {small(row.spearman_rho)})"
             for y, row in rows.iterrows()]
    n = int(rows["n"].max())
    return finding("weight_intruder_relations", dataset,
                   f"Across the {n} runs on {dataset}, a run's intruder dimensions correlate {' and '.join(parts)}.",
                   **{y: {"r": row.pearson_r, "p": row.pearson_p, "rho": row.spearman_rho, "n": int(row.n)}
                      for y, row in rows.iterrows()})


def shared_directions(overlap: pd.DataFrame, dataset: str) -> dict | None:
    """The seed-to-seed overlap of each cell's changes (the noise floor) against the overlap of
    two methods' changes at the same rate."""
    part = overlap[(overlap["dataset"] == dataset) & (overlap["seeds"] == "different")] if not overlap.empty else overlap
    seeds, methods = part[part["kind"] == "seeds"], part[part["kind"] == "methods"]
    if seeds.empty or methods.empty:
        return None
    floor = seeds.set_index(["method_a", "lr_a"])["overlap_mean"]
    below = [row for row in methods.itertuples()
             if row.overlap_mean < min(floor.get((row.method_a, row.lr_a), 1), floor.get((row.method_b, row.lr_b), 1))]
    return finding("weight_overlap", dataset,
                   f"On {dataset}, two seeds of one method at one rate share {seeds['overlap_mean'].mean():.2f} of "
                   f"their top change directions (mean over cells; random subspaces {part['chance'].mean():.2f}); "
                   f"two methods at the same rate share {methods['overlap_mean'].mean():.2f}, below both methods' "
                   f"seed floor in {len(below)} of {len(methods)} pairs: "
                   + ("the methods change the weights along different directions." if len(below) == len(methods)
                      else "where not below it, the methods' directions are no more different than two seeds'."),
                   seed_floor=seeds["overlap_mean"].mean(), between_methods=methods["overlap_mean"].mean(),
                   chance=part["chance"].mean(), below_floor=len(below), pairs=len(methods))


def intervention_findings(effects: pd.DataFrame) -> list[dict]:
    """Per dataset, at the smallest share of intruders kept: in every cell, the zero-shot top-1
    removing the intruders gave back beyond removing as much change uniformly (per-run pairs,
    mean over seeds with its interval), and the in-domain accuracy it cost beyond the control's."""
    if effects is None or effects.empty:
        return []
    out = []
    for dataset, part in effects.groupby("dataset", sort=True):
        lowest = part[part["keep"] == part["keep"].min()]
        above = int((lowest["zs_gain_ci_low"] > 0).sum())
        below = int((lowest["zs_gain_ci_high"] < 0).sum())
        cells = "; ".join(f"{method_label(r.method)} at {r.lr} {100 * r.zs_gain_mean:+.1f} "
                          f"[{100 * r.zs_gain_ci_low:+.1f}, {100 * r.zs_gain_ci_high:+.1f}]"
                          for r in lowest.itertuples())
        verdict = ("removing intruders gives back more transfer than removing as much change at random"
                   if above and not below else
                   "removing intruders gives back less transfer than removing as much change at random" if below and
                   not above else "removing intruders is no better than removing as much change at random"
                   if not above and not below else "which gives back more depends on the method and rate")
        keep = float(lowest["keep"].iloc[0])
        removed = ("removing every intruder component (λ = 0)" if keep == 0 else
                   f"keeping a share λ = {keep:g} of the intruder components")
        out.append(finding(
            "weight_intervention", dataset,
            f"On {dataset}, {removed} instead of shrinking each matrix's change uniformly to the same distance "
            f"from the pretrained weights changed zero-shot top-1 by (points, mean over seeds [95% bootstrap "
            f"interval]): {cells}. The interval lies above 0 in {above} and below 0 in {below} of {len(lowest)} "
            f"cells: {verdict}. In-domain accuracy moved {100 * lowest['indomain_gain_mean'].mean():+.1f} points "
            "against the control on average.",
            keep=keep, above=above, below=below, cells=len(lowest),
            gains={f"{r.method}/{r.lr}": {"zs_gain": r.zs_gain_mean, "ci_low": r.zs_gain_ci_low,
                                          "ci_high": r.zs_gain_ci_high, "indomain_gain": r.indomain_gain_mean,
                                          "n": int(r.n)} for r in lowest.itertuples()}))
    return out
