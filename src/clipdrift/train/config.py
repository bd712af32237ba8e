"""What a fine-tuning run is told, torch-free: its settings (:class:`TrainConfig`) and the
learning-rate schedule they define. The study's planner builds them from the config, so their
rules run when a config is read; their checks against a model and data are
:mod:`clipdrift.train.checks`."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass

from clipdrift.core.errors import UserFacingError
from clipdrift.train.regulariser_config import RegulariserConfig

AMP_CHOICES = ("auto", "bf16", "fp16", "off")
SELECTION_SPLITS = ("val", "test")
# AdamW's own defaults, written out because the protocol fixes them (one parameter group).
ADAMW_BETAS = (0.9, 0.999)
ADAMW_EPS = 1e-8


class TrainConfigError(UserFacingError, ValueError):
    """A training setting is invalid or does not fit the model or data."""


@dataclass(frozen=True)
class TrainConfig:
    """One fine-tuning run (paper defaults).

    ``amp``: mixed precision of the training steps on CUDA: ``auto`` = bf16 on GPUs of compute
    capability >= 8.0, fp16 below; ``fp16`` always runs with a GradScaler (unscaled before
    clipping); ``off`` = fp32. The CPU trains in fp32 whatever ``amp`` says, unless
    ``cpu_autocast`` (test-only: runs the very autocast and GradScaler lines a GPU runs, so a CPU
    test exercises them). ``eval_amp``: evaluate (selection, test accuracy) under the training
    autocast; by default evaluation is fp32, as published.
    ``device``: ``auto`` = CUDA when available. ``num_threads``: CPU threads for this run
    (``None`` keeps torch's setting; bitwise CPU determinism needs the same thread count).
    ``regulariser``: an attention regulariser added to the loss (:mod:`clipdrift.train.regularisers`).
    ``entropy_trace_every``: trace the CLS-attention entropy on the probe every that many steps;
    ``entropy_trace_per_epoch``: about that many times per epoch, every ``steps_per_epoch // N``
    steps, as published (5); both 0: off (:mod:`clipdrift.train.trace`).
    ``data_on_device``: keep the uint8 training images on the GPU (``None`` = when they take
    under a quarter of its free memory). ``deterministic``: deterministic kernels
    (:func:`clipdrift.core.device.deterministic`), so that the same seed gives the same numbers and a
    resumed run equals an uninterrupted one on a GPU as on the CPU (where that always holds).

    Schedule (:func:`lr_factor`): linear warm-up over ``warmup_fraction`` of all steps, then
    cosine to zero, per optimiser step, spanning the whole run whatever the method (for lp-ft's
    two phases see :mod:`clipdrift.train.engine`).
    """

    epochs: int
    lr: float
    batch_size: int = 64
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    grad_clip: float | None = 1.0
    seed: int = 0
    amp: str = "auto"
    device: str = "auto"
    num_threads: int | None = None
    eval_batch_size: int = 256
    hflip: bool = True
    selection_split: str = "val"
    data_on_device: bool | None = None
    eval_amp: bool = False
    cpu_autocast: bool = False
    deterministic: bool = False
    regulariser: RegulariserConfig | None = None
    entropy_trace_every: int = 0
    entropy_trace_per_epoch: int = 0

    def __post_init__(self):
        if isinstance(self.regulariser, dict):  # as the workflow's params and to_dict() write it
            try:
                object.__setattr__(self, "regulariser", RegulariserConfig(**self.regulariser))
            except (TypeError, ValueError) as error:
                raise TrainConfigError(f"regulariser {self.regulariser!r} is invalid: {error}") from None
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.eval_batch_size >= 1, f"eval_batch_size must be >= 1, got {self.eval_batch_size}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (0 <= self.warmup_fraction < 1, f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}"),
            (self.grad_clip is None or self.grad_clip > 0, f"grad_clip must be > 0 or None, got {self.grad_clip}"),
            (self.amp in AMP_CHOICES, f"amp {self.amp!r} is unknown: use one of {AMP_CHOICES}"),
            (self.selection_split in SELECTION_SPLITS,
             f"selection_split {self.selection_split!r} is unknown: use one of {SELECTION_SPLITS}"),
            (self.num_threads is None or self.num_threads >= 1, f"num_threads must be >= 1, got {self.num_threads}"),
            (self.entropy_trace_every >= 0, f"entropy_trace_every must be >= 0 (0: off), got {self.entropy_trace_every}"),
            (self.entropy_trace_per_epoch >= 0,
             f"entropy_trace_per_epoch must be >= 0 (0: off), got {self.entropy_trace_per_epoch}"),
            (not (self.entropy_trace_every and self.entropy_trace_per_epoch),
             "give entropy_trace_every or entropy_trace_per_epoch, not both"),
        ]
        for ok, message in checks:
            if not ok:
                raise TrainConfigError(message)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def traces(self) -> bool:
        return bool(self.entropy_trace_every or self.entropy_trace_per_epoch)

    @property
    def measures_the_probe(self) -> bool:
        """Whether the run needs the study's probe: to trace, or for the entropy floor's baseline."""
        regulariser = self.regulariser
        return self.traces or (regulariser is not None and regulariser.kind == "entropy_floor" and regulariser.floor is None)

    def trace_interval(self, steps_per_epoch: int) -> int:
        """Optimiser steps between two trace points."""
        return self.entropy_trace_every or max(1, steps_per_epoch // self.entropy_trace_per_epoch)


# ---------------------------------------------------------------------------------------------
# Schedule
# ---------------------------------------------------------------------------------------------

def warmup_steps(total_steps: int, fraction: float) -> int:
    return int(fraction * total_steps)


def lr_factor(step: int, total_steps: int, n_warmup: int) -> float:
    """Multiplier of the base lr at optimiser step ``step`` (0-based).

    Linear warmup from 0 over ``n_warmup`` steps, then cosine to 0 at ``total_steps`` — the
    formula of transformers' ``get_cosine_schedule_with_warmup``, which the published code used.
    """
    if step < n_warmup:
        return step / max(1, n_warmup)
    progress = (step - n_warmup) / max(1, total_steps - n_warmup)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def settings_hash(*settings: dict) -> str:
    """A short stable hash of settings dicts (recorded in checkpoints as the config hash)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
