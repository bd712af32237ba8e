"""Every supported backbone family, offline: a tiny random model built from each real open_clip
config (narrow and shallow, the real image size and patch grid kept) gets attention surgery equal
to the stock forward, attention capture equal to a manual computation, and LoRA on the
projections the study names. Image size, patch grid and mean/std come from the model."""

import copy
import json

import open_clip
import pytest
import torch

from clipdrift.model.adapters import MethodConfig, apply_method
from clipdrift.model.backbones import (
    BackboneSpec,
    build_classifier,
    capture_attention,
    convert_image_tower_attention,
    create_clip,
    image_preprocess_config,
    image_tower_blocks,
)
from clipdrift.pipeline.inputs import check_backbone_family, model_configs

FAMILIES = ["ViT-B-32", "ViT-B-32-quickgelu", "ViT-B-16", "ViT-B-16-plus-240", "ViT-L-14", "ViT-L-14-336",
            "ViT-H-14", "ViT-H-14-378-quickgelu", "ViT-M-16-alt", "ViT-g-14", "ViT-bigG-14"]


def _tiny(name: str, folder) -> str:
    """A tiny random open_clip config of family ``name``: width 64 in 2 blocks of 2 heads, the real
    image size, patch size, activation, layer scale and MLP ratio kept."""
    config = copy.deepcopy(model_configs()[name])
    config["vision_cfg"].update(width=64, layers=2, head_width=32)
    config["text_cfg"].update(width=32, heads=2, layers=1)
    config["embed_dim"] = 32
    tiny = f"tinyfamily-{name}"
    (folder / f"{tiny}.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder / f"{tiny}.json")
    return tiny


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model_configs")
    return {name: _tiny(name, folder) for name in FAMILIES}


@pytest.mark.parametrize("name", FAMILIES)
def test_each_supported_family_passes_the_parse_time_check(name):
    check_backbone_family(name, model_configs()[name])


@pytest.mark.parametrize("name", FAMILIES)
def test_surgery_equals_the_stock_forward_and_capture_equals_a_manual_attention(name, families):
    torch.manual_seed(0)
    clip = create_clip(BackboneSpec(families[name]))
    size = model_configs()[name]["vision_cfg"]["image_size"]
    patch = model_configs()[name]["vision_cfg"]["patch_size"]
    assert image_preprocess_config(clip)["size"] == (size, size)  # from the model, as every job reads it
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        stock = clip.encode_image(images)
        assert convert_image_tower_attention(clip) == 2
        inputs = []
        hook = image_tower_blocks(clip)[1].attn.register_forward_pre_hook(lambda _m, args: inputs.append(args[0]))
        with capture_attention(clip) as maps:
            converted = clip.encode_image(images)
        hook.remove()
    assert torch.allclose(converted, stock, atol=1e-5, rtol=1e-4)
    tokens = (size // patch) ** 2 + 1
    assert [m[0].shape for m in maps] == [(2, 2, tokens, tokens)] * 2
    attention = image_tower_blocks(clip)[1].attn
    x = inputs[0] if attention.batch_first else inputs[0].transpose(0, 1)
    q = attention.q_proj(x).view(2, tokens, 2, 32).transpose(1, 2)
    k = attention.k_proj(x).view(2, tokens, 2, 32).transpose(1, 2)
    manual = torch.softmax(q @ k.transpose(-2, -1) / 32**0.5, dim=-1)
    assert torch.allclose(maps[1][0], manual, atol=1e-6)


@pytest.mark.parametrize("name", ["ViT-B-16", "ViT-L-14-336", "ViT-H-14"])
def test_lora_finds_the_q_and_v_projections_of_every_block(name, families):
    model = apply_method(build_classifier(BackboneSpec(families[name]), n_classes=3, seed=0), MethodConfig(method="lora"))
    adapted = [n for n, _ in model.named_parameters() if "lora_A" in n]
    assert len(adapted) == 2 * 2 and all(("q_proj" in n or "v_proj" in n) and "visual" in n for n in adapted)
    assert model.image_features(torch.zeros(1, 3, *image_preprocess_config(model.clip)["size"])).shape == (1, 32)
