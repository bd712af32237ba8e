"""The image tower's weight matrices as a run computes with them: every block's attention
projections and MLP matrices and the visual projection, each with the adapters it carries merged
in by peft's own merge (``W + ΔW`` for LoRA; a rescaled or rotated ``W`` for (IA)³, DoRA, OFT),
in ``nn.Linear``'s layout (one row per output unit). The weight-space drift measures
(:mod:`clipdrift.measure.weights`) compare these with the pretrained model's.

No file I/O. The merge is computed, never written into the model, except inside
:func:`written_tower`, which restores what it wrote.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
from torch import nn

from clipdrift.model.backbones import CLIPClassifier, image_tower_blocks
from clipdrift.model.methods import is_adapter_parameter, method

# Each block's matrices, by the names of their modules; the projection is layer PROJECTION_LAYER.
BLOCK_MATRICES = ("q_proj", "k_proj", "v_proj", "out_proj", "c_fc", "c_proj")
PROJECTION = "proj"
PROJECTION_LAYER = -1


def _tower_modules(model: CLIPClassifier) -> dict[tuple[int, str], nn.Module]:
    """Every block's matrices' modules (plain linears, or peft layers wrapping them), by key."""
    return {key: getattr(parent, key[1]) for key, parent in _tower_parents(model).items()}


def _tower_parents(model: CLIPClassifier) -> dict[tuple[int, str], nn.Module]:
    """The module holding each block matrix's module (its attention, its MLP), by key."""
    parents = {}
    for index, block in enumerate(image_tower_blocks(model.clip)):
        for name, _ in block.named_modules():
            parent, _, leaf = name.rpartition(".")
            if leaf in BLOCK_MATRICES and "base_layer" not in name:
                parents[(index, leaf)] = block.get_submodule(parent)
    return parents


def _adapted(model: CLIPClassifier) -> bool:
    return any(is_adapter_parameter(name) for name, _ in model.named_parameters())


def tower_matrices(model: CLIPClassifier) -> dict[tuple[int, str], torch.Tensor]:
    """``{(block, matrix): weight}`` of the image tower, adapters merged, float32 on the CPU;
    the visual projection as ``(PROJECTION_LAYER, "proj")``, transposed to (out, in). The same
    keys for every classifier of a backbone, in the same order."""
    adapted = _adapted(model)
    matrices = {key: _merged(module, adapted) for key, module in _tower_modules(model).items()}
    matrices[(PROJECTION_LAYER, PROJECTION)] = model.clip.visual.proj.detach().T.float().cpu()
    return matrices


def lora_ranks(model: CLIPClassifier) -> dict[tuple[int, str], int]:
    """The rank ``r`` of each matrix a LoRA adapter adapts, where the change from the pretrained
    matrix has rank at most ``r`` (LoRA, rsLoRA); none for other matrices, for DoRA (its magnitudes
    rescale whole rows), for a start that rewrote the base (PiSSA, OLoRA) or other adapters."""
    settings = getattr(model, "clipdrift_method", None)
    if not _adapted(model) or settings is None or not _rank_bounded(method(settings.method)):
        return {}
    from peft.tuners.lora import LoraLayer

    return {key: int(module.r[module.active_adapters[0]]) for key, module in _tower_modules(model).items()
            if isinstance(module, LoraLayer)}


def _rank_bounded(entry) -> bool:
    return entry.adapter == "LoraConfig" and not {"use_dora", "init_lora_weights"} & set(entry.adapter_options)


@contextlib.contextmanager
def written_tower(model: CLIPClassifier, matrices: dict[tuple[int, str], torch.Tensor]) -> Iterator[CLIPClassifier]:
    """``model`` computing with ``matrices`` (some keys of :func:`tower_matrices`, merged weights)
    in place of its own, restored bit for bit on exit. A plain matrix is written in place; an
    adapted one is computed by a plain linear holding it (and the bias the adapters' merge gives)
    put where the adapted linear was. A matrix equal to the model's own is not written at all."""
    current, parents, adapted, saved, swapped = tower_matrices(model), _tower_parents(model), _adapted(model), [], []
    try:
        for key, new in matrices.items():
            new = new.detach().float().cpu()
            if torch.equal(new, current[key]):
                continue
            if key == (PROJECTION_LAYER, PROJECTION):
                target, value = model.clip.visual.proj, new.T
            elif adapted and _is_tuner_layer(module := getattr(parents[key], key[1])):
                swapped.append((parents[key], key[1], module))
                setattr(parents[key], key[1], _plain_linear(module, new))
                continue
            else:
                target, value = getattr(parents[key], key[1]).weight, new
            saved.append((target, target.detach().clone()))
            with torch.no_grad():
                target.copy_(value.to(target))
        yield model
    finally:
        with torch.no_grad():
            for target, value in reversed(saved):
                target.copy_(value)
        for parent, name, module in reversed(swapped):
            setattr(parent, name, module)


def _plain_linear(adapted: nn.Module, weight: torch.Tensor) -> nn.Linear:
    """A copy of an adapted linear's base layer holding ``weight`` and the adapters' merged bias."""
    plain = copy.deepcopy(adapted.get_base_layer())
    with torch.no_grad():
        plain.weight.copy_(weight.to(plain.weight))
        if plain.bias is not None:
            plain.bias.copy_(merged_linear(adapted)["bias"])
    return plain


def _is_tuner_layer(module: nn.Module) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer  # asked only where adapters exist (seconds to import)

    return isinstance(module, BaseTunerLayer)


def merged_linear(module: nn.Module) -> dict[str, torch.Tensor | None]:
    """An adapted linear's ``weight`` and ``bias`` with its active adapters merged by peft's own
    ``merge`` (on a copy: the module is untouched), in the module's dtype and device."""
    merged = copy.deepcopy(module)
    merged.merge(adapter_names=list(module.active_adapters))
    base = merged.get_base_layer()
    return {"weight": base.weight.detach(), "bias": None if base.bias is None else base.bias.detach()}


def _merged(module: nn.Module, adapted: bool) -> torch.Tensor:
    """A linear's weight as the run computes with it (adapters merged), float32 on the CPU."""
    if adapted and _is_tuner_layer(module):
        return merged_linear(module)["weight"].float().cpu()
    return module.weight.detach().float().cpu()


def matrix_name(key: tuple[int, str]) -> str:
    """A matrix's name in a file of per-matrix tensors: ``"<layer>.<matrix>"`` (``"-1.proj"``)."""
    return f"{key[0]}.{key[1]}"


def matrix_key(name: str) -> tuple[int, str]:
    """The inverse of :func:`matrix_name`."""
    layer, matrix = name.split(".", 1)
    return int(layer), matrix
