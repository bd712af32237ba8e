import copy
import json

import open_clip
import pytest
import torch

from clipdrift.adapters import MethodConfig
from clipdrift.backbones import BackboneSpec
from clipdrift.checkpoints import CheckpointError, load_classifier, save_classifier
from clipdrift.io import ArtifactError, read_safetensors, write_safetensors
from conftest import TINY, make_tiny
from test_adapters import _train_steps


def _saved(tmp_path, method, images, base=TINY):
    model = _train_steps(make_tiny(method, seed=2), images)
    path = tmp_path / f"{method}.safetensors"
    save_classifier(path, model, base, MethodConfig(method), seed=2, config_hash="abc")
    return model, path


@pytest.mark.parametrize("method", ["full", "lora"])
def test_round_trip_gives_identical_logits(tmp_path, tiny_images, method):
    model, path = _saved(tmp_path, method, tiny_images)
    loaded, metadata = load_classifier(path)
    with torch.no_grad():
        assert torch.equal(loaded(tiny_images), model(tiny_images))
    assert metadata["method"]["method"] == method and metadata["seed"] == 2
    assert metadata["backbone"] == {"name": "clipdrift-tiny", "pretrained": None, "init_seed": 0}
    assert set(metadata["versions"]) >= {"torch", "open_clip", "peft"} and metadata["config_hash"] == "abc"


def test_lora_checkpoint_holds_only_what_changed(tmp_path, tiny_images):
    _, path = _saved(tmp_path, "lora", tiny_images)
    tensors, _ = read_safetensors(path)
    assert all("lora_" in k or k in {"clip.visual.proj", "head.weight", "head.bias"} for k in tensors)
    assert sum("lora_" in k for k in tensors) == 3 * 2 * 2  # layers x (q, v) x (A, B)


def test_full_checkpoint_holds_the_image_tower_not_the_text_tower(tmp_path, tiny_images):
    _, path = _saved(tmp_path, "full", tiny_images)
    tensors, _ = read_safetensors(path)
    assert "clip.visual.conv1.weight" in tensors
    assert not any(k.startswith("clip.transformer.") or k.startswith("clip.token_embedding") for k in tensors)


def test_truncated_checkpoint_is_refused(tmp_path, tiny_images):
    _, path = _saved(tmp_path, "full", tiny_images)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ArtifactError, match="truncated"):
        load_classifier(path)


def test_checkpoint_missing_keys_is_refused(tmp_path, tiny_images):
    _, path = _saved(tmp_path, "lora", tiny_images)
    tensors, metadata = read_safetensors(path)
    del tensors["head.bias"]
    write_safetensors(path, tensors, metadata)
    with pytest.raises(CheckpointError, match="missing.*head.bias"):
        load_classifier(path)


def test_checkpoint_from_another_backbone_is_refused(tmp_path, tiny_images):
    _, path = _saved(tmp_path, "full", tiny_images)
    with pytest.raises(CheckpointError, match="made on backbone 'clipdrift-tiny'"):
        load_classifier(path, base=BackboneSpec("ViT-B-32-quickgelu"))
    # same name recorded, different geometry: a wider registered config
    wider = copy.deepcopy(open_clip.get_model_config("clipdrift-tiny"))
    wider["vision_cfg"]["width"] = 64
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "clipdrift-test-wide.json").write_text(json.dumps(wider))
    open_clip.add_model_config(tmp_path / "cfg")
    tensors, metadata = read_safetensors(path)
    metadata["backbone"]["name"] = "clipdrift-test-wide"
    write_safetensors(path, tensors, metadata)
    with pytest.raises(CheckpointError, match="another backbone.*shape"):
        load_classifier(path)


def test_foreign_safetensors_file_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(2)}, str(path))
    with pytest.raises(ArtifactError, match="no clipdrift metadata"):
        load_classifier(path)
