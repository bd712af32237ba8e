import math

import numpy as np
import pandas as pd
import pytest
import torch
from tiny_models import make_tiny

from clipdrift.data.split import ImageSplit
from clipdrift.measure.attention import (
    aggregate_batches,
    cls_patch_distribution,
    effective_receptive_field,
    entropy,
    gini,
    head_diversity,
    patch_patch_distribution,
    rollout,
)
from clipdrift.measure.cka import CKAAccumulator, debiased_cka, linear_cka
from clipdrift.measure.runtime import model_input
from clipdrift.measure.settings import AttentionConfig, CKAConfig
from clipdrift.model.backbones import capture_attention, capture_hidden_states

from reference_drift import attention_table, cka_layer_mean, cka_table, drift_summary

P = 49  # the protocol's 7x7 patches
T = P + 1


def cls_attention(patch_row: torch.Tensor, cls_self: float = 0.3) -> torch.Tensor:
    """(1, 1, T, T) attention whose CLS row puts ``cls_self`` on CLS and ``patch_row`` (scaled) on patches."""
    probs = torch.full((1, 1, T, T), 1.0 / T)
    probs[0, 0, 0, 0] = cls_self
    probs[0, 0, 0, 1:] = (1 - cls_self) * patch_row / patch_row.sum()
    return probs


# ------------------------------------------------------------------ statistics with known answers


def test_uniform_cls_row_has_maximal_entropy_zero_gini_and_the_ceiling_erf():
    dist = cls_patch_distribution(cls_attention(torch.ones(P)))
    assert torch.allclose(dist, torch.full((1, 1, P), 1.0 / P, dtype=torch.float64))  # CLS dropped, renormalised
    assert entropy(dist).item() == pytest.approx(math.log(49), abs=1e-12)
    assert entropy(dist, unit="bits").item() == pytest.approx(math.log2(49), abs=1e-12)
    assert gini(dist).item() == pytest.approx(0.0, abs=1e-12)
    assert effective_receptive_field(dist).item() == math.ceil(0.95 * 49) / 49


def test_one_hot_cls_row_has_zero_entropy_single_patch_erf_and_maximal_gini():
    dist = cls_patch_distribution(cls_attention(torch.eye(P)[17], cls_self=0.9))
    assert entropy(dist).item() == 0.0
    assert effective_receptive_field(dist).item() == 1 / 49
    assert gini(dist).item() == pytest.approx(48 / 49, abs=1e-12)


def test_statistics_of_a_small_hand_worked_distribution():
    dist = torch.tensor([0.2, 0.5, 0.3])
    assert entropy(dist).item() == pytest.approx(-(0.2 * math.log(0.2) + 0.5 * math.log(0.5) + 0.3 * math.log(0.3)))
    # sorted 0.5, 0.3, 0.2 -> cumulative 0.5, 0.8, 1.0
    assert effective_receptive_field(dist, mass=0.8).item() == pytest.approx(2 / 3)
    assert effective_receptive_field(dist, mass=0.95).item() == 1.0
    assert effective_receptive_field(dist, mass=0.5).item() == pytest.approx(1 / 3)
    # sum_ij |x_i - x_j| / (2 n sum x) = 2 * (0.3 + 0.1 + 0.2) / 6
    assert gini(dist).item() == pytest.approx(0.2)


def test_entropy_renormalises_rows_so_scale_does_not_matter():
    rows = torch.rand(3, 5, P)
    normalised = rows / rows.sum(-1, keepdim=True)
    assert torch.allclose(entropy(7.5 * rows), entropy(normalised), atol=1e-12)
    assert torch.allclose(entropy(normalised), -(normalised.double() * normalised.double().log()).sum(-1), atol=1e-12)


def test_erf_counts_a_threshold_reached_exactly_despite_rounding():
    # 19 of 20 uniform patches hold exactly 0.95; float sums land a hair below it
    assert effective_receptive_field(torch.full((20,), 0.05)).item() == 19 / 20


