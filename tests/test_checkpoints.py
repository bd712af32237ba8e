import copy
import json
import re

import open_clip
import pytest
import torch
from tiny_models import TINY, make_tiny

from clipdrift.core.io import METADATA_KEY, ArtifactError, read_safetensors, write_safetensors
from clipdrift.model.adapters import MethodConfig
from clipdrift.model.backbones import BackboneSpec
from clipdrift.model.checkpoints import FORMAT_VERSION, CheckpointError, load_classifier, save_classifier

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
    with pytest.raises(ArtifactError, match=f"{re.escape(str(path))} is unreadable \\(truncated"):
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


# ---------------------------------------------------------------------------------------------
# Damaged metadata: a byte changed on disk is caught by the digest; metadata that was written
# wrong (valid digest) by the field checks. Either way the message names the file.
# ---------------------------------------------------------------------------------------------

def _named(path, rest: str) -> str:
    return re.escape(f"checkpoint {path}") + rest


def _edit_in_place(path, old: str, new: str) -> None:
    """Change the metadata text inside the file's header, keeping the file length."""
    def escaped(text: str) -> bytes:
        return text.replace('"', '\\"').encode()  # the metadata JSON is a string in the header

    data = path.read_bytes()
    assert data.count(escaped(old)) == 1 and len(old) == len(new), old
    path.write_bytes(data.replace(escaped(old), escaped(new)))


def _rewrite_metadata(path, change) -> None:
    """Rewrite the checkpoint with ``change(metadata)`` applied and a fresh, valid digest."""
    tensors, metadata = read_safetensors(path)
    change(metadata)
    write_safetensors(path, tensors, metadata)


@pytest.mark.parametrize("old, new", [
    ('"init_seed": 0', '"init_seed": 1'),
    ('"lora_alpha": 16', '"lora_alpha": 17'),
    ('"n_classes": 5', '"n_classes": 6'),
    (f'"format_version": {FORMAT_VERSION}', '"format_version": 1'),
    ('"lora_r": 8', '"lora_r": 4'),
])
def test_a_changed_metadata_byte_is_refused_as_damaged(tmp_path, tiny_images, old, new):
    _, path = _saved(tmp_path, "lora", tiny_images)
    _edit_in_place(path, old, new)
    with pytest.raises(ArtifactError, match=re.escape(str(path)) + " is damaged.*Delete it and rerun"):
        load_classifier(path)


def test_a_checkpoint_without_a_digest_is_refused_as_older(tmp_path, tiny_images):
    from safetensors.torch import save_file

    _, path = _saved(tmp_path, "lora", tiny_images)
    tensors, metadata = read_safetensors(path)
    save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps({**metadata, "format_version": 1})})
    with pytest.raises(ArtifactError, match=re.escape(str(path)) + " carries no integrity digest.*older"):
        load_classifier(path)


@pytest.mark.parametrize("version, problem", [
    (1, " has format_version 1, from an older clipdrift"),
    (FORMAT_VERSION + 1, f" has format_version {FORMAT_VERSION + 1}, from a newer clipdrift"),
    ("2", ": metadata field 'format_version' must be int, got '2'"),
])
def test_an_unsupported_format_version_is_refused(tmp_path, tiny_images, version, problem):
    _, path = _saved(tmp_path, "full", tiny_images)
    _rewrite_metadata(path, lambda m: m.update(format_version=version))
    with pytest.raises(CheckpointError, match=_named(path, re.escape(problem))):
        load_classifier(path)


def test_metadata_that_is_not_an_object_is_refused(tmp_path, tiny_images):
    _, path = _saved(tmp_path, "lora", tiny_images)
    tensors, _ = read_safetensors(path)
    write_safetensors(path, tensors, [1, 2])
    with pytest.raises(CheckpointError, match=_named(path, ": metadata field '\\(metadata\\)' must be a JSON object")):
        load_classifier(path)


