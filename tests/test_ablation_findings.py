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


def runs(variant_drift: tuple[float, float]) -> pd.DataFrame:
    rows = [{"dataset": "d", "method": method, "lr": "1e-03", "lr_value": 1e-3, "seed": seed, "diverged": False,
             "drift_entropy_pct": drift}
            for method, drifts in (("full", (-5.0, -5.2)), (VARIANT, variant_drift)) for seed, drift in zip((1, 2), drifts)]
    return pd.DataFrame(rows)


def test_only_regularised_full_ft_variants_ask_the_question():
    assert regularised_variants(VARIANTS) == [VARIANT]
    assert regularised_variants(None) == []


def test_a_regulariser_that_pins_the_attention_and_keeps_more_transfer_pins_both():
    row = regulariser_rows(curves(), runs((-0.1, 0.1)), VARIANT).iloc[0]
    assert row["diff"] == pytest.approx(0.15) and row["diff_ci_low"] > 0 and row["keeps_transfer"]
    assert row["drift_plain"] == pytest.approx(-5.1) and row["drift_variant"] == pytest.approx(0.0)
    assert row["pins_attention"]
    finding = regulariser_findings(curves(), runs((-0.1, 0.1)), VARIANTS)[0]
    assert finding["kind"] == "regulariser" and finding["values"]["pins_attention"] == 1
    assert "at 1e-03: +15.0 points zero-shot at 60.0% in-domain (95% CI +" in finding["sentence"]
    assert finding["sentence"].endswith(f"where {VARIANT} pinned the attention (1 rate(s)) it also kept more "
                                        "transfer: it pinned both.")


def test_a_regulariser_that_pins_only_the_attention_is_called_so():
    finding = regulariser_findings(curves(variant_end_zs=0.35), runs((-0.1, 0.1)), VARIANTS)[0]
    assert finding["values"]["keeps_transfer"] == 0 and finding["values"]["pins_attention"] == 1
    assert finding["sentence"].endswith("kept no more transfer at matched accuracy there: it pinned only the attention.")


def test_a_regulariser_that_does_not_change_the_drift_is_called_so():
    finding = regulariser_findings(curves(), runs((-5.1, -5.0)), VARIANTS)[0]
    assert finding["sentence"].endswith(f"So {VARIANT} did not measurably pin the attention (no rate with a smaller "
                                        "entropy drift, Holm-adjusted Welch p < 0.05).")


def test_no_finding_without_curves_or_without_plain_full_ft():
    assert regulariser_findings(None, runs((0.0, 0.1)), VARIANTS) == []
    assert regulariser_findings(curves(), runs((0.0, 0.1)).query("method != 'full'"), VARIANTS) == []


def test_a_rate_where_too_few_full_ft_seeds_reach_the_accuracy_says_so():
    frame = curves()
    frame.loc[(frame["method"] == "full") & (frame["seed"] == 2), "indomain_acc"] -= 0.5  # seed 2 never gets there
    finding = regulariser_findings(frame, runs((-0.1, 0.1)), VARIANTS)[0]
    assert "(no interval: 1 of 2 Full FT seeds reach that accuracy)" in finding["sentence"]
