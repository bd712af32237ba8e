"""The method ranking: each method's end point against Full FT's interpolation at its own
in-domain accuracy (known answers on straight-line curves), and the comparisons each method gets."""

import math

import pandas as pd
import pytest

from clipdrift.analysis.compare import method_pairs
from clipdrift.analysis.ranking import method_ranking, ranking_findings


def _curves():
    """Full FT's interpolation runs straight from (in-domain 0.2, zero-shot 0.5) to (0.9, 0.1) in
    both seeds; each other method is one end point (alpha 1) per seed."""
    rows = []
    for seed in (1, 2):
        for alpha in (0.0, 0.5, 1.0):
            rows.append(("full", seed, alpha, 0.2 + 0.7 * alpha, 0.5 - 0.4 * alpha))
        rows.append(("vera", seed, 1.0, 0.55, 0.40))  # Full FT has 0.3 there: +0.10
        rows.append(("ia3", seed, 1.0, 0.76, 0.13))  # Full FT has 0.18 there: -0.05
        rows.append(("bitfit", seed, 1.0, 0.95, 0.3))  # beyond every Full FT interpolation: no match
    frame = pd.DataFrame(rows, columns=["method", "seed", "point", "indomain_acc", "zs_top1"])
    return frame.assign(dataset="world", lr="1e-03", kind="alpha")


def _runs(curves):
    ends = curves[curves["point"] == 1.0]
    return ends.assign(diverged=False, best_select_acc=ends["indomain_acc"], trainable_params=ends["method"].map(
        {"full": 1000, "vera": 10, "ia3": 5, "bitfit": 50}), images_per_s=100.0)[
        ["dataset", "method", "lr", "seed", "diverged", "best_select_acc", "zs_top1", "trainable_params", "images_per_s"]]


def test_each_method_is_ranked_by_the_zero_shot_it_keeps_against_full_ft_at_its_own_accuracy():
    curves = _curves()
    ranking = method_ranking(curves, _runs(curves)).set_index("method")
    assert ranking.loc["vera", "zs_kept"] == pytest.approx(0.10)
    assert ranking.loc["ia3", "zs_kept"] == pytest.approx(-0.05)
    assert ranking.loc["full", "zs_kept"] == 0.0 and math.isnan(ranking.loc["bitfit", "zs_kept"])
    assert ranking["rank"].to_dict() == {"vera": 1, "full": 2, "ia3": 3, "bitfit": 4}
    assert ranking.loc["bitfit", "rates_matched"] == 0 and ranking.loc["vera", "trainable_params"] == 10
    [found] = ranking_findings(ranking.reset_index())
    assert "1. VeRA +10.0 points at 1/1 rates, 10 trainable; 3. (IA)³ -5.0 points" in found["sentence"]
    assert "BitFit reach an accuracy no Full FT interpolation does: no match" in found["sentence"]


def test_without_full_ft_or_curves_there_is_no_ranking():
    curves = _curves()
    runs = _runs(curves)
    assert method_ranking(None, runs).empty
    assert method_ranking(curves[curves["method"] != "full"], runs[runs["method"] != "full"]).empty


def test_every_method_is_compared_with_full_ft_and_lora_and_a_study_without_them_compares_every_pair():
    assert method_pairs(["vera", "lora", "full", "dora"]) == [("full", "lora"), ("full", "dora"), ("full", "vera"),
                                                              ("lora", "dora"), ("lora", "vera")]
    assert method_pairs(["full", "lora", "lp-ft"]) == [("full", "lora"), ("full", "lp-ft"), ("lora", "lp-ft")]
    assert method_pairs(["vera", "dora", "ia3"]) == [("dora", "vera"), ("dora", "ia3"), ("vera", "ia3")]
