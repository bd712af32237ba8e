"""The image tower's weight matrices as a run computes with them: every block's attention
projections and MLP matrices and the visual projection, each with the adapters it carries merged
in (``W + ΔW``), in ``nn.Linear``'s layout (one row per output unit). The weight-space drift
measures (:mod:`clipdrift.measure.weights`) compare these with the pretrained model's.

No file I/O; nothing is modified (the merge is computed, never written into the model).
"""

from __future__ import annotations

import torch
from torch import nn

from clipdrift.model.backbones import CLIPClassifier, image_tower_blocks
from clipdrift.model.methods import is_adapter_parameter

# Each block's matrices, by the names of their modules; the projection is layer PROJECTION_LAYER.
BLOCK_MATRICES = ("q_proj", "k_proj", "v_proj", "out_proj", "c_fc", "c_proj")
PROJECTION = "proj"
PROJECTION_LAYER = -1


def tower_matrices(model: CLIPClassifier) -> dict[tuple[int, str], torch.Tensor]:
    """``{(block, matrix): weight}`` of the image tower, adapters merged, float32 on the CPU;
    the visual projection as ``(PROJECTION_LAYER, "proj")``, transposed to (out, in). The same
    keys for every classifier of a backbone, in the same order."""
    adapted = any(is_adapter_parameter(name) for name, _ in model.named_parameters())
    matrices = {}
    for index, block in enumerate(image_tower_blocks(model.clip)):
        for name, module in block.named_modules():
            leaf = name.rsplit(".", 1)[-1]
            if leaf in BLOCK_MATRICES:
                matrices[(index, leaf)] = _merged(module, adapted)
    matrices[(PROJECTION_LAYER, PROJECTION)] = model.clip.visual.proj.detach().T.float().cpu()
    return matrices


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