def test_head_diversity_of_identical_disjoint_and_known_angle_heads():
    maps = torch.rand(P).expand(3, 4, P)  # 3 layers of 4 identical heads
    assert torch.allclose(head_diversity(maps), torch.zeros(3, dtype=torch.float64), atol=1e-12)
    disjoint = torch.eye(P)[:4]
    assert head_diversity(disjoint).item() == pytest.approx(1.0)
    two = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # cosine 1/sqrt(2)
    assert head_diversity(two).item() == pytest.approx(1 - 1 / math.sqrt(2))
    assert math.isnan(head_diversity(torch.rand(1, P)).item())  # one head: no pairs


def test_rollout_of_identity_attention_is_the_identity():
    eye = torch.eye(T).expand(2, 3, T, T)
    for alpha in (0.0, 0.5, 1.0):
        assert torch.equal(rollout([eye] * 4, alpha), torch.eye(T, dtype=torch.float64).expand(2, T, T))


def test_rollout_mixes_the_residual_averages_heads_and_multiplies_from_the_first_layer():
    torch.manual_seed(0)
    layers = [torch.rand(1, 2, 5, 5).softmax(-1) for _ in range(3)]
    eye = torch.eye(5, dtype=torch.float64)
    mixed = [0.3 * a.double().mean(1)[0] + 0.7 * eye for a in layers]
    expected = mixed[2] @ mixed[1] @ mixed[0]
    result = rollout(layers, alpha=0.3)[0]
    assert torch.allclose(result, expected, atol=1e-12)
    assert torch.allclose(result.sum(-1), torch.ones(5, dtype=torch.float64))  # still row-stochastic
    assert not torch.allclose(rollout(layers[::-1], alpha=0.3)[0], expected)  # order matters


def test_rollout_of_uniform_attention_spreads_cls_evenly_over_patches():
    uniform = torch.full((1, 2, T, T), 1.0 / T)
    dist = cls_patch_distribution(rollout([uniform] * 12, 0.5))
    assert entropy(dist).item() == pytest.approx(math.log(49), abs=1e-12)


def test_patch_to_patch_block_drops_cls_and_renormalises_rows():
    uniform = torch.full((2, 3, T, T), 1.0 / T)
    block = patch_patch_distribution(uniform)
    assert block.shape == (2, 3, P, P)
    assert torch.allclose(entropy(block), torch.full((2, 3, P), math.log(49), dtype=torch.float64))
    one_hot = torch.eye(T).expand(1, 1, T, T)  # each patch attends to itself only
    assert torch.equal(entropy(patch_patch_distribution(one_hot)), torch.zeros(1, 1, P, dtype=torch.float64))


def test_paper_aggregation_weighs_batches_equally_and_exact_weighs_images_equally():
    means, counts = torch.tensor([[1.0], [4.0]]), torch.tensor([32, 8])
    assert aggregate_batches(means, counts, "paper").item() == pytest.approx(2.5)
    assert aggregate_batches(means, counts, "exact").item() == pytest.approx((32 * 1 + 8 * 4) / 40)
    full = torch.tensor([32, 32])
    assert aggregate_batches(means, full, "paper").item() == aggregate_batches(means, full, "exact").item()
    with pytest.raises(ValueError, match="aggregation 'mean'"):
        aggregate_batches(means, counts, "mean")


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="attention aggregation 'weighted'"):
        AttentionConfig(aggregation="weighted")
    with pytest.raises(ValueError, match="entropy_unit 'dits'"):
        AttentionConfig(entropy_unit="dits")
    with pytest.raises(ValueError, match="cka token"):
        CKAConfig(token="mean")
    assert CKAConfig(token="cls").tokens == ("cls",)


# ------------------------------------------------------------------ the attention table on the tiny model


def make_probe(n: int, seed: int = 0) -> ImageSplit:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=generator, dtype=torch.uint8)
    return ImageSplit(images, torch.arange(n) % 4, ["a", "b", "c", "d"])


@pytest.fixture(scope="module")
def models():
    """A pretrained tiny model and a "fine-tuned" copy with perturbed image-tower weights."""
    baseline = make_tiny("full", seed=3)
    tuned = make_tiny("full", seed=3)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in tuned.clip.visual.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return tuned, baseline