@pytest.mark.parametrize("field, change", [
    ("format_version", lambda m: m.pop("format_version")),
    ("backbone", lambda m: m.update(backbone="clipdrift-tiny")),
    ("backbone.name", lambda m: m["backbone"].update(name=7)),
    ("backbone.name", lambda m: m["backbone"].update(name="")),
    ("backbone.pretrained", lambda m: m["backbone"].update(pretrained=3)),
    ("backbone.init_seed", lambda m: m["backbone"].update(init_seed="0")),
    ("backbone.init_seed", lambda m: m["backbone"].pop("init_seed")),
    ("method", lambda m: m.update(method="lora")),
    ("method", lambda m: m["method"].pop("lora_alpha")),
    ("method", lambda m: m["method"].update(lora_beta=1)),
    ("method", lambda m: m["method"].update(method="qlora")),
    ("method", lambda m: m["method"].update(lora_r=0)),
    ("method.lora_alpha", lambda m: m["method"].update(lora_alpha="16")),
    ("method.lora_alpha", lambda m: m["method"].update(lora_alpha=float("nan"))),
    ("method.lora_r", lambda m: m["method"].update(lora_r=8.0)),
    ("method.lora_dropout", lambda m: m["method"].update(lora_dropout=1.5)),
    ("method.lora_targets", lambda m: m["method"].update(lora_targets="q_proj")),
    ("method.lora_targets", lambda m: m["method"].update(lora_targets=[1])),
    ("method.train_projection", lambda m: m["method"].update(train_projection=1)),
    ("method.lp_epochs", lambda m: m["method"].update(lp_epochs="2")),
    ("method.lp_epochs", lambda m: m["method"].update(lp_epochs=True)),
    ("method.lp_train_projection", lambda m: m["method"].update(lp_train_projection=None)),
    ("method.freeze_blocks", lambda m: m["method"].update(freeze_blocks="6")),
    ("method", lambda m: m["method"].update(freeze_blocks=-1)),
    ("method", lambda m: m["method"].update(lp_epochs=0)),
    ("method", lambda m: m["method"].update(method="lp-ft")),  # lp-ft without lp_epochs
    ("n_classes", lambda m: m.update(n_classes=0)),
    ("n_classes", lambda m: m.update(n_classes=True)),
    ("seed", lambda m: m.update(seed=None)),
    ("config_hash", lambda m: m.pop("config_hash")),
])
def test_malformed_metadata_is_refused_naming_the_field(tmp_path, tiny_images, field, change):
    _, path = _saved(tmp_path, "lora", tiny_images)
    _rewrite_metadata(path, change)
    with pytest.raises(CheckpointError, match=_named(path, f": metadata field '{re.escape(field)}' .*rerun its fine-tune")):
        load_classifier(path)


def test_n_classes_that_disagrees_with_the_head_is_named_not_blamed_on_the_backbone(tmp_path, tiny_images):
    _, path = _saved(tmp_path, "lora", tiny_images)
    _rewrite_metadata(path, lambda m: m.update(n_classes=6))
    message = " does not fit its own metadata: its head has 5 classes but metadata n_classes is 6"
    with pytest.raises(CheckpointError, match=_named(path, message)) as error:
        load_classifier(path)
    assert "another backbone" not in str(error.value)


def test_lora_r_that_disagrees_with_the_adapters_is_named_not_blamed_on_the_backbone(tmp_path, tiny_images):
    _, path = _saved(tmp_path, "lora", tiny_images)
    _rewrite_metadata(path, lambda m: m["method"].update(lora_r=4))
    message = " does not fit its own metadata: its LoRA rank differs from metadata method.lora_r = 4"
    with pytest.raises(CheckpointError, match=_named(path, message)) as error:
        load_classifier(path)
    assert "another backbone" not in str(error.value)


