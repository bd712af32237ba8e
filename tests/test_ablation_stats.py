"""The ablation statistics: Cohen's d, the one-way ANOVA, which comparisons a study with variants
asks, and the layer-group analysis of per-layer drift."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from clipdrift.analysis.compare import comparison_pairs, comparisons
from clipdrift.analysis.layergroups import UNITS, _cell_rows, layer_group_of, layer_groups
from clipdrift.analysis.stats import cohens_d, one_way_anova, repeated_measures_anova
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
    # the fabricated layers (3: one per group) drift 0.5, 1 and 1.5 times each run's drift
    cell = table[(table["dataset"] == "eurosat") & (table["method"] == "full") & (table["lr"] == "1e-05")
                 & (table["metric"] == "entropy")]
    drifts = runs.loc[(runs["dataset"] == "eurosat") & (runs["method"] == "full") & (runs["lr"] == "1e-05"),
                      "drift_entropy_pct"].to_numpy()
    assert list(cell["unit"]) == [*UNITS[:2], *[UNITS[2]] * len(drifts)] and list(cell["seed"].dropna()) == [7, 11, 19]
    means, repeated = cell.iloc[0], cell.iloc[1]
    assert means["early_mean"] == pytest.approx(0.5 * drifts.mean(), rel=1e-6)
    assert means["late_mean"] == pytest.approx(1.5 * drifts.mean(), rel=1e-6)
    assert math.isnan(means["p_anova"]) and means["n_per_group"] == 1  # one layer per group: no test by layers
    expected = repeated_measures_anova(np.outer(drifts, [0.5, 1.0, 1.5]))  # seeds as subjects
    assert repeated["p_anova"] == pytest.approx(expected["p_anova"]) and repeated["n_per_group"] == 3
    diverged_cell = table[(table["dataset"] == DIVERGED[0]) & (table["method"] == DIVERGED[1])
                          & (table["lr"] == DIVERGED[2]) & (table["metric"] == "entropy")]
    assert diverged_cell.iloc[1]["n_per_group"] == 2 and len(diverged_cell) == 2 + 2  # the diverged seed is left out
    assert set(table["metric"]) == {"entropy", "erf95"}
    assert layer_groups(None).empty and list(layer_groups(pd.DataFrame()).columns)[:6] == [
        "dataset", "method", "lr", "metric", "unit", "seed"]


def test_the_repeated_measures_anova_by_hand_and_as_a_paired_t_test():
    # subjects × levels [[2, 4, 6], [3, 5, 10], [1, 3, 5]]: SS levels 38, subjects 14, total 56, error 4
    result = repeated_measures_anova([[2, 4, 6], [3, 5, 10], [1, 3, 5]])
    assert result["f"] == pytest.approx((38 / 2) / (4 / 4)) and result["p_anova"] == pytest.approx(
        scipy_stats.f.sf(19.0, 2, 4))
    a, b = np.array([1.0, 2.5, 2.0, 4.0]), np.array([1.5, 3.5, 2.2, 5.0])
    two_levels = repeated_measures_anova(np.column_stack([a, b]))
    paired = scipy_stats.ttest_rel(b, a)
    assert two_levels["f"] == pytest.approx(paired.statistic ** 2) and two_levels["p_anova"] == pytest.approx(paired.pvalue)
    assert math.isnan(repeated_measures_anova([[1, 2, 3]])["f"])  # one subject


def test_layers_as_the_unit_need_seed_means_first_pooling_seeds_shrinks_p():
    # 3 seeds × 6 layers (2 per group) that barely differ between seeds
    layers, offsets = np.array([1.0, 1.4, 1.3, 1.9, 1.7, 2.2]), (-0.02, 0.0, 0.03)
    per_seed = pd.DataFrame([layers + offset for offset in offsets], index=[7, 11, 19], columns=range(6))
    rows = _cell_rows(per_seed, pd.Series(layer_group_of(list(range(6)))))
    means = layers + np.mean(offsets)
    by_layers = rows[0]
    assert by_layers["unit"] == UNITS[0] and by_layers["p_anova"] == pytest.approx(
        scipy_stats.f_oneway(means[[0, 1]], means[[2, 3]], means[[4, 5]]).pvalue, rel=1e-6)
    pooled = scipy_stats.f_oneway(*[per_seed[[2 * g, 2 * g + 1]].to_numpy().ravel() for g in range(3)]).pvalue
    assert by_layers["p_anova"] > 0.2 and pooled < 0.002  # each layer counted once per seed: 6 "samples" a group
    one_run = [row for row in rows if row["unit"] == UNITS[2]]
    assert [row["seed"] for row in one_run] == [7, 11, 19]
    first = layers + offsets[0]
    assert one_run[0]["p_anova"] == pytest.approx(
        scipy_stats.f_oneway(first[[0, 1]], first[[2, 3]], first[[4, 5]]).pvalue)


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


def test_the_published_regulariser_test_pairs_two_runs_of_a_seed_over_their_layers():
    from clipdrift.analysis.layergroups import layer_pair_tests
    from clipdrift.analysis.stats import paired_over_layers
    from clipdrift.analysis.tables import layer_quantities

    a, b = [2.0, 2.5, 3.0, 3.1], [2.1, 2.4, 3.4, 3.6]
    result = paired_over_layers(a, b)
    assert result["t_paired"] == pytest.approx(scipy_stats.ttest_rel(b, a).statistic)
    assert result["p_paired"] == pytest.approx(scipy_stats.ttest_rel(b, a).pvalue)
    assert result["cohens_d_layers"] == pytest.approx(cohens_d(a, b)) and result["n_layers"] == 4
    histories, zeroshot, attention, _ = fabricate()
    runs = run_table(histories, zeroshot_means(zeroshot), attention, None)
    table = layer_pair_tests(attention, runs, [("full", "lora")])  # lora as the "variant" of the fabricated study
    finals = layer_quantities(attention, None).query("quantity == 'entropy_final'")
    row = table[(table["dataset"] == "eurosat") & (table["lr"] == "1e-05") & (table["seed"] == 7)].iloc[0]

    def layers(method):
        return finals.query("dataset == 'eurosat' and lr == '1e-05' and seed == 7 and method == @method") \
            .sort_values("layer")["value"].to_numpy()

    assert row["p_paired"] == pytest.approx(scipy_stats.ttest_rel(layers("lora"), layers("full")).pvalue)
    assert row["n_layers"] == len(layers("full")) and (row["method_a"], row["method_b"]) == ("full", "lora")
    same_cell = (table["dataset"] == DIVERGED[0]) & (table["lr"] == DIVERGED[2]) & (table["method_a"] == DIVERGED[1])
    # a diverged run pairs with nothing
    assert same_cell.sum() == 2 and not (same_cell & (table["seed"] == DIVERGED[3])).any()
    assert layer_pair_tests(attention, runs, []).empty
