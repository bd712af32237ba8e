"""The study's tables, statistics and findings, checked against numbers computed directly
(numpy, scipy, itertools) from the fabricated runs in fabricated_study.py."""

import itertools
import math
from importlib import resources

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from clipdrift.analysis.compare import comparisons
from clipdrift.analysis.findings import findings
from clipdrift.analysis.reference import load_reference, paper_comparison
from clipdrift.analysis.sensitivity import probe_sensitivity, sensitivity_summary
from clipdrift.analysis.stats import bootstrap_ci, holm, permutation, welch
from clipdrift.analysis.study import build_tables
from clipdrift.analysis.tables import attention_summary, cell_table, run_table

from fabricated_study import DIVERGED, LRS, MISSING, PRETRAINED, SEEDS, fabricate, zeroshot_means


@pytest.fixture(scope="module")
def study():
    return fabricate()


@pytest.fixture(scope="module")
def tables(study):
    return build_tables(*study, pretrained_zeroshot=[PRETRAINED])


def _histories_by_key(histories):
    return {(h["dataset"], h["method"], h["lr"], h["seed"]): h for h in histories}


def _cell(frame, dataset, method, lr):
    rows = frame[(frame["dataset"] == dataset) & (frame["method"] == method) & (frame["lr"] == lr)]
    assert len(rows) == 1
    return rows.iloc[0]


def _values(histories, zeroshot, dataset, method, lr, key, source="history"):
    """A metric of one cell straight from the artifacts, diverged runs left out."""
    items = histories if source == "history" else [z for run in zeroshot for z in run["tasks"]]
    status = {(h["dataset"], h["method"], h["lr"], h["seed"]): h["status"] for h in histories}
    return np.array(
        [
            x[key]
            for x in items
            if (x["dataset"], x["method"], x["lr"]) == (dataset, method, lr)
            and status[(x["dataset"], x["method"], x["lr"], x["seed"])] != "diverged"
        ]
    )


# ----------------------------------------------------------------------------------- runs


def test_run_table_has_every_run_once_and_flags_the_diverged_one(study, tables):
    histories = study[0]
    runs = tables["runs"]
    assert len(runs) == len(histories) == 2 * 2 * 4 * 3 - 1
    assert not runs.duplicated(["dataset", "method", "lr", "seed"]).any()
    flagged = runs[runs["diverged"]]
    assert list(map(tuple, flagged[["dataset", "method", "lr", "seed"]].to_numpy())) == [DIVERGED]
    assert flagged["diverged_at_step"].iloc[0] == 37
    # ordered by numeric learning rate, not by string ("1e-05" < "1e-06" < "5e-05" as strings)
    first = runs[(runs["dataset"] == "eurosat") & (runs["method"] == "full")]
    assert list(dict.fromkeys(first["lr"])) == list(LRS)


def test_run_table_joins_zero_shot_and_history_numbers(study, tables):
    histories, zeroshot, _, _ = study
    row = _cell(tables["runs"][tables["runs"]["seed"] == 11], "pets", "full", "1e-05")
    records = [z for run in zeroshot for z in run["tasks"]]
    z = next(z for z in records if (z["dataset"], z["method"], z["lr"], z["seed"]) == ("pets", "full", "1e-05", 11))
    h = _histories_by_key(histories)[("pets", "full", "1e-05", 11)]
    assert row["zs_top1"] == z["top1"] and row["zs_top5"] == z["top5"] and row["zs_balanced"] == z["balanced_acc"]
    assert row["zs_retention"] == pytest.approx(z["top1"] / PRETRAINED["top1"], rel=1e-12)
    assert row["best_select_acc"] == h["best_select_acc"] and row["final_test_acc"] == h["final_test_acc"]
    assert row["trainable_params"] == h["trainable_params"]["total"]
    assert row["zs_task"] == PRETRAINED["task"]


def test_attention_drift_is_of_the_layer_mean_of_head_mean_rows(study, tables):
    attention = study[2]
    key = ("eurosat", "lora", "1e-05", 7)
    rows = attention[(attention[["dataset", "method", "lr", "seed"]].apply(tuple, axis=1) == key)]
    for metric in ("entropy", "head_diversity", "p2p_entropy", "rollout_entropy"):
        chosen = rows[(rows["metric"] == metric) & (rows["head"] == -1)]
        base = chosen.loc[chosen["state"] == "baseline", "value"].mean()
        final = chosen.loc[chosen["state"] == "final", "value"].mean()
        run = tables["runs"].set_index(["dataset", "method", "lr", "seed"]).loc[key]
        assert run[f"drift_{metric}_pct"] == pytest.approx(100 * (final - base) / base)
        assert run[f"{metric}_baseline"] == pytest.approx(base)