def test_a_random_base_with_another_init_seed_is_refused(tmp_path, tiny_images):
    _, path = _saved(tmp_path, "lora", tiny_images)
    message = " was made on random clipdrift-tiny weights drawn from init_seed 0, not 3"
    with pytest.raises(CheckpointError, match=_named(path, message)):
        load_classifier(path, base=BackboneSpec("clipdrift-tiny", init_seed=3))
    loaded, _ = load_classifier(path, base=BackboneSpec("clipdrift-tiny"))  # the same base, given explicitly
    assert loaded.n_classes == 5


# ---------------------------------------------------------------------------------------------
# lp-ft (linear probe, then fine-tune): checkpoints like Full FT's, with the phase plan recorded
# ---------------------------------------------------------------------------------------------

def test_lp_ft_round_trip_gives_identical_logits_and_holds_what_full_ft_holds(tmp_path, tiny_images):
    method = MethodConfig("lp-ft", lp_epochs=2, lp_train_projection=True)
    model = _train_steps(make_tiny("lp-ft", seed=2, lp_epochs=2, lp_train_projection=True), tiny_images)
    path = tmp_path / "lp-ft.safetensors"
    save_classifier(path, model, TINY, method, seed=2)
    loaded, metadata = load_classifier(path)
    with torch.no_grad():
        assert torch.equal(loaded(tiny_images), model(tiny_images))
    assert MethodConfig.from_dict(metadata["method"]) == method
    assert metadata["method"]["lp_epochs"] == 2 and metadata["method"]["lp_train_projection"] is True
    _, full_path = _saved(tmp_path, "full", tiny_images)
    assert read_safetensors(path)[0].keys() == read_safetensors(full_path)[0].keys()


@pytest.mark.parametrize("method", ["full", "lora"])
def test_a_checkpoint_written_before_the_optional_fields_still_loads(tmp_path, tiny_images, method):
    model, path = _saved(tmp_path, method, tiny_images)
    _rewrite_metadata(path, lambda m: [m["method"].pop(k) for k in ("lp_epochs", "lp_train_projection", "freeze_blocks")])
    loaded, metadata = load_classifier(path)
    assert "lp_epochs" not in metadata["method"] and loaded.clipdrift_method.freeze_blocks == 0
    with torch.no_grad():
        assert torch.equal(loaded(tiny_images), model(tiny_images))


def test_a_half_precision_snapshot_loads_as_the_fp32_model_rounded_to_fp16(tmp_path):
    model = make_tiny("full", n_classes=3, seed=4)
    with torch.no_grad():
        model.clip.visual.proj.add_(0.01)
    path = tmp_path / "epoch1.safetensors"
    save_classifier(path, model, TINY, MethodConfig("full"), seed=4, stored_dtype="float16")
    loaded, metadata = load_classifier(path)
    assert metadata["stored_dtype"] == "float16"
    assert loaded.clip.visual.proj.dtype == torch.float32
    assert torch.equal(loaded.clip.visual.proj, model.clip.visual.proj.half().float())
    full = tmp_path / "full.safetensors"
    save_classifier(full, model, TINY, MethodConfig("full"), seed=4)
    assert path.stat().st_size < 0.6 * full.stat().st_size
    with pytest.raises(ValueError, match="stored_dtype 'int8' is unknown"):
        save_classifier(path, model, TINY, MethodConfig("full"), seed=4, stored_dtype="int8")


def test_a_frozen_block_variant_round_trips_with_its_freezing_recorded(tmp_path, tiny_images):
    method = MethodConfig("full", freeze_blocks=2)
    model = _train_steps(make_tiny("full", seed=2, freeze_blocks=2), tiny_images)
    path = tmp_path / "full-freeze2.safetensors"
    save_classifier(path, model, TINY, method, seed=2)
    loaded, metadata = load_classifier(path)
    assert metadata["method"]["freeze_blocks"] == 2 and loaded.clipdrift_method == method
    with torch.no_grad():
        assert torch.equal(loaded(tiny_images), model(tiny_images))
