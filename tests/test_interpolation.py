import copy

import pytest
import torch
import torch.nn.functional as F
from tiny_models import TINY, make_tiny
from torch import nn

from clipdrift.model.adapters import trainable_parameters
from clipdrift.model.backbones import BackboneSpec, build_classifier
from clipdrift.model.interpolation import InterpolationError, check_alpha, interpolated

ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
LORA = dict(lora_r=4, lora_alpha=8)  # scale 2
LORA_SCALE = 8 / 4
ADAPTED = ("q_proj", "v_proj")


def _finetuned(method: str, seed: int = 1, size: float = 0.05):
    """A "fine-tuned" tiny model: every trainable tensor moved by seeded noise (LoRA B included,
    so the adapters' delta is not zero)."""
    model = make_tiny(method, **(LORA if method == "lora" else {}))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in trainable_parameters(model):
            param.add_(size * torch.randn(param.shape, generator=generator))
    return model.eval()


def _pretrained():
    return build_classifier(TINY, 5, seed=9)  # plain backbone; another head, which is never used


def _state(model):
    state = {key: value.clone() for key, value in model.state_dict().items()}
    scalings = {name: dict(module.scaling) for name, module in model.named_modules() if hasattr(module, "scaling")}
    return state, scalings


def _assert_same_state(model, saved):
    state, scalings = _state(model)
    assert state.keys() == saved[0].keys()
    assert all(torch.equal(state[key], saved[0][key]) for key in state)
    assert scalings == saved[1]


def _outputs(model, images):
    with torch.no_grad():
        return model.image_features(images), model(images)