def per_image_cls_stats(model, probe, patch_to_patch=False):
    """Per-image, per-head entropy of the CLS row (or the mean patch row of the patch block),
    the slow obvious way: (images, layers, heads)."""
    with torch.no_grad(), capture_attention(model.clip) as maps:
        model.clip.encode_image(model_input(model, probe.images))
    values = []
    for layer in maps:
        probs = layer[0].double()
        block = probs[:, :, 1:, 1:] if patch_to_patch else probs[:, :, 0:1, 1:]
        rows = block / block.sum(-1, keepdim=True)
        values.append(-(rows * rows.log()).sum(-1).mean(-1))
    return torch.stack(values, dim=1)


def rollout_entropy_by_hand(model, probe, alpha):
    with torch.no_grad(), capture_attention(model.clip) as maps:
        model.clip.encode_image(model_input(model, probe.images))
    joint = torch.eye(17, dtype=torch.float64)
    for layer in maps:
        joint = (alpha * layer[0].double().mean(1) + (1 - alpha) * torch.eye(17, dtype=torch.float64)) @ joint
    row = joint[:, 0, 1:] / joint[:, 0, 1:].sum(-1, keepdim=True)
    return -(row * row.log()).sum(-1).mean().item()


def values(frame, metric, state, head=-1):
    rows = frame[(frame.metric == metric) & (frame.state == state) & (frame["head"] == head)]
    return rows.sort_values("layer")["value"].to_numpy()


def test_attention_table_has_the_contract_rows(models):
    tuned, baseline = models
    frame = attention_table(tuned, baseline, make_probe(8), AttentionConfig(batch_size=4))
    assert list(frame.columns) == ["layer", "head", "metric", "state", "value"]
    assert set(frame.metric) == {"entropy", "erf95", "gini", "head_diversity", "p2p_entropy",
                                 "rollout_entropy", "rollout_erf95", "rollout_gini"}
    assert set(frame.state) == {"baseline", "final"}
    for metric in ("entropy", "erf95", "gini", "p2p_entropy"):
        rows = frame[(frame.metric == metric) & (frame.state == "final")]
        assert sorted(zip(rows.layer, rows["head"])) == [(layer, head) for layer in range(3) for head in (-1, 0, 1, 2)]
        per_head = rows[rows["head"] >= 0].groupby("layer")["value"].mean().to_numpy()
        assert np.allclose(per_head, values(frame, metric, "final"))  # head -1 is the mean over heads
    diversity = frame[frame.metric == "head_diversity"]
    assert set(diversity["head"]) == {-1} and sorted(diversity.layer.unique()) == [0, 1, 2]
    rollout_rows = frame[frame.metric.str.startswith("rollout_")]
    assert set(rollout_rows.layer) == {-1} and set(rollout_rows["head"]) == {-1} and len(rollout_rows) == 6
    assert frame.value.notna().all()
    assert not np.allclose(values(frame, "entropy", "final"), values(frame, "entropy", "baseline"))


def test_exact_entropy_is_the_per_image_mean_of_cls_row_entropies(models):
    tuned, baseline = models
    probe = make_probe(40)
    frame = attention_table(tuned, baseline, probe, AttentionConfig(aggregation="exact", batch_size=32))
    for model, state in ((tuned, "final"), (baseline, "baseline")):
        by_hand = per_image_cls_stats(model, probe)  # (images, layers, heads)
        assert np.allclose(values(frame, "entropy", state), by_hand.mean(dim=(0, 2)).numpy(), atol=1e-6)
        assert np.allclose(values(frame, "entropy", state, head=1), by_hand[:, :, 1].mean(0).numpy(), atol=1e-6)
    p2p = per_image_cls_stats(tuned, probe, patch_to_patch=True)
    rolled = attention_table(tuned, baseline, probe, AttentionConfig(rollout_alpha=0.8, batch_size=16))
    rollout_by_hand = rollout_entropy_by_hand(tuned, probe, 0.8)
    assert values(rolled, "rollout_entropy", "final")[0] == pytest.approx(rollout_by_hand, abs=1e-9)
    assert np.allclose(values(frame, "p2p_entropy", "final", head=2), p2p[:, :, 2].mean(0).numpy(), atol=1e-6)
    bits = attention_table(tuned, baseline, probe, AttentionConfig(entropy_unit="bits", batch_size=32))
    assert np.allclose(values(bits, "entropy", "final"), values(frame, "entropy", "final") / math.log(2))