def test_attention_without_head_mean_rows_averages_the_heads():
    frame = pd.DataFrame(
        [
            {
                "dataset": "d",
                "method": "full",
                "lr": "1e-05",
                "seed": 1,
                "layer": layer,
                "head": head,
                "metric": "entropy",
                "state": state,
                "value": value,
            }
            for layer in (0, 1)
            for head, offset in ((0, 0.0), (1, 2.0))
            for state, value in (("baseline", 1.0 + offset), ("final", 1.5 + offset))
        ]
    )
    summary = attention_summary(frame)
    # head means: baseline 2.0, final 2.5 in both layers
    assert summary["drift_entropy_pct"].iloc[0] == pytest.approx(25.0)


def test_cka_mean_is_linear_cls_over_the_blocks(study, tables):
    cka = study[3]
    key = ("pets", "full", "5e-06", 19)
    rows = cka[(cka[["dataset", "method", "lr", "seed"]].apply(tuple, axis=1) == key)]
    expected = rows[(rows["variant"] == "linear") & (rows["token"] == "cls") & (rows["layer"] >= 1)]["value"].mean()
    run = tables["runs"].set_index(["dataset", "method", "lr", "seed"]).loc[key]
    assert run["cka_mean"] == pytest.approx(expected)


def test_duplicate_runs_are_refused(study):
    histories = study[0]
    with pytest.raises(ValueError, match="twice"):
        run_table(histories + histories[:1], None, None, None)


def test_runs_without_metrics_get_nan_not_an_error(study):
    runs = run_table(study[0], None, None, None)
    assert runs["zs_top1"].isna().all() and runs["drift_entropy_pct"].isna().all()
    assert runs["best_select_acc"].notna().all()


# ---------------------------------------------------------------------------------- cells


def test_cell_means_leave_the_diverged_run_out(study, tables):
    histories, zeroshot, _, _ = study
    dataset, method, lr, _ = DIVERGED
    cell = _cell(tables["cells"], dataset, method, lr)
    assert (cell["n_runs"], cell["n_diverged"], cell["zs_top1_n"], cell["diverged_seeds"]) == (3, 1, 2, "19")
    clean = _values(histories, zeroshot, dataset, method, lr, "top1", source="zeroshot")
    assert len(clean) == 2
    assert cell["zs_top1_mean"] == pytest.approx(clean.mean())
    assert cell["zs_top1_sd"] == pytest.approx(clean.std(ddof=1))
    records = [z for run in zeroshot for z in run["tasks"]]
    poisoned = np.array([z["top1"] for z in records if (z["dataset"], z["method"], z["lr"]) == (dataset, method, lr)])
    assert abs(poisoned.mean() - cell["zs_top1_mean"]) > 0.01  # the garbage run would have moved the mean
    selection = _values(histories, zeroshot, dataset, method, lr, "best_select_acc")
    assert cell["best_select_acc_mean"] == pytest.approx(selection.mean())
    assert cell["best_select_acc_min"] == selection.min() and cell["best_select_acc_max"] == selection.max()


def test_cell_with_a_missing_seed(study, tables):
    histories, zeroshot, _, _ = study
    dataset, method, lr, missing = MISSING
    cell = _cell(tables["cells"], dataset, method, lr)
    values = _values(histories, zeroshot, dataset, method, lr, "best_select_acc")
    assert (cell["n_runs"], cell["n_diverged"], cell["best_select_acc_n"]) == (2, 0, 2)
    assert cell["seeds"] == " ".join(str(s) for s in SEEDS if s != missing)
    assert cell["best_select_acc_mean"] == pytest.approx(values.mean())
    assert cell["best_select_acc_sd"] == pytest.approx(np.std(values, ddof=1))
    low, high = cell["best_select_acc_ci_low"], cell["best_select_acc_ci_high"]
    assert values.min() <= low <= cell["best_select_acc_mean"] <= high <= values.max()


def test_every_cell_is_present_once(tables):
    cells = tables["cells"]
    assert len(cells) == 16 and not cells.duplicated(["dataset", "method", "lr"]).any()
    assert cells["n_runs"].sum() == len(tables["runs"])


