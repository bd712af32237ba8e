"""The frontier and trajectory analyses on curves with known answers."""

import math

import numpy as np
import pandas as pd
import pytest

from clipdrift.analysis.frontier import (
    first_crossing,
    frontier_findings,
    half_pretrained_epochs,
    matched_accuracy,
    trajectory_findings,
)


def test_first_crossing_interpolates_linearly_on_the_first_segment_that_reaches_the_target():
    x, y = np.array([0.2, 0.6, 0.9, 0.7]), np.array([0.8, 0.6, 0.2, 0.3])
    assert first_crossing(x, y, 0.4) == pytest.approx(0.7)  # halfway along the first segment
    assert first_crossing(x, y, 0.8) == pytest.approx(0.6 - (0.2 / 0.3) * 0.4)  # the second segment, not the third
    assert math.isnan(first_crossing(x, y, 0.95))  # never reached


def _curves():
    """Full FT interpolates linearly from (0.30, 0.60) to (0.90, 0.10) in-domain/zero-shot; LoRA
    ends at (0.60, 0.50). At x* = 0.60 Full FT's interpolation keeps 0.35: LoRA keeps 0.15 more."""
    rows = []
    for seed, wobble in ((1, -0.01), (2, 0.01)):
        for alpha in (0.0, 0.5, 1.0):
            x, y = 0.30 + 0.60 * alpha, 0.60 - 0.50 * alpha + wobble
            rows.append(dict(dataset="d", method="full", lr="1e-03", seed=seed, kind="alpha", point=alpha,
                             indomain_acc=x, zs_top1=y, drift_entropy_pct=-alpha, drift_erf_pct=-alpha))
            rows.append(dict(dataset="d", method="lora", lr="1e-03", seed=seed, kind="alpha", point=alpha,
                             indomain_acc=0.30 + 0.30 * alpha, zs_top1=0.60 - 0.10 * alpha + wobble,
                             drift_entropy_pct=0.0, drift_erf_pct=0.0))
        for epoch, zs in ((1, 0.5), (2, 0.29), (3, 0.1)):
            rows.append(dict(dataset="d", method="full", lr="1e-03", seed=seed, kind="epoch", point=float(epoch),
                             indomain_acc=0.9, zs_top1=zs + wobble, drift_entropy_pct=-1.0, drift_erf_pct=-1.0))
    return pd.DataFrame(rows)


def test_at_loras_end_point_the_interpolated_full_ft_is_read_off_its_curve():
    matched = matched_accuracy(_curves()).iloc[0]
    assert matched["indomain_acc"] == pytest.approx(0.60)
    assert matched["zs_b_end"] == pytest.approx(0.50) and matched["zs_a_at_match"] == pytest.approx(0.35)
    assert matched["diff"] == pytest.approx(0.15) and matched["n_a_reaching"] == 2
    assert matched["diff_ci_low"] < 0.15 < matched["diff_ci_high"] and not matched["a_reaches_b"]
    sentence = frontier_findings(_curves())[0]["sentence"]
    assert "at 0 of 1 matched learning rates" in sentence and "keeps 35.0%" in sentence and "+15.0 points" in sentence


def test_the_epoch_full_ft_falls_below_half_the_pretrained_zero_shot():
    epochs = half_pretrained_epochs(_curves(), pretrained_zs=0.6).iloc[0]
    assert epochs["epoch"] == 2.0 and epochs["last_epoch"] == 3.0  # 0.29 < 0.30 at epoch 2
    assert trajectory_findings(_curves(), 0.6)[0]["sentence"].endswith("falls below half the pretrained 60.0% "
                                                                        "at lr 1e-03 by epoch 2.")
    assert math.isnan(half_pretrained_epochs(_curves(), pretrained_zs=0.1).iloc[0]["epoch"])  # never
    # below half at the first epoch measured: it fell there or before, which "by epoch 1" would not say
    assert trajectory_findings(_curves(), 1.2)[0]["sentence"].endswith("at lr 1e-03 already at epoch 1, the first "
                                                                        "measured.")
