"""Is drift causal? The regulariser findings, on curves and runs with known answers."""

import pandas as pd
import pytest

from clipdrift.analysis.ablation import regularised_variants, regulariser_findings, regulariser_rows

from test_frontier import _curves

VARIANT = "full-apr-0.1"
VARIANTS = {"full": {"method": "full"}, VARIANT: {"method": "full", "regulariser": {"kind": "apr", "weight": 0.1}},
            "lora-r4": {"method": "lora", "lora": {"r": 4}}}


def curves(variant_end_zs: float = 0.50) -> pd.DataFrame:
    """test_frontier's curves with LoRA as the regularised variant: Full FT's interpolation keeps
    0.35 zero-shot at the variant's end-point accuracy 0.60; the variant ends at ``variant_end_zs``."""
    frame = _curves().replace({"method": {"lora": VARIANT}})
    ends = (frame["method"] == VARIANT) & (frame["point"] == 1.0)
    frame.loc[ends, "zs_top1"] += variant_end_zs - 0.50
    return frame


def runs(variant_drift: tuple[float, float], variant_layers: tuple[float, float] | None = None) -> pd.DataFrame:
    """Two seeds each: Full FT's layer-mean entropy drift about -5% (8% RMS over layers), the
    variant's as given (its RMS the layer-mean's size unless given)."""
    layers = variant_layers or tuple(abs(d) for d in variant_drift)
    rows = [{"dataset": "d", "method": method, "lr": "1e-03", "lr_value": 1e-3, "seed": seed, "diverged": False,
             "drift_entropy_pct": drift, "drift_entropy_layers_pct": rms}
            for method, drifts, rmses in (("full", (-5.0, -5.2), (8.0, 8.2)), (VARIANT, variant_drift, layers))
            for seed, drift, rms in zip((1, 2), drifts, rmses)]
    return pd.DataFrame(rows)


def test_only_regularised_full_ft_variants_ask_the_question():
    assert regularised_variants(VARIANTS) == [VARIANT]
    assert regularised_variants(None) == []


def test_a_regulariser_that_pins_the_attention_and_keeps_more_transfer_pins_both():
    row = regulariser_rows(curves(), runs((-0.1, 0.1)), VARIANT).iloc[0]
    assert row["diff"] == pytest.approx(0.15) and row["diff_ci_low"] > 0 and row["transfer"] == "more"
    assert row["drift_plain"] == pytest.approx(-5.1) and row["drift_variant"] == pytest.approx(0.0)
    assert row["layers_plain"] == pytest.approx(8.1) and row["pins_attention"] and not row["sign_flip"]
    finding = regulariser_findings(curves(), runs((-0.1, 0.1)), VARIANTS)[0]
    assert finding["kind"] == "regulariser" and finding["values"]["pins_attention"] == 1
    assert "at 1e-03: +15.0 points zero-shot at 60.0% in-domain (95% CI +" in finding["sentence"]
    assert "per-layer entropy drift 0.10% vs 8.10% RMS (Holm-adjusted Welch p" in finding["sentence"]
    assert finding["sentence"].endswith(f"where {VARIANT} pinned the attention (1 rate(s)) it also kept more transfer.")


def test_a_regulariser_that_pins_only_the_attention_is_called_so():
    finding = regulariser_findings(curves(variant_end_zs=0.35), runs((-0.1, 0.1)), VARIANTS)[0]
    assert finding["values"]["keeps_transfer"] == 0 and finding["values"]["pins_attention"] == 1
    assert "(95% CI" in finding["sentence"] and ": no difference)" in finding["sentence"]
    assert finding["sentence"].endswith("pinned the attention at 1 rate(s) and kept more transfer at matched accuracy at "
                                        "0 of them.")


def test_a_regulariser_that_does_not_change_the_drift_is_called_so():
    finding = regulariser_findings(curves(), runs((-5.1, -5.0), (8.0, 8.1)), VARIANTS)[0]
    assert finding["sentence"].endswith(f"So {VARIANT} did not measurably pin the per-layer attention at a conclusive "
                                        "rate.")


def test_a_layer_mean_near_zero_that_hides_large_per_layer_drift_is_not_pinned():
    # +33 / -27 / +36 per layer average to about +14: a small layer mean, a large per-layer drift
    row = regulariser_rows(curves(), runs((0.3, 0.2), (32.0, 33.0)), VARIANT).iloc[0]
    assert not row["pins_attention"] and row["layers_variant"] > row["layers_plain"]


def test_a_sign_flip_is_named_and_not_called_pinned():
    row = regulariser_rows(curves(), runs((3.0, 3.2), (3.0, 3.2)), VARIANT).iloc[0]
    assert row["sign_flip"] and not row["pins_attention"]  # -5.1% pushed to +3.1%: smaller RMS, but the other way
    sentence = regulariser_findings(curves(), runs((3.0, 3.2), (3.0, 3.2)), VARIANTS)[0]["sentence"]
    assert "layer-mean +3.10% vs -5.10% (a sign flip)" in sentence
    assert "it flipped the layer-mean drift's sign at 1e-03" in sentence