def test_method_table_averages_the_cell_means(tables):
    cells, methods = tables["cells"], tables["methods"]
    for dataset, method in (("eurosat", "full"), ("pets", "lora")):
        means = cells[(cells["dataset"] == dataset) & (cells["method"] == method)]["zs_top1_mean"]
        row = methods[(methods["dataset"] == dataset) & (methods["method"] == method)].iloc[0]
        assert row["zs_top1_mean"] == pytest.approx(means.mean())
        assert row["zs_top1_sd_across_lr"] == pytest.approx(means.std(ddof=1))
        assert row["zs_top1_n_lr"] == 4
    eurosat_full = methods[(methods["dataset"] == "eurosat") & (methods["method"] == "full")].iloc[0]
    assert (eurosat_full["n_runs"], eurosat_full["n_diverged"]) == (12, 1)


def test_layer_table_per_layer_drift_leaves_diverged_runs_out(study, tables):
    attention = study[2]
    layers = tables["layers"]
    dataset, method, lr, bad_seed = DIVERGED
    rows = attention[
        (attention["dataset"] == dataset)
        & (attention["method"] == method)
        & (attention["lr"] == lr)
        & (attention["seed"] != bad_seed)
        & (attention["metric"] == "entropy")
        & (attention["head"] == -1)
        & (attention["layer"] == 2)
    ]
    pivot = rows.pivot_table(index="seed", columns="state", values="value")
    drifts = 100 * (pivot["final"] - pivot["baseline"]) / pivot["baseline"]
    row = layers[
        (layers["dataset"] == dataset)
        & (layers["method"] == method)
        & (layers["lr"] == lr)
        & (layers["quantity"] == "entropy_drift_pct")
        & (layers["layer"] == 2)
    ].iloc[0]
    assert row["n"] == 2
    assert row["mean"] == pytest.approx(drifts.mean()) and row["sd"] == pytest.approx(drifts.std(ddof=1))
    assert {"cka_linear_cls", "cka_debiased_patch_mean", "head_diversity_drift_pct"} <= set(layers["quantity"])
    # the undefined CLS CKA of the embedding output is not a layer-profile point
    assert layers[(layers["quantity"] == "cka_linear_cls") & (layers["layer"] == 0)].empty


# ------------------------------------------------------------------------------ statistics


def test_bootstrap_ci_small_and_degenerate_samples():
    assert all(math.isnan(v) for v in bootstrap_ci([0.5]))
    assert bootstrap_ci([0.3, 0.3, 0.3]) == (0.3, 0.3)
    values = [0.61, 0.58, 0.66, 0.60, 0.63]
    low, high = bootstrap_ci(values, seed=3)
    assert (low, high) == bootstrap_ci(values, seed=3)  # reproducible
    assert min(values) <= low < np.mean(values) < high <= max(values)


def test_bootstrap_ci_agrees_with_the_t_interval_on_a_large_sample():
    sample = np.random.default_rng(1).normal(10.0, 2.0, size=400)
    low, high = bootstrap_ci(sample, n_resamples=4000)
    t_low, t_high = sps.t.interval(0.95, len(sample) - 1, loc=sample.mean(), scale=sps.sem(sample))
    assert low == pytest.approx(t_low, abs=0.05) and high == pytest.approx(t_high, abs=0.05)


def test_welch_matches_scipy_directly(study, tables):
    histories, zeroshot, _, _ = study
    table = tables["stats"]
    for dataset, lr in (("pets", "1e-05"), (MISSING[0], MISSING[2]), (DIVERGED[0], DIVERGED[2])):
        full = _values(histories, zeroshot, dataset, "full", lr, "top1", source="zeroshot")
        lora = _values(histories, zeroshot, dataset, "lora", lr, "top1", source="zeroshot")
        direct = sps.ttest_ind(lora, full, equal_var=False)
        row = table[(table["dataset"] == dataset) & (table["lr"] == lr) & (table["metric"] == "zs_top1")].iloc[0]
        assert (row["n_a"], row["n_b"]) == (len(full), len(lora))
        assert row["p_welch"] == pytest.approx(direct.pvalue, rel=1e-12)
        assert row["t"] == pytest.approx(direct.statistic) and row["df"] == pytest.approx(direct.df)
        assert row["diff"] == pytest.approx(lora.mean() - full.mean())
        interval = direct.confidence_interval(0.95)
        assert (row["diff_ci_low"], row["diff_ci_high"]) == pytest.approx((interval.low, interval.high))


