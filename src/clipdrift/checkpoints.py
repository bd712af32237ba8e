"""Adapter-aware checkpoints: safetensors + metadata that rebuild the exact fine-tuned model.

A LoRA checkpoint holds only what changed (adapters, projection, head) and names its base
backbone; a Full FT checkpoint holds the image tower, projection and head. Nothing is loaded
through pickle.
"""

from __future__ import annotations

from importlib.metadata import version

import open_clip
import torch

import clipdrift
from clipdrift.adapters import MethodConfig, apply_method, checkpoint_keys, trainable_state
from clipdrift.backbones import BackboneSpec, CLIPClassifier, build_classifier
from clipdrift.io import ArtifactError, read_safetensors, write_safetensors

FORMAT_VERSION = 1


class CheckpointError(ArtifactError):
    """A checkpoint does not fit the model it should restore."""


def software_versions() -> dict[str, str]:
    return {
        "clipdrift": clipdrift.__version__,
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "peft": version("peft"),  # metadata only: importing peft costs seconds
    }


def save_classifier(path, model: CLIPClassifier, backbone: BackboneSpec, method: MethodConfig,
                    seed: int, config_hash: str = "", extra: dict | None = None) -> None:
    """Write the method's trainable state of ``model`` with everything needed to rebuild it."""
    metadata = {
        "format_version": FORMAT_VERSION,
        "backbone": {"name": backbone.name, "pretrained": backbone.pretrained, "init_seed": backbone.init_seed},
        "method": method.to_dict(),
        "n_classes": model.n_classes,
        "seed": seed,
        "config_hash": config_hash,
        "versions": software_versions(),
        "extra": extra or {},
    }
    write_safetensors(path, trainable_state(model, method), metadata)


def load_classifier(path, base: BackboneSpec | None = None) -> tuple[CLIPClassifier, dict]:
    """Rebuild the classifier saved at ``path`` (eval mode) and return it with its metadata.

    ``base`` replaces the recorded backbone reference (e.g. a moved weights file or the
    test-only random weights); its model name must match the checkpoint's.
    """
    tensors, metadata = read_safetensors(path)
    recorded = metadata.get("backbone") or {}
    if base is None:
        base = BackboneSpec(recorded.get("name", ""), recorded.get("pretrained"), init_seed=recorded.get("init_seed", 0))
    elif base.name != recorded.get("name"):
        raise CheckpointError(
            f"checkpoint {path} was made on backbone {recorded.get('name')!r}, not {base.name!r}: "
            "load it with the backbone it was trained from."
        )
    method = MethodConfig.from_dict(metadata["method"])
    model = apply_method(build_classifier(base, metadata["n_classes"], seed=metadata["seed"]), method)
    _load_exact(model, tensors, checkpoint_keys(model, method), path)
    return model.eval(), metadata


def _load_exact(model: CLIPClassifier, tensors: dict, expected_keys: list[str], path) -> None:
    missing = sorted(set(expected_keys) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected_keys))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path} does not match its model: missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''} ({len(missing)}), unexpected {unexpected[:5]} "
            f"({len(unexpected)}). It was written by another method or backbone; rerun its fine-tune."
        )
    state = model.state_dict()
    wrong_shape = [k for k in expected_keys if tensors[k].shape != state[k].shape]
    if wrong_shape:
        key = wrong_shape[0]
        raise CheckpointError(
            f"checkpoint {path} is from another backbone: {key} has shape {tuple(tensors[key].shape)}, "
            f"the model expects {tuple(state[key].shape)}."
        )
    model.load_state_dict(tensors, strict=False)