def test_no_finding_without_curves_or_without_plain_full_ft():
    assert regulariser_findings(None, runs((0.0, 0.1)), VARIANTS) == []
    assert regulariser_findings(curves(), runs((0.0, 0.1)).query("method != 'full'"), VARIANTS) == []


def test_a_rate_where_too_few_full_ft_seeds_reach_the_accuracy_is_inconclusive_naming_the_seed():
    frame = curves()
    frame.loc[(frame["method"] == "full") & (frame["seed"] == 2), "indomain_acc"] -= 0.5  # seed 2 never gets there
    finding = regulariser_findings(frame, runs((-0.1, 0.1)), VARIANTS)[0]
    assert "inconclusive: 1 of 2 Full FT seeds (seed 1) reach its 60.0% in-domain accuracy" in finding["sentence"]
    assert finding["values"]["inconclusive"] == 1
    assert finding["sentence"].endswith("gives no conclusive answer: too few Full FT seeds reach its accuracy at any rate.")


def test_the_overall_answer_counts_the_conclusive_cells_and_says_what_zero_shot_tracks():
    correlations = pd.DataFrame([
        {"dataset": "d", "x": "drift_entropy_pct", "y": "zs_top1", "pearson_r": 0.41},
        {"dataset": "d", "x": "cka_mean", "y": "zs_top1", "pearson_r": 0.62},
        {"dataset": "d", "x": "best_select_acc", "y": "zs_top1", "pearson_r": -0.93},
    ])
    found = regulariser_findings(curves(variant_end_zs=0.35), runs((-0.1, 0.1)), VARIANTS, correlations=correlations)
    (overall,) = [f for f in found if f["kind"] == "causal"]
    assert overall["values"] == {"cells": 1, "conclusive": 1, "pinned": 1, "kept": 0}
    assert "pinning the attention bought no transfer at matched accuracy" in overall["sentence"]
    assert overall["sentence"].endswith("tracks in-domain accuracy most closely (Pearson in-domain accuracy r = -0.93, "
                                        "CKA r = +0.62, entropy drift r = +0.41).")
    undecided = regulariser_findings(curves(), runs((-5.1, -5.0), (8.0, 8.1)), VARIANTS)
    assert "so this study cannot say" in [f for f in undecided if f["kind"] == "causal"][0]["sentence"]


# ---- every variant family gets its finding ------------------------------------------------------


def test_every_variant_family_gets_a_finding_with_the_comparisons_tables_own_numbers():
    from clipdrift.analysis.compare import comparison_pairs, comparisons
    from clipdrift.analysis.variants import FAMILIES, family_findings, variant_family

    variants = {"full": {"method": "full"}, "lora": {"method": "lora"},
                "full-apr-0.1": {"method": "full", "regulariser": {"kind": "apr", "weight": 0.1}},
                "full-freeze2": {"method": "full", "freeze_blocks": 2},
                "lora-r4": {"method": "lora", "lora": {"r": 4, "alpha": 8}},
                "full-wd0": {"method": "full", "training": {"weight_decay": 0.0}}}
    assert [variant_family(variants[name]) for name in ("full-apr-0.1", "full-freeze2", "lora-r4", "full-wd0")] == \
        list(FAMILIES[:4])
    rows = []
    for method, zs in (("full", (0.10, 0.12, 0.11)), ("lora", (0.5, 0.52, 0.51)), ("full-apr-0.1", (0.11, 0.12, 0.10)),
                       ("full-freeze2", (0.45, 0.47, 0.46)), ("lora-r4", (0.5, 0.5, 0.52)), ("full-wd0", (0.1, 0.11, 0.12))):
        for seed, value in zip((1, 2, 3), zs):
            rows.append({"dataset": "d", "method": method, "lr": "1e-03", "seed": seed, "diverged": False,
                         "best_select_acc": 0.9, "zs_top1": value, "drift_entropy_pct": -5.0 + seed})
    runs = pd.DataFrame(rows)
    stats = comparisons(runs, pairs=comparison_pairs(runs["method"].unique(), {k: v["method"] for k, v in variants.items()}))
    found = family_findings(stats, variants)
    assert [f["values"]["family"] for f in found] == list(FAMILIES[:4])  # every family, in order
    (frozen,) = [f for f in found if f["values"]["family"] == "frozen blocks"]
    test = stats.query("method_b == 'full-freeze2' and metric == 'zs_top1'").iloc[0]
    assert frozen["values"]["variants"]["full-freeze2"]["1e-03"]["zs_top1"]["p_welch_holm"] == pytest.approx(
        test["p_welch_holm"])  # the comparisons table's own number, not another family's
    assert "full-freeze2 against Full FT: at 1e-03 selection accuracy +0.0 points" in frozen["sentence"]
    assert "zero-shot top-1 +35.0 points (p " in frozen["sentence"] and "*" in frozen["sentence"]
    assert family_findings(stats, {"full": {"method": "full"}}) == []
