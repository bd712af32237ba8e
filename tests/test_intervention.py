"""The intruder intervention and its uniform control: known answers, peft's own mitigation for
LoRA, the tower written into a model and restored, and a run scored at every share kept."""

import math

import pytest
import torch

from clipdrift.measure.intervention import (
    intervened_towers,
    intervention_table,
    shrunk_uniformly,
    truncated,
    without_intruders,
)
from clipdrift.measure.weights import MatrixChange, intruders, tower_changes


def _planted(seed=0):
    """A pretrained 64 × 48 matrix and a fine-tuned one with one planted intruder (index 0)."""
    generator = torch.Generator().manual_seed(seed)
    pretrained = torch.randn(64, 48, generator=generator, dtype=torch.float64)
    left, values, _ = torch.linalg.svd(pretrained, full_matrices=False)
    u = left[:, 10:].sum(dim=1) / math.sqrt(38)
    v = torch.randn(48, generator=generator, dtype=torch.float64)
    return pretrained, pretrained + 3 * float(values[0]) * torch.outer(u, v / v.norm())


def test_keeping_every_intruder_is_the_run_and_keeping_none_removes_them():
    pretrained, tuned = _planted()
    change = MatrixChange(pretrained, tuned)
    assert torch.equal(without_intruders(change, 1.0, 10, 0.5), change.tuned)
    removed = without_intruders(change, 0.0, 10, 0.5)
    assert intruders(pretrained, removed)["count"] == 0
    assert float((removed - tuned).norm()) == pytest.approx(float(change.tuned_svd[1][0]))  # the planted component
    halfway = without_intruders(change, 0.5, 10, 0.5)
    assert torch.allclose(halfway, (removed + tuned) / 2)
    unchanged = MatrixChange(pretrained, pretrained)
    assert torch.equal(without_intruders(unchanged, 0.0, 10, 0.5), unchanged.tuned)  # no intruder: nothing to remove


def test_the_control_removes_the_same_amount_of_change_along_the_change_itself():
    pretrained, tuned = _planted(1)
    changes = tower_changes({(0, "q_proj"): pretrained}, {(0, "q_proj"): tuned})
    for keep in (0.0, 0.25, 0.5, 0.75, 1.0):
        towers = intervened_towers(changes, keep, 10, 0.5)
        moved, control = towers["intruders"][(0, "q_proj")], towers["uniform"][(0, "q_proj")]
        assert float((control - pretrained).norm()) == pytest.approx(float((moved - pretrained).norm()), abs=1e-6)
        direction = torch.nn.functional.cosine_similarity((control - pretrained).flatten(),
                                                          (tuned - pretrained).flatten(), 0)
        assert float(direction) == pytest.approx(1.0)
    change = MatrixChange(pretrained, tuned)
    assert torch.equal(shrunk_uniformly(change, float(change.delta.norm())), change.pretrained + change.delta)
    assert torch.equal(shrunk_uniformly(MatrixChange(pretrained, pretrained), 1.0), pretrained)


def test_a_truncated_matrix_is_its_best_low_rank_approximation():
    generator = torch.Generator().manual_seed(2)
    low = torch.randn(20, 3, generator=generator, dtype=torch.float64) @ torch.randn(3, 16, generator=generator,
                                                                                       dtype=torch.float64)
    assert torch.allclose(truncated(low, 3), low) and torch.linalg.matrix_rank(truncated(low, 2)) == 2


def test_for_lora_the_intervention_is_peft_s_reduce_intruder_dimension():
    """peft's mitigation (its code: W + (λ − 1) × the intruder components of the merged weight, the
    change refit to the adapter's rank) at the same k, ε and λ gives our intervention's matrices."""
    import peft
    from peft.tuners.lora.intruders import reduce_intruder_dimension

    for keep in (0.0, 0.5):
        torch.manual_seed(3)
        model = torch.nn.Sequential(torch.nn.Linear(24, 32), torch.nn.Linear(32, 32))
        tuned = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["0", "1"]))
        ours, found = {}, 0
        for name, layer in tuned.named_modules():
            if isinstance(layer, peft.tuners.lora.LoraLayer):
                layer.lora_B["default"].weight.data.normal_(0, 3.0)
                base = layer.get_base_layer().weight.data.clone()
                change = MatrixChange(base, base + layer.get_delta_weight("default"))
                found += change.intruders(10, 0.5)["count"]
                ours[name] = without_intruders(change, keep, 10, 0.5, rank=layer.r["default"])
        reduce_intruder_dimension(tuned, top_k=10, threshold_epsilon=0.5, mitigation_lambda=keep, logging_sink=None)
        assert found > 0
        for name, layer in tuned.named_modules():
            if isinstance(layer, peft.tuners.lora.LoraLayer):
                theirs = layer.get_base_layer().weight.data + layer.get_delta_weight("intruder_reduced")
                assert torch.allclose(theirs.double(), ours[name], atol=1e-4), (name, keep)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_a_tower_written_into_the_model_computes_with_it_and_is_restored_bit_for_bit(method):
    from tiny_models import make_tiny

    from clipdrift.model.weights import tower_matrices, written_tower

    model = make_tiny(method).eval()
    torch.manual_seed(4)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            parameter.data.normal_(0, 0.5)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        output = model(images)
    matrices = tower_matrices(model)
    new = {key: weight * 1.5 if index < 2 else weight for index, (key, weight) in enumerate(matrices.items())}
    with written_tower(model, new) as written, torch.no_grad():
        inside = tower_matrices(written)
        assert all(torch.allclose(inside[key], new[key], atol=1e-5) for key in new)
        assert not torch.allclose(written(images), output)
    with written_tower(model, matrices), torch.no_grad():
        assert torch.equal(model(images), output)  # the model's own matrices: nothing is written
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())