def test_paper_and_exact_agree_on_full_batches_and_weigh_a_short_last_batch_as_expected(models):
    tuned, baseline = models
    paper, exact = AttentionConfig(aggregation="paper"), AttentionConfig(aggregation="exact")
    full = make_probe(64)
    a, b = attention_table(tuned, baseline, full, paper), attention_table(tuned, baseline, full, exact)
    linear = ~a.metric.isin(["head_diversity"])  # mean of batch means = mean of images
    assert np.allclose(a[linear].value, b[linear].value, atol=1e-12)

    ragged = make_probe(40)  # batches of 32 and 8
    paper_frame = attention_table(tuned, baseline, ragged, paper)
    exact_frame = attention_table(tuned, baseline, ragged, exact)
    by_hand = per_image_cls_stats(tuned, ragged).mean(dim=2)  # (images, layers)
    expected_paper = (by_hand[:32].mean(0) + by_hand[32:].mean(0)) / 2
    assert np.allclose(values(paper_frame, "entropy", "final"), expected_paper.numpy(), atol=1e-6)
    assert np.allclose(values(exact_frame, "entropy", "final"), by_hand.mean(0).numpy(), atol=1e-6)
    assert not np.allclose(values(paper_frame, "entropy", "final"), values(exact_frame, "entropy", "final"), atol=1e-6)


def test_head_diversity_paper_mode_averages_the_diversity_of_each_batch_mean_map(models):
    tuned, baseline = models
    probe = make_probe(40)
    with torch.no_grad(), capture_attention(tuned.clip) as maps:
        tuned.clip.encode_image(model_input(tuned, probe.images))
    rows = cls_patch_distribution(maps[1][0])  # layer 1, (images, heads, patches)
    per_batch = (head_diversity(rows[:32].mean(0)) + head_diversity(rows[32:].mean(0))) / 2
    whole = head_diversity(rows.mean(0))
    paper = attention_table(tuned, baseline, probe, AttentionConfig(aggregation="paper"))
    exact = attention_table(tuned, baseline, probe, AttentionConfig(aggregation="exact", batch_size=7))
    assert values(paper, "head_diversity", "final")[1] == pytest.approx(per_batch.item(), abs=1e-6)
    assert values(exact, "head_diversity", "final")[1] == pytest.approx(whole.item(), abs=1e-6)


def test_lora_at_init_has_no_drift_and_restores_model_state():
    baseline, lora = make_tiny("full", seed=2), make_tiny("lora", seed=2)
    lora.train()
    frame = attention_table(lora, baseline, make_probe(6), AttentionConfig(batch_size=4))
    assert lora.training and not baseline.training  # mode restored
    drift = drift_summary(frame)
    assert np.allclose(drift.drift_pct, 0.0, atol=1e-9)


def test_drift_summary_takes_the_layer_mean_before_the_drift():
    rows = [(0, -1, "entropy", "baseline", 1.0), (1, -1, "entropy", "baseline", 3.0),
            (0, -1, "entropy", "final", 2.0), (1, -1, "entropy", "final", 3.0),
            (0, 0, "entropy", "final", 99.0),  # per-head rows are ignored
            (-1, -1, "rollout_gini", "baseline", 0.5), (-1, -1, "rollout_gini", "final", 0.4)]
    frame = pd.DataFrame(rows, columns=["layer", "head", "metric", "state", "value"])
    for key, value in (("dataset", "pets"), ("seed", 7)):
        frame[key] = value
    summary = drift_summary(frame).set_index(["metric", "layer"])
    assert summary.loc[("entropy", 0), "drift_pct"] == pytest.approx(100.0)
    assert summary.loc[("entropy", 1), "drift_pct"] == pytest.approx(0.0)
    # (2.5 - 2) / 2, not the mean of the per-layer drifts (50 %)
    assert summary.loc[("entropy", -1), "drift_pct"] == pytest.approx(25.0)
    assert summary.loc[("rollout_gini", -1), "drift_pct"] == pytest.approx(-20.0)
    assert len(summary) == 4 and set(summary["dataset"]) == {"pets"} and set(summary["seed"]) == {7}


# ------------------------------------------------------------------ CKA


