"""The attention regularisers: hand-computed values, the study's own attention definitions, the
training loss they join, a resumed run, and what they claim to do to the trained model."""

import math

import pytest
import torch
from tiny_models import make_tiny

from clipdrift.measure.attention import cls_patch_distribution, entropy
from clipdrift.measure.runtime import model_input
from clipdrift.model.backbones import capture_attention
from clipdrift.train.config import TrainConfig, TrainConfigError
from clipdrift.train.engine import finetune
from clipdrift.train.regularisers import (
    AttentionRegulariser,
    RegulariserConfig,
    apr_penalty,
    cls_attention,
    cls_patch_rows,
    entropy_floor_penalty,
    kl_divergence,
    row_entropy,
)
from clipdrift.train.resume import ResumeStore

from test_train import TRAIN, VAL, assert_same_states, without_timings

APR = {"kind": "apr", "weight": 1.0}
FLOOR = {"kind": "entropy_floor", "weight": 1.0}


def test_kl_divergence_by_hand():
    target, current = torch.tensor([0.5, 0.5, 0.0]), torch.tensor([0.25, 0.5, 0.25])
    assert kl_divergence(target, current).item() == pytest.approx(0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(1.0))
    assert kl_divergence(current, current).item() == 0.0  # and 0 · log 0 counts as 0 above


def test_cls_patch_rows_drop_the_cls_key_and_renormalise():
    probs = torch.zeros(1, 1, 3, 3)
    probs[0, 0, 0] = torch.tensor([0.2, 0.6, 0.2])
    torch.testing.assert_close(cls_patch_rows(probs), torch.tensor([[[0.75, 0.25]]]))
    torch.testing.assert_close(cls_patch_rows(probs[:, :, 0, :]), torch.tensor([[[0.75, 0.25]]]))  # CLS rows only


def test_apr_is_the_mean_over_layers_of_the_mean_kl_current_first_and_the_other_direction_is_an_option():
    uniform, peaked = torch.full((2, 3, 4), 0.25), torch.tensor([0.7, 0.1, 0.1, 0.1]).expand(2, 3, 4)
    current_first = sum(p * math.log(p / 0.25) for p in (0.7, 0.1, 0.1, 0.1))  # KL(peaked ‖ uniform), published
    pretrained_first = sum(0.25 * math.log(0.25 / p) for p in (0.7, 0.1, 0.1, 0.1))  # KL(uniform ‖ peaked)
    # layer 0 unchanged, layer 1 peaked where the pretrained tower was uniform: the mean of 0 and the KL
    assert apr_penalty([uniform, peaked], [uniform, uniform]).item() == pytest.approx(current_first / 2)
    assert apr_penalty([uniform, peaked], [uniform, uniform], "pretrained_first").item() == pytest.approx(
        pretrained_first / 2)
    assert abs(current_first - pretrained_first) > 0.01  # not the same quantity (0.446 vs 0.430 nats)


def test_the_published_entropy_floor_hinges_every_row_averages_them_and_sums_the_layers():
    one_hot, uniform = torch.tensor([1.0, 0, 0, 0]), torch.full((4,), 0.25)
    layer0 = torch.full((2, 3, 4), 0.25)  # ln 4 = 1.386 nats everywhere: above any threshold below it
    layer1 = torch.stack([one_hot, uniform]).expand(3, 2, 4).transpose(0, 1)  # image 0: 0 nats, image 1: ln 4
    thresholds = torch.tensor([1.0, 1.0])
    # published: per row max(0, 1 - H): layer 1's rows are 1 (image 0) and 0 (image 1): mean 0.5; summed: 0.5
    assert entropy_floor_penalty([layer0, layer1], thresholds).item() == pytest.approx(0.5)
    assert entropy_floor_penalty([layer1, layer1], thresholds).item() == pytest.approx(1.0)  # summed, not averaged
    assert entropy_floor_penalty([layer1, layer1], thresholds, layers="mean").item() == pytest.approx(0.5)
    # on the layer's mean entropy (ln 4 / 2 = 0.693) the hinge gives 1 - 0.693 instead
    layer_mean = entropy_floor_penalty([layer0, layer1], thresholds, hinge="layer_mean").item()
    assert layer_mean == pytest.approx(1.0 - math.log(4) / 2)
    assert entropy_floor_penalty([layer0, layer0], thresholds).item() == 0.0


def test_the_regularisers_read_the_attention_every_metric_measures():
    probs = torch.rand(3, 2, 6, 6, generator=torch.Generator().manual_seed(0)).softmax(dim=-1)
    torch.testing.assert_close(row_entropy(cls_patch_rows(probs)).double(), entropy(cls_patch_distribution(probs)),
                               rtol=0, atol=1e-6)


