"""Adapter-aware checkpoints: safetensors + metadata that rebuild the exact fine-tuned model.

A LoRA checkpoint holds only what changed (adapters, projection, head) and names its base
backbone; a Full FT (or lp-ft) checkpoint holds the image tower, projection and head. Nothing is loaded
through pickle.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import torch

import clipdrift
from clipdrift.core.errors import UserFacingError
from clipdrift.core.io import ArtifactError, read_json, read_safetensors, write_safetensors
from clipdrift.model.adapters import MethodConfig, apply_method, checkpoint_keys, trainable_state
from clipdrift.model.backbones import BackboneSpec, CLIPClassifier, build_classifier
from clipdrift.model.openclip import open_clip

FORMAT_VERSION = 2  # 2: written with an integrity digest (clipdrift.core.io)


class CheckpointError(ArtifactError):
    """A checkpoint does not fit the model it should restore."""


def software_versions() -> dict[str, str]:
    return {
        "clipdrift": clipdrift.__version__,
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "peft": version("peft"),  # metadata only: importing peft costs seconds
    }


STORED_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def save_classifier(path, model: CLIPClassifier, backbone: BackboneSpec, method: MethodConfig,
                    seed: int, config_hash: str = "", extra: dict | None = None, stored_dtype: str = "float32") -> None:
    """Write the method's trainable state of ``model`` with everything needed to rebuild it.

    ``stored_dtype="float16"`` halves the disk of a snapshot (e.g. a Full FT run's per-epoch
    weights): floating tensors are rounded to fp16 and cast back to the model's dtype on load.
    """
    if stored_dtype not in STORED_DTYPES:
        raise ValueError(f"stored_dtype {stored_dtype!r} is unknown: use one of {sorted(STORED_DTYPES)}")
    state = trainable_state(model, method)
    if stored_dtype != "float32":
        state = {k: v.to(STORED_DTYPES[stored_dtype]) if v.is_floating_point() else v for k, v in state.items()}
    metadata = {
        "format_version": FORMAT_VERSION,
        "backbone": {"name": backbone.name, "pretrained": backbone.pretrained, "init_seed": backbone.init_seed},
        "method": method.to_dict(),
        "n_classes": model.n_classes,
        "seed": seed,
        "config_hash": config_hash,
        "versions": software_versions(),
        "extra": extra or {},
        "stored_dtype": stored_dtype,
    }
    write_safetensors(path, state, metadata)


def load_classifier(path, base: BackboneSpec | None = None) -> tuple[CLIPClassifier, dict]:
    """Rebuild the classifier saved at ``path`` (eval mode) and return it with its metadata.

    ``base`` replaces the recorded backbone reference (e.g. a moved weights file or the
    test-only random weights); its model name must match the checkpoint's, and for random
    weights so must its ``init_seed``. The file's digest is checked (:func:`read_safetensors`)
    and its metadata validated before anything is built: every problem is a
    :class:`CheckpointError` naming the file, the field and the fix.
    """
    tensors, metadata = read_safetensors(path)
    recorded, method, n_classes, seed = _validated(path, metadata)
    if metadata.get("stored_dtype", "float32") != "float32":  # a half-precision snapshot: back to fp32
        tensors = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    base = _base_for(path, recorded, base)
    model = apply_method(build_classifier(base, n_classes, seed=seed), method, seed=seed)  # frozen adapter tensors as drawn
    _load_exact(model, tensors, checkpoint_keys(model, method), path, metadata)
    return model.eval(), metadata


def _base_for(path, recorded: BackboneSpec, base: BackboneSpec | None) -> BackboneSpec:
    if base is None:
        return recorded
    if base.name != recorded.name:
        raise CheckpointError(
            f"checkpoint {path} was made on backbone {recorded.name!r}, not {base.name!r}: "
            "load it with the backbone it was trained from."
        )
    if base.pretrained is None and recorded.pretrained is None and base.init_seed != recorded.init_seed:
        raise CheckpointError(
            f"checkpoint {path} was made on random {recorded.name} weights drawn from init_seed "
            f"{recorded.init_seed}, not {base.init_seed}: load it with the base it was trained from."
        )
    return base


# ---------------------------------------------------------------------------------------------
# Metadata validation: the digest proves the file is what was written; these checks prove that
# what was written is a checkpoint this version can rebuild.
# ---------------------------------------------------------------------------------------------

def _validated(path, metadata) -> tuple[BackboneSpec, MethodConfig, int, int]:
    """The backbone, method, n_classes and seed recorded in ``metadata``, each checked."""
    if not isinstance(metadata, dict):
        raise _bad_field(path, "(metadata)", f"must be a JSON object, got {type(metadata).__name__}")
    _check_format_version(path, _field(path, metadata, "format_version", int))
    backbone = _backbone_field(path, _field(path, metadata, "backbone", dict))
    method = _method_field(path, _field(path, metadata, "method", dict))
    n_classes = _field(path, metadata, "n_classes", int)
    if n_classes < 1:
        raise _bad_field(path, "n_classes", f"must be a positive integer, got {n_classes}")
    seed = _field(path, metadata, "seed", int)
    for name, kind in (("config_hash", str), ("versions", dict), ("extra", dict)):
        _field(path, metadata, name, kind)
    if metadata.get("stored_dtype", "float32") not in STORED_DTYPES:  # absent: written before snapshots
        raise _bad_field(path, "stored_dtype", f"must be one of {sorted(STORED_DTYPES)}, got {metadata['stored_dtype']!r}")
    return backbone, method, n_classes, seed


def _check_format_version(path, found: int) -> None:
    if found < FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format_version {found}, from an older clipdrift; this one reads "
            f"format {FORMAT_VERSION}. Delete it and rerun its fine-tune."
        )
    if found > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format_version {found}, from a newer clipdrift; this one reads "
            f"format {FORMAT_VERSION}. Upgrade clipdrift, or delete it and rerun its fine-tune."
        )


def _backbone_field(path, recorded: dict) -> BackboneSpec:
    name = _field(path, recorded, "name", str, prefix="backbone.")
    pretrained = _field(path, recorded, "pretrained", (str, type(None)), prefix="backbone.")
    init_seed = _field(path, recorded, "init_seed", int, prefix="backbone.")
    if not name:
        raise _bad_field(path, "backbone.name", "is empty")
    return BackboneSpec(name, pretrained, init_seed=init_seed)


# Every MethodConfig field, as save_classifier writes it (to_dict): a field added there and not
# here makes every new checkpoint fail to load, which the round-trip tests catch.
_METHOD_FIELD_TYPES = {
    "method": str,
    "lora_r": int,
    "lora_alpha": (int, float),
    "lora_dropout": (int, float),
    "lora_targets": list,
    "train_projection": bool,
}
# Fields added since format 2 was first written (lp-ft): a checkpoint written before them lacks
# them and loads with MethodConfig's defaults; one that has them gets them type-checked.
_METHOD_OPTIONAL_FIELD_TYPES = {
    "lp_epochs": (int, type(None)),
    "lp_train_projection": bool,
    "freeze_blocks": int,
    "freeze_embeddings": bool,
    "peft_type": (str, type(None)),
    "peft_options": dict,
}


def _method_field(path, recorded: dict) -> MethodConfig:
    required, known = set(_METHOD_FIELD_TYPES), set(_METHOD_FIELD_TYPES) | set(_METHOD_OPTIONAL_FIELD_TYPES)
    if not required <= set(recorded) <= known:
        missing, unknown = sorted(required - set(recorded)), sorted(set(recorded) - known)
        raise _bad_field(path, "method", f"must hold exactly {sorted(required)} (and optionally "
                                         f"{sorted(_METHOD_OPTIONAL_FIELD_TYPES)}): missing {missing}, unknown {unknown}")
    for name, kind in _METHOD_FIELD_TYPES.items():
        _field(path, recorded, name, kind, prefix="method.")
    for name, kind in _METHOD_OPTIONAL_FIELD_TYPES.items():
        if name in recorded:
            _field(path, recorded, name, kind, prefix="method.")
    if not all(isinstance(target, str) for target in recorded["lora_targets"]):
        raise _bad_field(path, "method.lora_targets", f"must be a list of strings, got {recorded['lora_targets']!r}")
    if not 0 <= recorded["lora_dropout"] < 1:
        raise _bad_field(path, "method.lora_dropout", f"must be in [0, 1), got {recorded['lora_dropout']!r}")
    if not math.isfinite(recorded["lora_alpha"]):
        raise _bad_field(path, "method.lora_alpha", f"must be a finite number, got {recorded['lora_alpha']!r}")
    try:
        return MethodConfig.from_dict(recorded)
    except ValueError as error:  # an unknown method or target, a rank below 1, lp-ft without lp_epochs
        raise _bad_field(path, "method", f"is invalid ({error})") from error


def _field(path, record: dict, name: str, kind, prefix: str = ""):
    """``record[name]``, refused unless present and of type ``kind`` (a bool is not an int here)."""
    if name not in record:
        raise _bad_field(path, prefix + name, "is missing")
    value = record[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        expected = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
        raise _bad_field(path, prefix + name, f"must be {expected}, got {value!r}")
    return value


def _bad_field(path, field: str, problem: str) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {path}: metadata field {field!r} {problem}. The file does not hold a checkpoint "
        "this clipdrift can rebuild; delete it and rerun its fine-tune."
    )


# ---------------------------------------------------------------------------------------------
# Tensors
# ---------------------------------------------------------------------------------------------

def _load_exact(model: CLIPClassifier, tensors: dict, expected_keys: list[str], path, metadata: dict) -> None:
    missing = sorted(set(expected_keys) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected_keys))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path} does not match its model: missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''} ({len(missing)}), unexpected {unexpected[:5]} "
            f"({len(unexpected)}). It was written by another method or backbone; rerun its fine-tune."
        )
    state = model.state_dict()
    wrong = [k for k in expected_keys if tensors[k].shape != state[k].shape or tensors[k].dtype != state[k].dtype]
    if wrong:
        raise CheckpointError(_mismatch_message(path, wrong[0], tensors[wrong[0]], state[wrong[0]], metadata))
    model.load_state_dict(tensors, strict=False)


def _mismatch_message(path, key: str, saved: torch.Tensor, expected: torch.Tensor, metadata: dict) -> str:
    found = (
        f"{key} has shape {tuple(saved.shape)} ({saved.dtype}), the model built from its metadata "
        f"expects shape {tuple(expected.shape)} ({expected.dtype})"
    )
    return (
        f"checkpoint {path} does not fit its own metadata: {_mismatch_cause(key, saved, expected, metadata)}; "
        f"{found}. Delete it and rerun its fine-tune."
    )


def _mismatch_cause(key: str, saved: torch.Tensor, expected: torch.Tensor, metadata: dict) -> str:
    """The recorded field that disagrees with the tensors, where the shapes tell which."""
    if saved.dtype != expected.dtype:
        return "its tensors are not in the dtype clipdrift's fine-tune writes"
    if key.startswith("head.") and saved.shape[1:] == expected.shape[1:]:
        return f"its head has {saved.shape[0]} classes but metadata n_classes is {metadata['n_classes']}"
    rank_differs = ("lora_A" in key and saved.shape[1:] == expected.shape[1:]) or (
        "lora_B" in key and saved.shape[:1] == expected.shape[:1]
    )
    if rank_differs:
        return f"its LoRA rank differs from metadata method.lora_r = {metadata['method']['lora_r']}"
    return (
        f"it was made on another backbone geometry than {metadata['backbone']['name']!r} builds now "
        "(another backbone, or that model config changed since)"
    )


def load_backbone_spec(descriptor_path) -> BackboneSpec:
    """The :class:`BackboneSpec` recorded in a study's backbone descriptor (``backbone.json``)."""
    descriptor = read_json(descriptor_path)
    return BackboneSpec(descriptor["name"], descriptor["pretrained"], descriptor.get("cache_dir"))


def kept_epoch_loaders(directory, epochs: list[int], base, diverged: bool = False) -> list[tuple[int, Callable]]:
    """(epoch, loader) for each measured epoch kept in ``directory`` (a run's ``epochs/``).

    A missing epoch is an error, unless the run diverged before reaching it (then it has none).
    """
    loaders, missing = [], []
    for epoch in epochs:
        path = Path(directory) / f"epoch{epoch}.safetensors"
        if path.is_file():
            loaders.append((epoch, lambda path=path: load_classifier(path, base=base)[0]))
        else:
            missing.append(epoch)
    if missing and not diverged:
        raise UserFacingError(f"epochs {missing} are not kept in {directory}: the fine-tune kept other epochs "
                              "(curves.keep_epochs); rerun it with --forcerun finetune")
    return loaders