def gram_cka(x: np.ndarray, y: np.ndarray, debiased: bool = False) -> float:
    """Reference CKA from n×n Gram matrices (Kornblith et al. 2019; Song et al. 2012)."""
    def hsic(k1, k2):
        n = k1.shape[0]
        if not debiased:
            h = np.eye(n) - 1.0 / n
            return np.sum((h @ k1 @ h) * (h @ k2 @ h))
        k1, k2 = k1.copy(), k2.copy()
        np.fill_diagonal(k1, 0)
        np.fill_diagonal(k2, 0)
        one = np.ones(n)
        return (np.trace(k1 @ k2) + (one @ k1 @ one) * (one @ k2 @ one) / ((n - 1) * (n - 2))
                - 2.0 / (n - 2) * one @ k1 @ k2 @ one)

    kx, ky = x @ x.T, y @ y.T
    return hsic(kx, ky) / math.sqrt(hsic(kx, kx) * hsic(ky, ky))


@pytest.fixture
def features():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(60, 12, generator=generator, dtype=torch.float64)
    y = (x @ torch.randn(12, 8, generator=generator, dtype=torch.float64)
         + 0.5 * torch.randn(60, 8, generator=generator, dtype=torch.float64))
    return x, y


@pytest.mark.parametrize("cka", [linear_cka, debiased_cka])
def test_cka_of_a_representation_with_itself_is_one(cka, features):
    x, _ = features
    assert cka(x, x) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("cka", [linear_cka, debiased_cka])
def test_cka_is_invariant_to_rotation_isotropic_scaling_and_translation_and_symmetric(cka, features):
    x, y = features
    reference = cka(x, y)
    assert 0.2 < reference < 0.99
    rotation, _ = torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(5)))
    assert cka(x, y @ rotation) == pytest.approx(reference, abs=1e-10)
    assert cka(3.7 * x, y) == pytest.approx(reference, abs=1e-10)
    assert cka(x + 1e4, y - 50.0) == pytest.approx(reference, abs=1e-8)  # far from the origin
    assert cka(y, x) == pytest.approx(reference, abs=1e-12)


@pytest.mark.parametrize("debiased", [False, True])
def test_batched_cka_equals_the_one_shot_gram_matrix_value(debiased, features):
    x, y = features
    accumulator = CKAAccumulator()
    for start in range(0, 60, 7):  # uneven batches, the last one of 4
        accumulator.update(x[start:start + 7].float(), y[start:start + 7].float())
    expected = gram_cka(x.float().double().numpy(), y.float().double().numpy(), debiased)
    got = accumulator.debiased() if debiased else accumulator.linear()
    assert got == pytest.approx(expected, abs=1e-10)
    one_shot = debiased_cka(x.float(), y.float()) if debiased else linear_cka(x.float(), y.float())
    assert got == pytest.approx(one_shot, abs=1e-12)


def test_cka_of_a_constant_representation_is_flagged_undefined(features):
    x, _ = features
    constant = torch.tensor([3.0, -1.0, 0.5]).expand(60, 3)
    accumulator = CKAAccumulator()
    accumulator.update(x, constant)
    assert not accumulator.defined
    assert math.isnan(accumulator.linear()) and math.isnan(accumulator.debiased())
    # float32 rounding noise on a constant vector is still "constant"
    noisy = constant.float() * (1 + 1e-7 * torch.randn(60, 3))
    assert math.isnan(linear_cka(x, noisy))


def test_cka_table_rows_and_identity_model_gives_one():
    model = make_tiny("full", seed=1)
    probe = make_probe(10)
    frame = cka_table(model, model, probe, CKAConfig(batch_size=4))
    assert list(frame.columns) == ["layer", "token", "variant", "value", "defined"]
    assert len(frame) == 4 * 2 * 2  # (embedding + 3 blocks) x tokens x variants
    undefined = frame[~frame.defined]
    # the embedding layer's CLS token is the same vector for every image
    assert set(zip(undefined.layer, undefined.token)) == {(0, "cls")} and undefined.value.isna().all()
    assert np.allclose(frame[frame.defined].value, 1.0, atol=1e-9)
    mean = cka_layer_mean(frame).set_index(["token", "variant"])
    assert mean.loc[("cls", "linear"), "n_layers"] == 3 and mean.loc[("patch_mean", "linear"), "n_layers"] == 4