def test_the_training_forward_keeps_cls_rows_with_gradients_equal_to_the_captured_attention():
    model = make_tiny("full")
    images = model_input(model, TRAIN.images[:4])
    with capture_attention(model.clip) as maps:
        model(images)
    with cls_attention(model.clip) as rows:
        model(images)
    assert all(r.requires_grad for r in rows) and len(rows) == len(maps)
    for kept, captured in zip(rows, maps):
        torch.testing.assert_close(kept, cls_patch_rows(captured[0]))
    row_entropy(rows[0]).mean().backward()
    assert model.clip.visual.transformer.resblocks[0].attn.q_proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("method", ["full", "lora"])
def test_both_penalties_are_zero_at_the_pretrained_weights_and_grow_with_the_change(method):
    model = make_tiny(method)
    images = model_input(model, TRAIN.images[:8])
    apr = AttentionRegulariser(RegulariserConfig(**APR), model, images)
    floor = AttentionRegulariser(RegulariserConfig(**FLOOR, ratio=1.0), model, images)  # the floor at the baseline
    with cls_attention(model.clip) as rows:
        model.eval()(images)
    assert apr.penalty(rows, images).item() == pytest.approx(0.0, abs=1e-7)
    # every row's own entropy against the layer mean: the rows below it count, but stay small
    assert floor.penalty(rows, images).item() < 0.1
    with torch.no_grad():
        for block in model.clip.visual.transformer.resblocks:
            block.attn.k_proj.weight.mul_(3.0)  # sharper attention: lower entropy, another distribution
    with cls_attention(model.clip) as rows:
        model(images)
    assert apr.penalty(rows, images).item() > 1e-3
    assert floor.penalty(rows, images).item() > 0.1


def test_bad_regulariser_settings_are_refused_naming_the_fix():
    with pytest.raises(TrainConfigError, match="regulariser 'l2' is unknown: use one of"):
        TrainConfig(epochs=1, lr=1e-3, regulariser={"kind": "l2", "weight": 1.0})
    with pytest.raises(TrainConfigError, match="weight must be > 0"):
        TrainConfig(epochs=1, lr=1e-3, regulariser={"kind": "apr", "weight": 0})
    with pytest.raises(TrainConfigError, match="floor is the entropy_floor regulariser's option, not apr's"):
        TrainConfig(epochs=1, lr=1e-3, regulariser={"kind": "apr", "weight": 1, "floor": 1.0})
    with pytest.raises(TrainConfigError, match="floor must be >= 0 nats"):
        TrainConfig(epochs=1, lr=1e-3, regulariser={**FLOOR, "floor": -1.0})
    with pytest.raises(TrainConfigError, match="direction is the apr regulariser's option, not entropy_floor's"):
        TrainConfig(epochs=1, lr=1e-3, regulariser={**FLOOR, "direction": "pretrained_first"})
    with pytest.raises(TrainConfigError, match="hinge 'image' is unknown: use one of"):
        TrainConfig(epochs=1, lr=1e-3, regulariser={**FLOOR, "hinge": "image"})
    with pytest.raises(TrainConfigError, match="ratio is the entropy_floor regulariser's option, not apr's"):
        TrainConfig(epochs=1, lr=1e-3, regulariser={**APR, "ratio": 0.5})
    config = TrainConfig(epochs=1, lr=1e-3, regulariser=FLOOR)
    assert config.to_dict()["regulariser"] == {**FLOOR, "floor": None, "ratio": 0.7, "direction": "current_first",
                                               "hinge": "row", "layers": "sum", "base_batch_size": None}
    assert TrainConfig(**config.to_dict()) == config  # as the resume fingerprint and the params write it


def run_config(**overrides) -> TrainConfig:
    values = dict(epochs=3, lr=3e-3, batch_size=16, seed=5, num_threads=1, deterministic=True, device="cpu")
    return TrainConfig(**{**values, **overrides})


@pytest.mark.parametrize("regulariser", [APR, FLOOR])
def test_a_regularised_run_records_its_penalty_and_resumes_to_the_same_weights(tmp_path, regulariser):
    store = ResumeStore(tmp_path / "resume")

    def crash(entry):
        if entry["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(make_tiny("full", n_classes=4), TRAIN, VAL, run_config(regulariser=regulariser), resume=store,
                 progress=False, on_epoch_end=crash, probe=VAL)
    resumed = finetune(make_tiny("full", n_classes=4), TRAIN, VAL, run_config(regulariser=regulariser), resume=store,
                       progress=False, probe=VAL)
    whole = finetune(make_tiny("full", n_classes=4), TRAIN, VAL, run_config(regulariser=regulariser), progress=False,
                     probe=VAL)
    assert resumed.history["resumed_from_epoch"] == 1
    assert without_timings(resumed.history) == without_timings(whole.history)
    assert_same_states(resumed.final_state, whole.final_state)
    assert all(entry["train_penalty"] >= 0 for entry in whole.history["epochs"])
    plain = finetune(make_tiny("full", n_classes=4), TRAIN, VAL, run_config(), progress=False)
    assert "train_penalty" not in plain.history["epochs"][0]
    assert not torch.equal(plain.final_state["clip.visual.proj"], whole.final_state["clip.visual.proj"])


