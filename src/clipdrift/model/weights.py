"""The image tower's weight matrices as a run computes with them: every block's attention
projections and MLP matrices and the visual projection, each with the adapters it carries merged
in (``W + ΔW``), in ``nn.Linear``'s layout (one row per output unit). The weight-space drift
measures (:mod:`clipdrift.measure.weights`) compare these with the pretrained model's.

No file I/O. The merge is computed, never written into the model, except inside
:func:`written_tower`, which restores what it wrote.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from clipdrift.model.backbones import CLIPClassifier, image_tower_blocks
from clipdrift.model.methods import is_adapter_parameter

# Each block's matrices, by the names of their modules; the projection is layer PROJECTION_LAYER.
BLOCK_MATRICES = ("q_proj", "k_proj", "v_proj", "out_proj", "c_fc", "c_proj")
PROJECTION = "proj"
PROJECTION_LAYER = -1


def _tower_modules(model: CLIPClassifier) -> dict[tuple[int, str], nn.Module]:
    """Every block's matrices' modules (plain linears, or peft layers wrapping them), by key."""
    modules = {}
    for index, block in enumerate(image_tower_blocks(model.clip)):
        for name, module in block.named_modules():
            leaf = name.rsplit(".", 1)[-1]
            if leaf in BLOCK_MATRICES:
                modules[(index, leaf)] = module
    return modules


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
    """The rank ``r`` of each matrix a LoRA adapter adapts (none for other matrices or adapters)."""
    if not _adapted(model):
        return {}
    from peft.tuners.lora import LoraLayer

    return {key: int(module.r[module.active_adapters[0]]) for key, module in _tower_modules(model).items()
            if isinstance(module, LoraLayer)}


@contextlib.contextmanager
def written_tower(model: CLIPClassifier, matrices: dict[tuple[int, str], torch.Tensor]) -> Iterator[CLIPClassifier]:
    """``model`` computing with ``matrices`` (some keys of :func:`tower_matrices`, merged weights)
    in place of its own, written in place and restored bit for bit on exit. An adapted matrix is
    written into the weight under its adapters (the new matrix minus their change); a matrix equal
    to the model's own is not written at all."""
    current, modules, saved = tower_matrices(model), _tower_modules(model), []
    try:
        for key, new in matrices.items():
            new = new.detach().float().cpu()
            if torch.equal(new, current[key]):
                continue
            if key == (PROJECTION_LAYER, PROJECTION):
                target, value = model.clip.visual.proj, new.T
            else:
                module = modules[key]
                base = module.get_base_layer() if hasattr(module, "get_base_layer") else module
                target, value = base.weight, new - (current[key] - base.weight.detach().float().cpu())
            saved.append((target, target.detach().clone()))
            with torch.no_grad():
                target.copy_(value.to(target))
        yield model
    finally:
        with torch.no_grad():
            for target, value in reversed(saved):
                target.copy_(value)


def _merged(module: nn.Module, adapted: bool) -> torch.Tensor:
    """A linear's weight with every active adapter's ``get_delta_weight`` added (peft's own merge)."""
    if adapted:
        from peft.tuners.tuners_utils import BaseTunerLayer  # imported only where adapters exist (seconds)

        if isinstance(module, BaseTunerLayer):
            weight = module.get_base_layer().weight.detach().float()
            for adapter in module.active_adapters:
                weight = weight + module.get_delta_weight(adapter).detach().float()
            return weight.cpu()
    return module.weight.detach().float().cpu()


def matrix_name(key: tuple[int, str]) -> str:
    """A matrix's name in a file of per-matrix tensors: ``"<layer>.<matrix>"`` (``"-1.proj"``)."""
    return f"{key[0]}.{key[1]}"


def matrix_key(name: str) -> tuple[int, str]:
    """The inverse of :func:`matrix_name`."""
    layer, matrix = name.split(".", 1)
    return int(layer), matrix