@pytest.mark.parametrize("method", ["full", "lora"])
def test_a_run_is_scored_at_every_share_kept_and_keeping_all_is_the_run_itself(method):
    from tiny_models import make_tiny

    from clipdrift.measure.curves import measure
    from clipdrift.measure.weight_drift import pretrained_bases
    from clipdrift.model.weights import tower_matrices
    from clipdrift.train.config import TrainConfig
    from clipdrift.train.engine import finetune

    from test_train import N_CLASSES, TEST, TRAIN, VAL

    pretrained_model, inputs = _curve_setting()
    finetuned = make_tiny(method, n_classes=N_CLASSES)
    finetune(finetuned, TRAIN, VAL, TrainConfig(epochs=2, lr=3e-2, batch_size=16, seed=5), test=TEST, progress=False)
    pretrained = tower_matrices(pretrained_model)
    table = intervention_table(finetuned, pretrained, pretrained_bases(pretrained), inputs, [0, 0.5, 1], top_k=10,
                               epsilon=0.9)  # a loose threshold: the tiny tower has intruders to remove
    assert list(table.groupby(["kind", "keep"]).size().index) == [(k, v) for k in ("intruders", "uniform")
                                                                  for v in (0.0, 0.5, 1.0)]
    itself = measure(finetuned, inputs)["held"]
    for kind in ("intruders", "uniform"):
        row = table[(table["kind"] == kind) & (table["keep"] == 1.0)].iloc[0]
        assert {column: row[column] for column in itself} == itself  # keeping every intruder: the run
    by_keep = table.pivot_table(index="keep", columns="kind", values="weight_distance")
    assert (by_keep["intruders"] - by_keep["uniform"]).abs().max() < 1e-6 * by_keep.to_numpy().max()
    # intruders were removed (which can move a matrix farther from W0: an intruder direction of W carries
    # pretrained energy too, and the control then follows the change beyond W to the same distance)
    assert by_keep.loc[0.0, "intruders"] != by_keep.loc[1.0, "intruders"]


def _curve_setting():
    from tiny_models import TINY

    from clipdrift.measure.curves import CurveInputs
    from clipdrift.measure.extract import probe_reference
    from clipdrift.measure.settings import CKAConfig
    from clipdrift.model.backbones import build_classifier

    from test_curves import ATTENTION, make_probe
    from test_train import N_CLASSES, TEST

    pretrained = build_classifier(TINY, N_CLASSES, seed=0)
    probe = make_probe(12)
    reference = probe_reference(pretrained, probe, ATTENTION, CKAConfig(batch_size=8))
    weights = torch.nn.functional.normalize(torch.randn(64, 4, generator=torch.Generator().manual_seed(0)), dim=0)
    return pretrained, CurveInputs(TEST, probe, reference, {"held": (make_probe(20, seed=3), weights)}, ATTENTION,
                                   eval_batch_size=16)


def test_the_study_s_intervention_effects_are_the_paired_differences_with_their_interval():
    from clipdrift.analysis.study import build_tables, study_findings

    from fabricated_study import (
        INTERVENTION_GAIN,
        PRETRAINED,
        fabricate,
        fabricate_intervention,
        fabricate_weights,
    )

    study = fabricate()
    runs = build_tables(*study, pretrained_zeroshot=[PRETRAINED])["runs"]
    weights, sweep, overlap = fabricate_weights(study[0])
    tables = build_tables(*study, pretrained_zeroshot=[PRETRAINED], weights=weights, intruder_sweep=sweep,
                          weight_overlap=overlap, intervention=fabricate_intervention(runs))
    effects = tables["intervention_effects"]
    assert set(effects["keep"]) == {0.0, 0.5}  # keep 1 is the run itself in both kinds: nothing to compare
    planted = INTERVENTION_GAIN["intruders"] - INTERVENTION_GAIN["uniform"]
    lora = effects[(effects["method"] == "lora") & (effects["keep"] == 0.0)]
    assert lora["zs_gain_mean"].to_numpy() == pytest.approx(planted) and (lora["zs_gain_sd"] < 1e-12).all()
    assert lora["indomain_gain_mean"].to_numpy() == pytest.approx(-planted / 2)
    full = effects[(effects["method"] == "full") & (effects["keep"] == 0.5)]
    assert full["zs_gain_mean"].to_numpy() == pytest.approx(planted / 4)
    assert (effects["n"] <= 3).all() and not effects["zs_gain_ci_low"].isna().any()
    table = tables["intervention"]
    assert set(table["kind"]) == {"intruders", "uniform"}
    assert table.loc[table["keep"] == 1.0, "weight_distance_mean"].to_numpy() == pytest.approx(0.1)
    said = [f for f in study_findings(tables, [PRETRAINED]) if f["kind"] == "weight_intervention"]
    assert len(said) == 2 and all("above 0 in 8 and below 0 in 0 of 8" in f["sentence"] for f in said), said
    assert "gives back more transfer than removing as much change at random" in said[0]["sentence"]
