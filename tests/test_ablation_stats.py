"""The ablation statistics: Cohen's d, the one-way ANOVA, which comparisons a study with variants
asks, and the layer-group analysis of per-layer drift."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from clipdrift.analysis.compare import comparison_pairs, comparisons
from clipdrift.analysis.layergroups import layer_group_of, layer_groups
from clipdrift.analysis.stats import cohens_d, one_way_anova
from clipdrift.analysis.tables import run_table

from fabricated_study import DIVERGED, fabricate, zeroshot_means


def test_cohens_d_by_hand():
    assert cohens_d([1, 2, 3], [4, 5, 6]) == pytest.approx(3.0)  # means 2 and 5, both SDs 1
    assert cohens_d([1, 2, 3, 4], [2, 4, 6, 8]) == pytest.approx(2.5 / math.sqrt((1.6667 + 6.6667) / 2), rel=1e-4)
    assert math.isnan(cohens_d([1], [2, 3])) and math.isnan(cohens_d([1, 1], [2, 2]))


def test_one_way_anova_by_hand():
    groups = [[1.0, 2.0, 3.0], [2.0, 3.0, 4.0], [5.0, 6.0, 7.0]]
    # grand mean 11/3; between SS = 3·((2−11/3)² + (3−11/3)² + (6−11/3)²) = 26, df 2; within SS = 6, df 6
    result = one_way_anova(groups)
    assert result["f"] == pytest.approx((26 / 2) / (6 / 6)) and result["n_groups"] == 3
    assert result["p_anova"] == pytest.approx(scipy_stats.f.sf(13.0, 2, 6))
    assert math.isnan(one_way_anova([[1.0], [2.0, 3.0]])["f"])


def test_variants_are_compared_with_their_own_method_and_plain_methods_with_each_other():
    bases = {"full": "full", "lora": "lora", "lp-ft": "lp-ft", "full-apr-0.1": "full", "lora-r4": "lora",
             "lp-ft-wd0": "lp-ft"}
    pairs = comparison_pairs(["full", "lora", "full-apr-0.1", "lora-r4", "lp-ft-wd0"], bases)
    assert pairs == [("full", "lora"), ("full", "full-apr-0.1"), ("lora", "lora-r4")]  # lp-ft itself is absent
    assert comparison_pairs(["full", "lora"]) == [("full", "lora")]


def test_the_comparisons_carry_cohens_d_of_the_same_arms():
    histories, zeroshot, _, _ = fabricate()
    runs = run_table(histories, zeroshot_means(zeroshot), None, None)
    table = comparisons(runs, metrics=["zs_top1"])
    row = table.iloc[0]
    arm = runs[(runs["dataset"] == row["dataset"]) & (runs["lr"] == row["lr"]) & ~runs["diverged"]]
    a = arm.loc[arm["method"] == row["method_a"], "zs_top1"]
    b = arm.loc[arm["method"] == row["method_b"], "zs_top1"]
    assert row["cohens_d"] == pytest.approx(cohens_d(a, b))


def test_layer_groups_are_consecutive_thirds():
    groups = layer_group_of(list(range(12)))
    assert [groups[i] for i in (0, 3, 4, 7, 8, 11)] == ["early", "early", "middle", "middle", "late", "late"]
    assert layer_group_of([0, 1, 2]) == {0: "early", 1: "middle", 2: "late"}


def test_the_layer_group_table_of_a_study_whose_later_layers_drift_more():
    histories, zeroshot, attention, _ = fabricate()
    runs = run_table(histories, zeroshot_means(zeroshot), attention, None)
    table = layer_groups(attention, runs)
    # the fabricated layers drift 0.5, 1 and 1.5 times each run's drift
    cell = table[(table["dataset"] == "eurosat") & (table["method"] == "full") & (table["lr"] == "1e-05")
                 & (table["metric"] == "entropy")].iloc[0]
    drifts = runs.loc[(runs["dataset"] == "eurosat") & (runs["method"] == "full") & (runs["lr"] == "1e-05"),
                      "drift_entropy_pct"].to_numpy()
    assert cell["early_mean"] == pytest.approx(0.5 * drifts.mean(), rel=1e-6)
    assert cell["late_mean"] == pytest.approx(1.5 * drifts.mean(), rel=1e-6)
    assert cell["p_anova"] == pytest.approx(scipy_stats.f_oneway(0.5 * drifts, drifts, 1.5 * drifts).pvalue, rel=1e-6)
    diverged_cell = table[(table["dataset"] == DIVERGED[0]) & (table["method"] == DIVERGED[1])
                          & (table["lr"] == DIVERGED[2]) & (table["metric"] == "entropy")].iloc[0]
    assert diverged_cell["n_per_group"] == 2  # the diverged seed is left out
    assert set(table["metric"]) == {"entropy", "erf95"}
    assert layer_groups(None).empty and list(layer_groups(pd.DataFrame()).columns)[:4] == ["dataset", "method", "lr",
                                                                                            "metric"]
    assert np.isfinite(table["f"]).all()


def test_the_paper_preset_sets_the_authors_single_seed_ablations_beside_its_cells_of_the_same_definition_only():
    from clipdrift.analysis.reference import OTHER_DEFINITION, load_reference
    from clipdrift.analysis.study import build_tables

    published = load_reference("ablations").set_index("method")
    assert published.loc["full-apr-0.01", "zs_top1"] == pytest.approx(0.1725)
    assert published.loc["lora-r4", "drift_entropy_pct"] == pytest.approx(0.98)
    # as the authors' code ran them: Full FT's variants at 1e-5, LoRA's at 1e-4
    assert set(published.loc[published.index.str.startswith("lora"), "lr"]) == {"1e-04"}
    assert set(published.loc[published.index.str.startswith("full"), "lr"]) == {"1e-05"}
    histories, zeroshot, attention, cka = fabricate()

    def ablations(definitions):
        return build_tables(histories, zeroshot, attention, cka, compare_with_paper=True,
                            published_definitions=definitions)["paper_ablations"]

    table = ablations({"full": True, "lora": True})
    assert table["published"].notna().all()
    reproduced = table[table["reproduced_n"] > 0].set_index(["method", "metric"])
    assert set(reproduced.index) == {("full", "zs_top1")}  # the study's own cell at the published rate
    assert reproduced.loc[("full", "zs_top1"), "published"] == pytest.approx(0.1271)
    by_method = table.groupby("method")["definition"].first()
    assert by_method["full"] == "published" and by_method["full-apr-0.01"] == "not run"
    assert by_method["lora"] == "not run"  # the fabricated study has no LoRA cell at 1e-4
    other = ablations({"full": False})  # Full FT trained another way: shown as such, never compared
    row = other[(other["method"] == "full") & (other["metric"] == "zs_top1")].iloc[0]
    assert row["definition"] == OTHER_DEFINITION and row["reproduced_n"] == 0
    assert math.isnan(row["reproduced_mean"]) and math.isnan(row["difference"]) and pd.isna(row["within_sd"])