def _lora_layer(model, block: int, proj: str):
    return getattr(model.clip.visual.transformer.resblocks[block].attn, proj)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_alpha_one_is_exactly_the_finetuned_model(method, tiny_images):
    finetuned, pretrained = _finetuned(method), _pretrained()
    features, logits = _outputs(finetuned, tiny_images)
    assert not torch.equal(features, _outputs(pretrained, tiny_images)[0])  # the perturbation matters
    with interpolated(finetuned, pretrained, 1.0) as model:
        assert model is finetuned
        inside_features, inside_logits = _outputs(model, tiny_images)
    assert torch.equal(inside_features, features) and torch.equal(inside_logits, logits)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_alpha_zero_is_exactly_the_pretrained_image_tower_with_the_finetuned_head(method, tiny_images):
    finetuned, pretrained = _finetuned(method), _pretrained()
    pretrained_features = _outputs(pretrained, tiny_images)[0]
    with interpolated(finetuned, pretrained, 0) as model:
        features, logits = _outputs(model, tiny_images)
        assert torch.equal(model.clip.visual.proj, pretrained.clip.visual.proj)
        with torch.no_grad():
            expected_logits = finetuned.head(pretrained_features)
    assert torch.equal(features, pretrained_features)
    assert torch.equal(logits, expected_logits)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_lora_scaled_delta_equals_interpolating_the_merged_weights(alpha, tiny_images):
    finetuned, pretrained = _finetuned("lora"), _pretrained()
    state, pre_state = finetuned.state_dict(), pretrained.state_dict()
    expected = {}
    for block in range(len(pretrained.clip.visual.transformer.resblocks)):
        for proj in ADAPTED:
            prefix = f"clip.visual.transformer.resblocks.{block}.attn.{proj}"
            delta = state[f"{prefix}.lora_B.default.weight"] @ state[f"{prefix}.lora_A.default.weight"]
            merged = state[f"{prefix}.base_layer.weight"] + LORA_SCALE * delta
            expected[block, proj] = (1 - alpha) * pre_state[f"{prefix}.weight"] + alpha * merged
    expected_proj = (1 - alpha) * pretrained.clip.visual.proj + alpha * finetuned.clip.visual.proj
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(7, 96, generator=generator)

    with interpolated(finetuned, pretrained, alpha) as model, torch.no_grad():
        for (block, proj), weight in expected.items():
            layer = _lora_layer(model, block, proj)
            assert layer.scaling["default"] == alpha * LORA_SCALE  # peft's per-adapter scaling carries alpha
            effective = layer.base_layer.weight + layer.get_delta_weight("default")
            torch.testing.assert_close(effective, weight, atol=1e-6, rtol=1e-6)
            torch.testing.assert_close(layer(x), F.linear(x, weight, layer.base_layer.bias), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(model.clip.visual.proj, expected_proj, atol=1e-6, rtol=1e-6)
        features = model.image_features(tiny_images)

    # the whole image tower: a plain model holding the hand-interpolated merged weights
    by_hand = copy.deepcopy(pretrained)
    with torch.no_grad():
        for (block, proj), weight in expected.items():
            getattr(by_hand.clip.visual.transformer.resblocks[block].attn, proj).weight.copy_(weight)
        by_hand.clip.visual.proj.copy_(expected_proj)
        torch.testing.assert_close(features, by_hand.image_features(tiny_images), atol=1e-5, rtol=1e-5)
    assert all(_lora_layer(finetuned, b, p).scaling["default"] == LORA_SCALE for b, p in expected)


def test_full_ft_half_way_is_the_hand_computed_average(tiny_images):
    finetuned, pretrained = _finetuned("full"), _pretrained()
    ft_state, pre_state = finetuned.state_dict(), pretrained.state_dict()
    averaged = copy.deepcopy(pretrained)
    average = {
        key: (pre_state[key] + ft_state[key]) / 2
        for key in ft_state
        if key.startswith("clip.visual.") and ft_state[key].is_floating_point()
    }
    assert "clip.visual.proj" in average and "clip.visual.conv1.weight" in average
    averaged.load_state_dict(average, strict=False)
    averaged.head.load_state_dict(finetuned.head.state_dict())
    expected_features, expected_logits = _outputs(averaged, tiny_images)
    with interpolated(finetuned, pretrained, 0.5) as model:
        inside = model.state_dict()
        for key, value in average.items():
            torch.testing.assert_close(inside[key], value, atol=1e-7, rtol=1e-6)
        features, logits = _outputs(model, tiny_images)
    torch.testing.assert_close(features, expected_features, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(logits, expected_logits, atol=1e-6, rtol=1e-5)


def test_text_tower_and_head_are_the_finetuned_models_own_inside_the_block():
    finetuned, pretrained = _finetuned("full"), _pretrained()
    before = {k: v.clone() for k, v in finetuned.state_dict().items() if not k.startswith("clip.visual.")}
    with interpolated(finetuned, pretrained, 0.3) as model:
        inside = model.state_dict()
        assert all(torch.equal(inside[k], v) for k, v in before.items())
        assert not torch.equal(inside["head.weight"], pretrained.head.weight)


@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_the_models_passed_in_are_unchanged_afterwards(method, alpha, tiny_images):
    finetuned, pretrained = _finetuned(method), _pretrained()
    ft_saved, pre_saved = _state(finetuned), _state(pretrained)
    features, logits = _outputs(finetuned, tiny_images)
    with interpolated(finetuned, pretrained, alpha) as model:
        _outputs(model, tiny_images)
    _assert_same_state(finetuned, ft_saved)
    _assert_same_state(pretrained, pre_saved)
    after_features, after_logits = _outputs(finetuned, tiny_images)
    assert torch.equal(after_features, features) and torch.equal(after_logits, logits)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_the_finetuned_model_is_restored_when_the_block_raises(method):
    finetuned, pretrained = _finetuned(method), _pretrained()
    saved = _state(finetuned)
    with pytest.raises(RuntimeError, match="evaluation failed"):
        with interpolated(finetuned, pretrained, 0.5):
            raise RuntimeError("evaluation failed")
    _assert_same_state(finetuned, saved)


def test_dtypes_are_kept_and_the_pretrained_model_may_differ_in_dtype(tiny_images):
    finetuned, pretrained = _finetuned("full").double(), _pretrained()  # pretrained stays fp32
    dtypes = {key: value.dtype for key, value in finetuned.state_dict().items()}
    reference = copy.deepcopy(pretrained).double()
    with interpolated(finetuned, pretrained, 0.0) as model:
        assert {key: value.dtype for key, value in model.state_dict().items()} == dtypes
        features = _outputs(model, tiny_images.double())[0]
    assert torch.equal(features, _outputs(reference, tiny_images.double())[0])
    with interpolated(finetuned, pretrained, 0.5) as model:
        assert {key: value.dtype for key, value in model.state_dict().items()} == dtypes


@pytest.mark.parametrize("alpha", [-0.1, 1.0001, 2, float("nan"), float("inf"), "0.5x", None, True])
def test_alpha_outside_the_unit_interval_is_refused(alpha):
    finetuned, pretrained = _finetuned("full"), _pretrained()
    saved = _state(finetuned)
    with pytest.raises(ValueError, match="alpha"):
        with interpolated(finetuned, pretrained, alpha):
            pass
    _assert_same_state(finetuned, saved)


def test_check_alpha_accepts_the_interval_and_its_ends():
    assert [check_alpha(a) for a in (0, 0.5, 1, torch.tensor(0.25))] == [0.0, 0.5, 1.0, 0.25]


def test_a_pretrained_model_with_adapters_is_refused():
    with pytest.raises(ValueError, match="pretrained model has adapters.*without apply_method"):
        with interpolated(_finetuned("lora"), make_tiny("lora"), 0.5):
            pass


def test_different_backbone_depths_are_refused():
    pretrained = _pretrained()
    pretrained.clip.visual.transformer.resblocks = pretrained.clip.visual.transformer.resblocks[:-1]
    for method in ("full", "lora"):
        finetuned = _finetuned(method)
        saved = _state(finetuned)
        with pytest.raises(InterpolationError, match="differ in structure.*different backbones"):
            with interpolated(finetuned, pretrained, 0.5):
                pass
        _assert_same_state(finetuned, saved)


def test_different_backbone_widths_are_refused():
    pretrained = _pretrained()
    pretrained.clip.visual.proj = nn.Parameter(pretrained.clip.visual.proj[:, :32].clone())
    with pytest.raises(ValueError, match=r"differ in shape: proj is \(96, 64\) fine-tuned but \(96, 32\)"):
        with interpolated(_finetuned("full"), pretrained, 0.5):
            pass


def test_a_lora_run_with_another_base_is_refused():
    other_base = build_classifier(BackboneSpec("clipdrift-tiny", init_seed=1), 5, seed=0)
    with pytest.raises(ValueError, match="not the base this adapter run was trained on"):
        with interpolated(_finetuned("lora"), other_base, 0.5):
            pass


def test_the_same_model_twice_is_refused():
    model = _finetuned("full")
    with pytest.raises(ValueError, match="same model object"):
        with interpolated(model, model, 0.5):
            pass


def test_a_merged_lora_adapter_is_refused():
    finetuned = _finetuned("lora")
    _lora_layer(finetuned, 0, "q_proj").merge()
    with pytest.raises(ValueError, match="merged into its base weights"):
        with interpolated(finetuned, _pretrained(), 0.5):
            pass


@pytest.mark.cuda
@pytest.mark.parametrize("method", ["full", "lora"])
def test_on_the_gpu_with_the_pretrained_model_left_on_the_cpu(method, tiny_images):
    finetuned, pretrained = _finetuned(method).cuda(), _pretrained()  # pretrained stays on the CPU
    images = tiny_images.cuda()
    saved = _state(finetuned)
    features = _outputs(finetuned, images)[0]
    reference = _outputs(copy.deepcopy(pretrained).cuda(), images)[0]
    with interpolated(finetuned, pretrained, 0.0) as model:
        assert all(t.device.type == "cuda" for t in model.state_dict().values())
        torch.testing.assert_close(_outputs(model, images)[0], reference, atol=1e-6, rtol=1e-5)
    with interpolated(finetuned, pretrained, 1.0) as model:
        assert torch.equal(_outputs(model, images)[0], features)
    _assert_same_state(finetuned, saved)