def test_cka_table_matches_features_captured_by_hand(models):
    tuned, baseline = models
    probe = make_probe(12)
    frame = cka_table(tuned, baseline, probe, CKAConfig(token="patch_mean", variants=("linear",), batch_size=5))
    assert set(frame.token) == {"patch_mean"} and set(frame.variant) == {"linear"}
    with torch.no_grad():
        with capture_hidden_states(baseline.clip) as base:
            baseline.clip.encode_image(model_input(baseline, probe.images))
        with capture_hidden_states(tuned.clip) as fine:
            tuned.clip.encode_image(model_input(tuned, probe.images))
    for layer in (0, 2, 3):
        x, y = base[layer][0][:, 1:].mean(1), fine[layer][0][:, 1:].mean(1)
        expected = gram_cka(x.double().numpy(), y.double().numpy())
        assert frame.set_index("layer").loc[layer, "value"] == pytest.approx(expected, abs=1e-8)
    assert (frame.value < 1 - 1e-4).all()  # the perturbation is visible


def test_probe_sensitivity_measures_the_drift_statistics_on_each_probe_subset(models):
    from reference_drift import probe_sensitivity_table

    tuned, baseline = models
    probes = {7: make_probe(8, seed=7), 42: make_probe(8, seed=42)}
    config = AttentionConfig(batch_size=4)
    table = probe_sensitivity_table(tuned, baseline, probes, config)
    assert list(table.columns) == ["probe_seed", "state", "metric", "value"] and len(table) == 2 * 2 * 2
    for seed, probe in probes.items():
        frame = attention_table(tuned, baseline, probe, config)
        for state in ("baseline", "final"):
            got = table.query(f"probe_seed == {seed} and state == '{state}'").set_index("metric")["value"]
            # the quantity drift_entropy_pct is the drift of: the layer mean of the head-mean rows
            assert got["entropy"] == pytest.approx(values(frame, "entropy", state).mean(), abs=1e-12)
            assert got["rollout_entropy"] == pytest.approx(values(frame, "rollout_entropy", state)[0], abs=1e-12)
    first, second = (table.query(f"probe_seed == {s} and state == 'baseline' and metric == 'entropy'")["value"].item()
                     for s in probes)
    assert first != second  # different images, different values


# ---- one extraction pass against a reference computed once ------------------------------------


def test_one_pass_against_a_stored_reference_gives_the_tables_of_the_separate_measurements(models):
    from clipdrift.measure.extract import extract, probe_reference, reference_from_tensors, reference_tensors

    from reference_drift import probe_sensitivity_table

    tuned, baseline = models
    probe = make_probe(20)
    attention, cka = AttentionConfig(batch_size=8, aggregation="paper"), CKAConfig(batch_size=8)
    subsets = {7: make_probe(8, seed=7), 21: make_probe(8, seed=21)}
    stored = reference_tensors(probe_reference(baseline, probe, attention, cka, subsets))
    tables = extract(tuned, reference_from_tensors(*stored), probe, attention, cka, subsets)
    expected = {"attention": attention_table(tuned, baseline, probe, attention),
                "cka": cka_table(tuned, baseline, probe, cka),
                "sensitivity": probe_sensitivity_table(tuned, baseline, subsets, attention)}
    for name, frame in expected.items():
        got = tables[name]
        pd.testing.assert_frame_equal(got.drop(columns="value"), frame.drop(columns="value"))
        # equal up to float rounding: the captured pass computes the softmax explicitly
        np.testing.assert_allclose(got["value"], frame["value"], rtol=1e-5, atol=1e-7, equal_nan=True)


def test_a_reference_made_with_other_settings_or_images_is_refused(models):
    from clipdrift.measure.extract import ReferenceMismatchError, extract, probe_reference

    tuned, baseline = models
    probe, cka = make_probe(8), CKAConfig(batch_size=8)
    reference = probe_reference(baseline, probe, AttentionConfig(batch_size=8), cka)
    with pytest.raises(ReferenceMismatchError, match="recompute the reference with the extraction's settings"):
        extract(tuned, reference, probe, AttentionConfig(batch_size=8, rollout_alpha=0.3), cka)
    with pytest.raises(ReferenceMismatchError, match="holds 8 probe images, the probe has 12"):
        extract(tuned, reference, make_probe(12), AttentionConfig(batch_size=8), cka)
