"""AdaLoRA's rank schedule over a run: peft's own :class:`RankAllocator` stepped after every
optimiser step as peft's ``AdaLoraModel.update_and_allocate`` steps it (importance-scored
budget from ``init_r`` per matrix down to ``target_r`` on a cubic schedule between ``tinit`` and
``total_step - tfinal`` steps, ``total_step`` the run's own), and the orthogonality penalty
peft's ``AdaLoraModel.forward`` adds to the loss. clipdrift puts AdaLoRA's layers on the model
with peft's tuner class but keeps no tuner (see :func:`clipdrift.model.adapters.inject_adapters`),
so the schedule and the penalty live here; tests hold both to peft's own on the same model.

The allocator's state (its smoothed importance scores and the final rank pattern) travels in the
run's resume state, so a resumed run masks exactly as an uninterrupted one. No I/O.
"""

from __future__ import annotations

import torch
from torch import nn

from clipdrift.model.adapters import ADAPTER_NAME, peft_config
from clipdrift.model.methods import MethodConfig, method

_SCORES = ("ipt", "exp_avg_ipt", "exp_avg_unc")


def schedules_rank(config: MethodConfig | None) -> bool:
    """Whether a method's adapters have a rank schedule over the run (AdaLoRA)."""
    return config is not None and method(config.method).schedules_rank


class RankSchedule:
    """The rank budget of an AdaLoRA run of ``total_steps`` optimiser steps on ``model``."""

    def __init__(self, model: nn.Module, config: MethodConfig, total_steps: int):
        from peft.tuners.adalora.layer import RankAllocator

        self.settings = peft_config(config, total_steps=total_steps)
        self.allocator = RankAllocator(model, self.settings, ADAPTER_NAME)

    def after_step(self, model: nn.Module, step: int) -> None:
        """After optimiser step ``step`` (gradients still held): score, and mask the ranks the
        budget drops (peft's ``update_and_allocate``, branch for branch)."""
        final = self.settings.total_step - self.settings.tfinal
        if step < final:
            _, pattern = self.allocator.update_and_allocate(model, step)
            if pattern:
                self.settings.rank_pattern = pattern
        elif step == final:
            _, self.settings.rank_pattern = self.allocator.update_and_allocate(model, step, force_mask=True)
            self.allocator.reset_ipt()
        else:
            self.allocator.mask_using_rank_pattern(model, self.settings.rank_pattern)

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """``orth_reg_weight`` times the mean over the adapted matrices' A and B of
        ‖P Pᵀ − I‖_F (A) and ‖Pᵀ P − I‖_F (B), as peft's ``AdaLoraModel.forward`` adds it."""
        terms = [torch.linalg.matrix_norm((p @ p.T if "lora_A" in name else p.T @ p)
                                          - torch.eye(p.shape[0] if "lora_A" in name else p.shape[1],
                                                      device=p.device, dtype=p.dtype))
                 for name, p in model.named_parameters()
                 if ("lora_A" in name or "lora_B" in name) and ADAPTER_NAME in name and p.numel()]
        if not terms:
            return torch.zeros(())
        return self.settings.orth_reg_weight * torch.stack(terms).mean()

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """The allocator's scores (tensors by ``<score>/<parameter>``) and its rank pattern."""
        tensors = {f"{score}/{name}": value.detach().to("cpu")
                   for score in _SCORES for name, value in getattr(self.allocator, score).items()}
        return tensors, {"rank_pattern": self.settings.rank_pattern}

    def load_state(self, tensors: dict[str, torch.Tensor], metadata: dict, device: torch.device) -> None:
        for score in _SCORES:
            setattr(self.allocator, score, {key.split("/", 1)[1]: value.to(device) for key, value in tensors.items()
                                            if key.startswith(f"{score}/")})
        self.settings.rank_pattern = metadata.get("rank_pattern")
