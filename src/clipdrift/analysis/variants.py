"""Every variant family against the method it builds on: what each variant changes in in-domain
accuracy, zero-shot transfer and attention drift at every matched learning rate, read from the
study's comparisons table (Welch over seeds, Holm-adjusted within each metric over every
comparison the study makes), so that no ablation goes without a finding.

Families, by what a variant sets (:func:`variant_family`): the attention regularisers, frozen
blocks, LoRA's rank and targets, weight decay; anything else is "other".
"""

from __future__ import annotations

import pandas as pd

from clipdrift.analysis.names import metric_words
from clipdrift.analysis.tables import lr_order, method_label, method_order
from clipdrift.analysis.wording import finding, p_text, points
from clipdrift.model.methods import METHODS

FAMILIES = ("attention regularisers", "frozen blocks", "LoRA rank and targets", "weight decay", "other")
# What each variant is compared on, and whether it is a share (accuracies: in points) or a drift (in %)
MEASURES = (("best_select_acc", True), ("zs_top1", True), ("drift_entropy_pct", False))


def variant_family(entry: dict) -> str:
    """The family of a variant's ``methods:`` entry (as :func:`clipdrift.pipeline.plan.method_entries` gives it)."""
    if entry.get("regulariser"):
        return FAMILIES[0]
    if entry.get("freeze_blocks") or entry.get("freeze_embeddings"):
        return FAMILIES[1]
    if any(entry.get(method.config_section) for method in METHODS.values() if method.adapter):
        return FAMILIES[2]
    if "weight_decay" in entry.get("training", {}):
        return FAMILIES[3]
    return FAMILIES[4]


def family_findings(stats: pd.DataFrame, variants: dict[str, dict] | None, alpha: float = 0.05) -> list[dict]:
    """One finding per dataset and variant family (kind ``variant_family``): each variant against
    its base at every matched rate, for every measure, with the comparisons table's Holm-adjusted p."""
    members: dict[str, list[str]] = {}
    for name, entry in (variants or {}).items():
        if entry.get("method", name) != name:
            members.setdefault(variant_family(entry), []).append(name)
    if stats is None or stats.empty or not members:
        return []
    found = []
    for family in FAMILIES:
        for dataset in sorted(stats["dataset"].unique()):
            rows = stats[(stats["dataset"] == dataset) & stats["method_b"].isin(members.get(family, []))]
            if rows.empty:
                continue
            parts, values = [], {}
            for variant in method_order(rows["method_b"].unique()):
                text, values[variant] = _variant_text(rows[rows["method_b"] == variant], alpha)
                base = rows.loc[rows["method_b"] == variant, "method_a"].iloc[0]
                parts.append(f"{variant} against {method_label(base)}: {text}")
            sentence = (f"On {dataset}, {family} (b − a over seeds; Holm-adjusted Welch p within each measure over the "
                        f"study's comparisons, * below {alpha}) — " + "; ".join(parts) + ".")
            found.append(finding("variant_family", dataset, sentence, family=family, variants=values))
    return found


def _variant_text(rows: pd.DataFrame, alpha: float) -> tuple[str, dict]:
    per_rate, values = [], {}
    for lr in lr_order(rows["lr"]):
        at_rate, measures = rows[rows["lr"] == lr], []
        for metric, share in MEASURES:
            name = metric_words(metric)
            test = at_rate[at_rate["metric"] == metric]
            if test.empty:
                continue
            test = test.iloc[0]
            diff = points(test["diff"]) + " points" if share else f"{test['diff']:+.2f} points"  # both in % points
            mark = "*" if test["p_welch_holm"] < alpha else ""
            measures.append(f"{name} {diff} ({p_text(test['p_welch_holm'])}){mark}")
            values.setdefault(lr, {})[metric] = {"diff": test["diff"], "p_welch_holm": test["p_welch_holm"]}
        per_rate.append(f"at {lr} " + ", ".join(measures))
    return "; ".join(per_rate), values
