import pytest
import torch
from torch import nn

from clipdrift.model.backbones import (
    BackboneConfigError,
    BackboneSpec,
    BackboneUnavailableError,
    ExplicitAttention,
    capture_attention,
    convert_image_tower_attention,
    create_clip,
    explicit_attention_modules,
    image_preprocess_config,
)


@pytest.mark.parametrize("name", ["clipdrift-tiny", "ViT-B-32-quickgelu"])
def test_converted_attention_gives_the_original_image_features(name):
    torch.manual_seed(0)
    clip = create_clip(BackboneSpec(name))
    images = torch.randn(3, 3, *clip.visual.image_size)
    with torch.no_grad():
        original = clip.encode_image(images)
        assert convert_image_tower_attention(clip) == len(clip.visual.transformer.resblocks)
        converted = clip.encode_image(images)
    assert torch.allclose(converted, original, atol=1e-5, rtol=0)
    assert convert_image_tower_attention(clip) == 0  # idempotent
    # the text tower keeps its own nn.MultiheadAttention
    assert isinstance(clip.transformer.resblocks[0].attn, nn.MultiheadAttention)


def test_vit_b32_has_the_protocol_geometry():
    clip = create_clip(BackboneSpec("ViT-B-32-quickgelu"))
    convert_image_tower_attention(clip)
    with torch.no_grad(), capture_attention(clip) as maps:
        clip.encode_image(torch.zeros(1, 3, 224, 224))
    assert len(maps) == 12
    assert maps[0][0].shape == (1, 12, 50, 50)


def test_explicit_attention_matches_multihead_with_masks_and_sequence_first():
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(16, 4, batch_first=False)
    explicit = ExplicitAttention.from_multihead(mha)
    x = torch.randn(5, 2, 16)  # (tokens, batch, dim)
    mask = torch.triu(torch.ones(5, 5, dtype=torch.bool), diagonal=1)
    with torch.no_grad():
        for attn_mask in (None, mask, torch.zeros(5, 5).masked_fill(mask, float("-inf"))):
            expected = mha(x, x, x, need_weights=False, attn_mask=attn_mask)[0]
            assert torch.allclose(explicit(x, x, x, attn_mask=attn_mask)[0], expected, atol=1e-6)


def test_capture_probabilities_are_distributions_that_reproduce_the_output(tiny_images):
    torch.manual_seed(0)
    clip = create_clip(BackboneSpec("clipdrift-tiny"))
    convert_image_tower_attention(clip)
    block = clip.visual.transformer.resblocks[0]
    tokens = clip.visual._embeds(tiny_images)
    x = block.ln_1(tokens)
    attn = block.attn
    with torch.no_grad():
        plain, none = attn(x)
        attn.capture = True
        captured, probs = attn(x)
        attn.capture = False
        heads = lambda t: t.view(4, -1, attn.num_heads, attn.head_dim).transpose(1, 2)  # noqa: E731
        by_hand = (probs @ heads(attn.v_proj(x))).transpose(1, 2).reshape(x.shape)
    assert none is None
    assert probs.shape == (4, attn.num_heads, 17, 17)
    assert torch.allclose(probs.sum(-1), torch.ones(4, attn.num_heads, 17), atol=1e-6)
    assert (probs >= 0).all()
    assert torch.allclose(captured, plain, atol=1e-6)
    assert torch.allclose(attn.out_proj(by_hand), plain, atol=1e-6)


def test_capture_context_records_each_forward_and_cleans_up(tiny_images):
    clip = create_clip(BackboneSpec("clipdrift-tiny"))
    convert_image_tower_attention(clip)
    with torch.no_grad(), capture_attention(clip) as maps:
        clip.encode_image(tiny_images)
        clip.encode_image(tiny_images[:2])
    assert [len(layer) for layer in maps] == [2, 2, 2]
    assert maps[2][1].shape[0] == 2
    modules = explicit_attention_modules(clip)
    assert not any(m.capture or m._forward_hooks for m in modules)


def test_capture_requires_a_converted_tower():
    clip = create_clip(BackboneSpec("clipdrift-tiny"))
    with pytest.raises(BackboneConfigError, match="convert_image_tower_attention"):
        with capture_attention(clip):
            pass


def test_local_weights_file_is_loaded_exactly(tmp_path):
    from safetensors.torch import save_file

    source = create_clip(BackboneSpec("clipdrift-tiny", init_seed=3))
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    assert not torch.equal(create_clip(BackboneSpec("clipdrift-tiny")).visual.proj, source.visual.proj)
    loaded = create_clip(BackboneSpec("clipdrift-tiny", str(path)))
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_weights_clipdrift_wrote_are_verified_before_open_clip_loads_them(tmp_path):
    from clipdrift.core.io import ArtifactError, write_safetensors

    source = create_clip(BackboneSpec("clipdrift-tiny", init_seed=3))
    path = tmp_path / "backbone.safetensors"
    write_safetensors(path, {k: v.contiguous() for k, v in source.state_dict().items()}, {"kind": "backbone"})
    assert torch.equal(create_clip(BackboneSpec("clipdrift-tiny", str(path))).visual.proj, source.visual.proj)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x40  # one byte of one weight
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=f"{path}.*damaged"):
        create_clip(BackboneSpec("clipdrift-tiny", str(path)))


def test_preprocess_config_reports_size_and_clip_normalisation():
    cfg = image_preprocess_config(create_clip(BackboneSpec("clipdrift-tiny")))
    assert cfg["size"] == (32, 32)
    assert len(cfg["mean"]) == len(cfg["std"]) == 3


def test_unknown_model_name_names_the_config_key():
    with pytest.raises(BackboneConfigError, match="backbone.name 'ViT-B-99'"):
        create_clip(BackboneSpec("ViT-B-99"))


def test_unknown_tag_lists_the_known_ones():
    with pytest.raises(BackboneConfigError, match="openai"):
        create_clip(BackboneSpec("ViT-B-32-quickgelu", "no-such-tag"))


def test_quickgelu_mismatch_is_refused_with_the_fix():
    with pytest.raises(BackboneConfigError, match="ViT-B-32-quickgelu"):
        create_clip(BackboneSpec("ViT-B-32", "openai"))


def test_missing_local_file_is_reported(tmp_path):
    with pytest.raises(BackboneUnavailableError, match="does not exist"):
        create_clip(BackboneSpec("clipdrift-tiny", str(tmp_path / "absent.safetensors")))


def test_offline_missing_weights_say_where_and_how(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(BackboneUnavailableError) as caught:
        create_clip(BackboneSpec("ViT-B-32-quickgelu", "openai", cache_dir=str(tmp_path / "cache")))
    message = str(caught.value)
    assert "ViT-B-32-quickgelu" in message and "'openai'" in message
    assert str(tmp_path / "cache") in message and "HF_HOME=" in message
    assert "backbone.pretrained" in message and "open_clip.create_model" in message