def _enumerated_permutation_p(a, b):
    """Two-sided p of the mean difference over every relabelling (2 × the smaller tail)."""
    pooled, n_b = np.concatenate([b, a]), len(b)
    observed = b.mean() - a.mean()
    stats = []
    for chosen in itertools.combinations(range(len(pooled)), n_b):
        mask = np.zeros(len(pooled), bool)
        mask[list(chosen)] = True
        stats.append(pooled[mask].mean() - pooled[~mask].mean())
    stats = np.array(stats)
    eps = 1e-12
    return min(1.0, 2 * min(np.mean(stats >= observed - eps), np.mean(stats <= observed + eps))), len(stats)


def test_permutation_test_is_exact():
    a = np.array([0.91, 0.88, 0.93, 0.90, 0.89])
    b = np.array([0.95, 0.97, 0.92, 0.96, 0.94])
    result = permutation(a, b)
    expected, count = _enumerated_permutation_p(a, b)
    assert result["perm_exact"] and result["n_permutations"] == count == 252
    assert result["p_perm"] == pytest.approx(expected)
    assert result["p_perm_min"] == pytest.approx(2 / 252)
    mixed = np.array([0.90, 0.95, 0.91])
    assert permutation(a[:3], mixed)["p_perm"] == pytest.approx(_enumerated_permutation_p(a[:3], mixed)[0])


def test_welch_refuses_single_seeds():
    out = welch([0.5], [0.6, 0.7])
    assert math.isnan(out["p_welch"]) and out["diff"] == pytest.approx(0.15)


def test_holm_against_a_worked_example():
    # sorted 0.005, 0.01, 0.03, 0.04 → ×4, ×3, ×2, ×1 = 0.02, 0.03, 0.06, 0.04 → running max
    adjusted = holm([0.01, 0.04, 0.03, 0.005, np.nan])
    np.testing.assert_allclose(adjusted[:4], [0.03, 0.06, 0.06, 0.02])
    assert math.isnan(adjusted[4])
    assert holm([0.5, 0.9])[1] == 1.0