def cls_attention_on_val(model) -> list[torch.Tensor]:
    """Per layer, the CLS→patch attention of ``model`` on the validation images, as the study captures it."""
    with torch.no_grad(), capture_attention(model.clip) as maps:
        model.eval()(model_input(model, VAL.images))
    return [cls_patch_distribution(layer[0]) for layer in maps]


def test_with_a_large_weight_each_regulariser_shrinks_the_drift_it_targets():
    pretrained = cls_attention_on_val(make_tiny("full", n_classes=4))

    def entropy_drift(attention):  # the study's drift quantity: the layer-mean entropy, after minus before
        return float(sum(entropy(a).mean() - entropy(b).mean() for a, b in zip(attention, pretrained)) / len(pretrained))

    def divergence(attention):  # what APR penalises, measured as the study measures attention
        return float(sum(kl_divergence(a, b).mean() for a, b in zip(attention, pretrained)) / len(pretrained))

    def trained(**overrides):
        model = make_tiny("full", n_classes=4)
        result = finetune(model, TRAIN, VAL, run_config(epochs=4, lr=3e-2, **overrides), progress=False, probe=VAL)
        result.load_into(model, "final")
        return cls_attention_on_val(model)

    plain = trained()
    apr = trained(regulariser={"kind": "apr", "weight": 100.0})
    published_floor = trained(regulariser={"kind": "entropy_floor", "weight": 100.0})
    floor_at_baseline = trained(regulariser={"kind": "entropy_floor", "weight": 100.0, "ratio": 1.0})
    assert entropy_drift(plain) < -0.02  # unregularised, the attention sharpens: its entropy falls
    assert divergence(apr) < divergence(plain) / 4 and abs(entropy_drift(apr)) < abs(entropy_drift(plain)) / 2
    assert entropy_drift(floor_at_baseline) > entropy_drift(plain) / 4  # a floor at the baseline stops most of the fall
    # the published floor (70% of the baseline) binds only far below: this small fall goes on as without it
    assert entropy_drift(published_floor) == pytest.approx(entropy_drift(plain), rel=1e-3)


def test_on_a_tiny_model_both_penalties_equal_the_study_measured_attention_by_hand():
    pretrained, model = make_tiny("full"), make_tiny("full")
    images = model_input(model, TRAIN.images[:6])
    with torch.no_grad():
        for block in model.clip.visual.transformer.resblocks:
            block.attn.q_proj.weight.mul_(2.5)
    apr = AttentionRegulariser(RegulariserConfig(**APR), pretrained, images)
    floor = AttentionRegulariser(RegulariserConfig("entropy_floor", 1.0, floor=2.9), pretrained, images)
    with cls_attention(model.clip) as rows:
        model.eval()(images)

    def measured(clip):  # the study's own capture and CLS→patch distribution, in float64
        with torch.no_grad(), capture_attention(clip) as maps:
            clip.encode_image(images)
        return [cls_patch_distribution(layer[0]) for layer in maps]

    before, after = measured(pretrained.clip), measured(model.clip)
    kl = [(p * (p / q).log()).sum(-1).mean() for p, q in zip(after, before)]  # KL(current ‖ pretrained)
    assert apr.penalty(rows, images).item() == pytest.approx(float(sum(kl) / len(kl)), rel=1e-4)
    shortfall = [float(torch.relu(2.9 - entropy(p)).mean()) for p in after]  # every row, summed over layers
    assert floor.penalty(rows, images).item() == pytest.approx(sum(shortfall), rel=1e-4, abs=1e-6)


def test_every_regulariser_option_has_an_owner_and_the_schema_knows_each():
    import dataclasses

    import yaml

    from clipdrift.pipeline.plan import REGULARISER_OPTION_OWNERS

    from workflow_helpers import REPO

    fields = {field.name for field in dataclasses.fields(RegulariserConfig)}
    assert set(REGULARISER_OPTION_OWNERS) == fields - {"kind", "weight", "base_batch_size"}  # the last: the planner's
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    keys = set(schema["definitions"]["variant"]["properties"]["regulariser"]["properties"])
    assert keys == set(REGULARISER_OPTION_OWNERS) | {"kind", "weight"}