def _holm_loop(pvalues):
    """Holm by its textbook definition, one p at a time."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def test_holm_runs_within_each_metric_across_the_grid(tables):
    table = tables["stats"]
    for _, family in table.groupby("metric"):
        assert len(family) == 8  # 2 datasets × 4 rates
        tested = family[family["p_welch"].notna()]
        assert family["family_size"].eq(len(tested)).all() and len(tested) == 8
        np.testing.assert_allclose(tested["p_welch_holm"], _holm_loop(tested["p_welch"].tolist()))
        # Holm keeps the order of the raw p-values
        ranked = family.sort_values("p_welch")
        assert ranked["p_welch_holm"].is_monotonic_increasing
    assert (table["reject_p_welch_holm"] == (table["p_welch_holm"] < 0.05)).all()


def test_correlations_match_scipy(tables):
    runs = tables["runs"]
    ok = runs[~runs["diverged"] & (runs["dataset"] == "pets")]
    row = tables["correlations"].query("dataset == 'pets' and x == 'drift_entropy_pct' and y == 'zs_top1'").iloc[0]
    direct = sps.pearsonr(ok["drift_entropy_pct"], ok["zs_top1"])
    interval = direct.confidence_interval(0.95)
    assert row["n"] == len(ok)
    assert row["pearson_r"] == pytest.approx(direct.statistic)
    assert (row["pearson_ci_low"], row["pearson_ci_high"]) == pytest.approx((interval.low, interval.high))
    assert row["spearman_rho"] == pytest.approx(sps.spearmanr(ok["drift_entropy_pct"], ok["zs_top1"]).statistic)


# -------------------------------------------------------------------------------- findings


@pytest.fixture(scope="module")
def found(tables):
    return findings(tables["runs"], PRETRAINED)


def _kind(found, kind, dataset=None):
    return [f for f in found if f["kind"] == kind and (dataset is None or f["dataset"] == dataset)]


def _kept_text(cell_b, cell_a):
    return (
        f"LoRA kept {100 * cell_b['zs_top1_mean']:.1f}% ± {100 * cell_b['zs_top1_sd']:.1f} vs "
        f"{100 * cell_a['zs_top1_mean']:.1f}% ± {100 * cell_a['zs_top1_sd']:.1f} for Full FT"
    )


def test_headline_sentence_states_the_effect_with_its_numbers(found, tables):
    cells = tables["cells"]
    for dataset in ("eurosat", "pets"):
        (finding,) = _kind(found, "headline", dataset)
        diffs = {
            lr: _cell(cells, dataset, "lora", lr)["zs_top1_mean"] - _cell(cells, dataset, "full", lr)["zs_top1_mean"]
            for lr in LRS
        }
        widest = max(diffs, key=lambda lr: abs(diffs[lr]))
        sentence = finding["sentence"]
        assert "kept more zero-shot top-1 accuracy on world-cifar100 than Full FT at 4 of 4 matched" in sentence
        assert "(Welch p < 0.05 at 4 of them after Holm's correction over 8 comparisons; pretrained: 60.0%)" in sentence
        test = tables["stats"].query("dataset == @dataset and lr == @widest and metric == 'zs_top1'").iloc[0]
        assert finding["values"]["widest"]["p_welch_holm"] == pytest.approx(test["p_welch_holm"])  # the table's own
        assert f"The gap is widest at {widest}: " in sentence
        assert _kept_text(_cell(cells, dataset, "lora", widest), _cell(cells, dataset, "full", widest)) in sentence
        assert finding["values"]["widest"]["diff"] == pytest.approx(diffs[widest])
    # the highest rate is always reported, once: as the widest gap or in its own finding;
    # there the diverged Full FT seed is not counted
    at_top = [f for f in _kind(found, "headline", "eurosat") if f["values"]["widest"]["lr"] == "5e-05"]
    at_top += [f for f in _kind(found, "highest_rate", "eurosat") if f["values"]["lr"] == "5e-05"]
    assert len(at_top) == 1 and "over 3 and 2 seeds" in at_top[0]["sentence"]


def test_highest_rate_finding_when_the_gap_is_widest_elsewhere(tables):
    runs = tables["runs"].copy()
    lowered = (runs["dataset"] == "pets") & (runs["method"] == "lora") & (runs["lr"] == "5e-05")
    runs.loc[lowered, "zs_top1"] -= 0.35
    found = findings(runs, PRETRAINED)
    (top,) = _kind(found, "highest_rate", "pets")
    cells = cell_table(runs, ci_metrics=())
    assert top["values"]["lr"] == "5e-05"
    assert _kept_text(_cell(cells, "pets", "lora", "5e-05"), _cell(cells, "pets", "full", "5e-05")) in top["sentence"]
    assert _kind(found, "headline", "pets")[0]["values"]["widest"]["lr"] != "5e-05"


def test_underfitting_is_found_only_where_it_is(found, tables):
    underfit = [f for f in _kind(found, "underfit") if f["values"].get("lr")]
    assert [(f["dataset"], f["values"]["lr"]) for f in underfit] == [("pets", "1e-06")]
    cells = tables["cells"]
    gap = (
        _cell(cells, "pets", "full", "1e-06")["best_select_acc_mean"]
        - _cell(cells, "pets", "lora", "1e-06")["best_select_acc_mean"]
    )
    assert underfit[0]["values"]["shortfall"] == pytest.approx(gap)
    assert f"{100 * gap:.1f} points lower" in underfit[0]["sentence"]


def test_ranking_flip_of_selection_accuracy(found, tables):
    (flip,) = [f for f in _kind(found, "ranking_flip", "pets") if f["values"]["metric"] == "best_select_acc"]
    assert flip["values"]["ahead_b"] == ["5e-05"] and flip["values"]["ahead_a"] == ["1e-06", "5e-06", "1e-05"]
    # zero-shot never flips: LoRA keeps more at every rate
    assert not [f for f in _kind(found, "ranking_flip") if f["values"]["metric"] == "zs_top1"]


def test_each_methods_own_best_rate(found, tables):
    cells = tables["cells"]
    for dataset in ("eurosat", "pets"):
        (finding,) = _kind(found, "best_rate", dataset)
        for method in ("full", "lora"):
            part = cells[(cells["dataset"] == dataset) & (cells["method"] == method)]
            expected = part.loc[part["best_select_acc_mean"].idxmax(), "lr"]
            assert finding["values"]["best"][method]["lr"] == expected


def test_diverged_run_and_power_caveats(found):
    (diverged,) = _kind(found, "diverged")
    assert diverged["values"]["n"] == 1 and "seed 19 (at step 37)" in diverged["sentence"]
    (power,) = _kind(found, "permutation_power")
    assert power["values"]["p_perm_min"] == pytest.approx(0.1)  # 3 vs 3 seeds: 2 / C(6, 3)


def test_a_single_method_study_compares_nothing(tables):
    runs = tables["runs"][tables["runs"]["method"] == "lora"]
    found = findings(runs, PRETRAINED)
    assert {f["kind"] for f in found} == {"diverged"}
    assert comparisons(runs).empty


def test_findings_are_json_ready(found):
    import json

    json.dumps(found, allow_nan=False)


# ------------------------------------------------------------------------------ reference


def test_reference_is_loaded_in_artifact_units():
    raw = pd.read_csv(
        resources.files("clipdrift") / "resources" / "paper_cells.csv", dtype={"lr": str}
    )
    reference = load_reference()
    assert len(reference) == 16 and set(reference["lr"]) == {"1e-06", "5e-06", "1e-05", "5e-05"}
    np.testing.assert_allclose(reference["zs_top1"], raw["cifar100_zeroshot"] / 100)
    np.testing.assert_allclose(reference["best_select_acc"], raw["best_val_acc"] / 100)
    np.testing.assert_allclose(reference["drift_entropy_pct"], raw["entropy_drift_pct"])
    # the published averages are the means of the published cells (to the published rounding)
    methods = load_reference("methods").set_index(["dataset", "method"])
    averaged = reference.groupby(["dataset", "method"])[["zs_top1", "best_select_acc"]].mean()
    np.testing.assert_allclose(methods.loc[averaged.index, ["zs_top1", "best_select_acc"]], averaged, atol=1e-4)


def _reproduction(reference, spread=0.004, seeds=(1, 2, 3, 4, 5), drop=None):
    """Runs whose zero-shot scatter ±spread (symmetric) around the published cell means."""
    histories, zeroshot = [], []
    offsets = np.linspace(-spread, spread, len(seeds))
    for row in reference.itertuples():
        if drop == (row.dataset, row.method, row.lr):
            continue
        for seed, offset in zip(seeds, offsets):
            keys = {"dataset": row.dataset, "method": row.method, "lr": row.lr, "seed": seed}
            histories.append({**keys, "status": "completed", "best_select_acc": row.best_select_acc + offset})
            zeroshot.append({"tasks": [
                {**keys, "task": "cifar100", "top1": row.zs_top1 + offset + (0.05 if row.lr == "5e-05" else 0)}
            ]})
    return run_table(histories, zeroshot_means(zeroshot, {"task": "cifar100", "top1": 0.6}), None, None)


def test_paper_comparison_reports_difference_and_spread():
    reference = load_reference()
    runs = _reproduction(reference, drop=("pets", "lora", "1e-06"))
    comparison = paper_comparison(cell_table(runs), reference)
    zs = comparison[comparison["metric"] == "zs_top1"].set_index(["dataset", "method", "lr"])
    on_target, shifted = zs.loc[("eurosat", "full", "1e-06")], zs.loc[("eurosat", "full", "5e-05")]
    assert on_target["difference"] == pytest.approx(0) and on_target["within_sd"] and on_target["within_range"]
    assert shifted["difference"] == pytest.approx(0.05) and not shifted["within_sd"] and not shifted["within_range"]
    assert on_target["reproduced_n"] == 5 and on_target["published"] == pytest.approx(0.1590)
    missing = zs.loc[("pets", "lora", "1e-06")]
    assert missing["reproduced_n"] == 0 and pd.isna(missing["within_sd"])
    # no attention metrics in this reproduction: the drift rows say so instead of inventing numbers
    drift = comparison[comparison["metric"] == "drift_entropy_pct"]
    assert len(drift) == 16 and drift["reproduced_n"].eq(0).all() and drift["reproduced_mean"].isna().all()


def test_paper_comparison_matches_rates_by_value():
    reference = load_reference()
    runs = _reproduction(reference)
    runs["lr"] = runs["lr"].map(lambda lr: f"{float(lr):.6f}")  # "0.000001" spelling
    comparison = paper_comparison(cell_table(runs), reference)
    reproduced = comparison[comparison["metric"].isin(["zs_top1", "best_select_acc"])]
    assert len(reproduced) == 32 and reproduced["reproduced_n"].eq(5).all()


def test_paper_tables_only_when_asked(study):
    assert "paper_cells" not in build_tables(*study)
    with_paper = build_tables(*study, compare_with_paper=True)
    assert {"paper_cells", "paper_methods"} <= set(with_paper)


def test_paper_cell_comparison_uses_population_sds_like_the_published_ones(study):
    tables = build_tables(*study, compare_with_paper=True)
    runs = tables["runs"]
    row = tables["paper_cells"].query("dataset == 'pets' and method == 'lora' and lr == '1e-06' and metric == 'zs_top1'")
    ok = runs.query("dataset == 'pets' and method == 'lora' and lr == '1e-06' and not diverged")["zs_top1"]
    assert row["reproduced_sd"].iloc[0] == pytest.approx(np.std(ok, ddof=0))  # n = 2: ddof 1 would be √2 larger
    assert tables["cells"].query("dataset == 'pets' and method == 'lora' and lr == '1e-06'")["zs_top1_sd"].iloc[0] \
        == pytest.approx(np.std(ok, ddof=1))  # the rest of the report keeps sample SDs


def test_published_correlations_side_by_side(study):
    tables = build_tables(*study, compare_with_paper=True)
    side = tables["paper_correlations"].set_index(["dataset", "x", "y"])
    assert len(side) == 4 and set(side["published_n"]) == {40}
    row = side.loc[("pets", "drift_entropy_pct", "zs_top1")]
    measured = tables["correlations"].query("dataset == 'pets' and x == 'drift_entropy_pct' and y == 'zs_top1'").iloc[0]
    assert row["published_r"] == 0.90 and row["measured_r"] == measured["pearson_r"]
    assert row["difference"] == pytest.approx(measured["pearson_r"] - 0.90)
    assert row["within_ci"] == (measured["pearson_ci_low"] <= 0.90 <= measured["pearson_ci_high"])
    # drift vs in-domain accuracy, the published study's second correlation, is measured too
    assert not math.isnan(side.loc[("eurosat", "drift_entropy_pct", "best_select_acc"), "measured_r"])


def _enumerated_correlation_p(x, y):
    """Two-sided permutation p by enumeration: twice the smaller one-sided tail (scipy's convention)."""
    observed = np.corrcoef(x, y)[0, 1]
    values = np.array([np.corrcoef(x, np.array(p))[0, 1] for p in itertools.permutations(y)])
    eps = 1e-12
    return min(1.0, 2 * min(np.mean(values >= observed - eps), np.mean(values <= observed + eps)))


def test_permutation_correlation_is_exact_for_small_n_and_sampled_beyond():
    from clipdrift.analysis.stats import permutation_correlation

    x = np.array([0.1, 0.5, 0.2, 0.9, 0.4, 0.7])
    y = np.array([1.0, 1.4, 0.9, 2.0, 1.6, 1.1])
    result = permutation_correlation(x, y)
    assert result["perm_exact"] and result["n_permutations"] == 720
    assert result["r"] == pytest.approx(sps.pearsonr(x, y).statistic)
    assert result["p_perm"] == pytest.approx(_enumerated_correlation_p(x, y))
    spearman = permutation_correlation(x, y, "spearman")
    assert spearman["r"] == pytest.approx(sps.spearmanr(x, y).statistic)
    assert spearman["p_perm"] == pytest.approx(_enumerated_correlation_p(sps.rankdata(x), sps.rankdata(y)))
    rng = np.random.default_rng(0)
    sampled = permutation_correlation(rng.normal(size=30), rng.normal(size=30))
    assert not sampled["perm_exact"] and sampled["n_permutations"] == 20_001
    assert math.isnan(permutation_correlation([1, 2], [3, 4])["r"])


def test_cka_against_entropy_drift_pairs_the_same_layer(study, tables):
    _, _, attention, cka = study
    relations = tables["cka_entropy"]
    runs = tables["runs"]
    ok = runs[~runs["diverged"] & (runs["dataset"] == "eurosat")]
    run_level = relations.query("dataset == 'eurosat' and level == 'run' and method == 'pearson'").iloc[0]
    assert run_level["r"] == pytest.approx(sps.pearsonr(ok["drift_entropy_pct"], ok["cka_mean"]).statistic)
    assert run_level["n"] == len(ok)
    # layer 1 (block 1): entropy drift of attention layer 1 vs CKA of the block's output, CKA layer 2
    keys = ["dataset", "method", "lr", "seed"]
    entropy = attention.query("dataset == 'eurosat' and metric == 'entropy' and head == -1 and layer == 1")
    states = entropy.pivot_table(index=keys, columns="state", values="value")
    drift = (100 * (states["final"] - states["baseline"]) / states["baseline"]).rename("drift")
    cka_values = cka.query("dataset == 'eurosat' and variant == 'linear' and token == 'cls'")
    for pairing, cka_layer in (("same_layer", 2), ("published_offset", 1)):
        pairs = drift.to_frame().join(cka_values[cka_values["layer"] == cka_layer].set_index(keys)["value"])
        pairs = pairs.drop(index=[k for k in pairs.index if k[1:] == ("full", "5e-05", 19)])  # the diverged run
        row = relations.query(f"dataset == 'eurosat' and pairing == '{pairing}' and layer == 1 and method == 'spearman'")
        assert row["n"].iloc[0] == len(pairs) == len(ok)
        assert row["r"].iloc[0] == pytest.approx(sps.spearmanr(pairs["drift"], pairs["value"]).statistic)
    # block 0 has no defined partner under the published pairing (CKA layer 0: the embedding's constant CLS)
    assert relations.query("pairing == 'published_offset' and layer == 0").empty


def test_probe_sensitivity_against_direct_computation(study, tables):
    from fabricated_study import PROBE_SEEDS, fabricate_sensitivity

    sensitivity = fabricate_sensitivity(study[2])
    table = probe_sensitivity(sensitivity, tables["runs"])
    pretrained = table.query("method == 'pretrained' and dataset == 'pets' and metric == 'entropy'").iloc[0]
    baseline = sensitivity.query("dataset == 'pets' and metric == 'entropy' and state == 'baseline'")
    values = baseline.groupby("probe_seed")["value"].first()
    assert pretrained["n_probes"] == len(PROBE_SEEDS)
    assert pretrained["cv_pct"] == pytest.approx(100 * np.std(values, ddof=1) / np.mean(values))
    one_run = "dataset == 'pets' and method == 'full' and lr == '1e-05' and seed == 11 and metric == 'entropy'"
    run = table.query(one_run).iloc[0]
    rows = sensitivity.query(one_run)
    wide = rows.pivot_table(index="probe_seed", columns="state", values="value")
    drifts = 100 * (wide["final"] - wide["baseline"]) / wide["baseline"]
    assert run["drift_mean"] == pytest.approx(drifts.mean()) and run["drift_sd"] == pytest.approx(drifts.std(ddof=1))
    measured = tables["runs"].query("dataset == 'pets' and method == 'full' and lr == '1e-05' and seed == 11")
    assert run["drift_measured"] == pytest.approx(measured["drift_entropy_pct"].iloc[0])
    assert run["probe_explains"] == (abs(run["drift_measured"]) <= 2 * run["drift_sd"])
    assert table.query("method != 'pretrained'")["seed"].isin(SEEDS).all()
    assert table.query("dataset == 'eurosat' and method == 'full' and lr == '5e-05' and seed == 19").empty  # diverged
    summary = sensitivity_summary(table)
    pets = summary.set_index("dataset").loc["pets"]
    tuned = table.query("dataset == 'pets' and method != 'pretrained' and metric == 'entropy'")
    assert pets["n_explained"] == tuned["probe_explains"].sum() and pets["n_judged"] == len(tuned)


def test_probe_sensitivity_refuses_runs_that_disagree_about_the_pretrained_model(study):
    from fabricated_study import fabricate_sensitivity

    sensitivity = fabricate_sensitivity(study[2])
    tampered = sensitivity.index[(sensitivity["state"] == "baseline") & (sensitivity["seed"] == 7)][:1]
    sensitivity.loc[tampered, "value"] *= 1.01
    with pytest.raises(ValueError, match="different pretrained values"):
        probe_sensitivity(sensitivity)


def test_probe_sensitivity_finding_states_its_numbers(study, tables):
    from fabricated_study import fabricate_sensitivity

    table = probe_sensitivity(fabricate_sensitivity(study[2]), tables["runs"])
    found = findings(tables["runs"], PRETRAINED, sensitivity=table)
    summary = sensitivity_summary(table).set_index("dataset")
    for finding in [f for f in found if f["kind"] == "probe_sensitivity"]:
        row = summary.loc[finding["dataset"]]
        assert f"could explain the drift of {row['n_explained']} of {row['n_judged']} runs" in finding["sentence"]
    assert {f["dataset"] for f in found if f["kind"] == "probe_sensitivity"} == {"eurosat", "pets"}
