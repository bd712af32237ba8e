"""How a fine-tuning run computes: the precision ``amp`` means on a device (fp32, bf16 or fp16
with a GradScaler) for its training steps and its evaluations, and the autocast that gives it."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from clipdrift.train.config import AMP_CHOICES, TrainConfigError

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# bf16 runs natively from Ampere (compute capability 8.0) on; older GPUs only emulate it, slowly
# (torch.cuda.is_bf16_supported() counts the emulation), so they get fp16 with a GradScaler.
NATIVE_BF16_CAPABILITY = (8, 0)


def choose_amp(amp: str, device_type: str, capability: tuple[int, int] | None = None) -> str:
    """The training precision ``amp`` means on a device: ``fp32``, ``bf16`` or ``fp16``.

    ``capability``: the CUDA device's compute capability (decides ``auto`` there).
    """
    if amp not in AMP_CHOICES:
        raise TrainConfigError(f"amp {amp!r} is unknown: use one of {AMP_CHOICES}")
    if amp == "off":
        return "fp32"
    if amp != "auto":
        return amp
    if device_type == "cuda":
        return "bf16" if capability is not None and tuple(capability) >= NATIVE_BF16_CAPABILITY else "fp16"
    return "bf16"


@dataclass(frozen=True)
class Precision:
    """How a run computes: its training steps (``train``) and its evaluations (``eval``)."""

    train: str
    eval: str
    device_type: str

    @property
    def scaled(self) -> bool:
        """fp16 gradients underflow without loss scaling; bf16 and fp32 need none."""
        return self.train == "fp16"

    def train_autocast(self):
        return _autocast(self.device_type, self.train)

    def eval_autocast(self):
        return _autocast(self.device_type, self.eval)


def _autocast(device_type: str, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=_AUTOCAST_DTYPES[precision])


def resolve_precision(amp: str, device: torch.device, *, eval_amp: bool = False, cpu_autocast: bool = False) -> Precision:
    """The run's :class:`Precision` on ``device`` (the CPU trains in fp32 unless ``cpu_autocast``)."""
    if device.type == "cuda":
        train = choose_amp(amp, "cuda", torch.cuda.get_device_capability(device))
    elif cpu_autocast:
        train = choose_amp(amp, device.type)
    else:
        choose_amp(amp, device.type)  # refuses an unknown amp here too
        train = "fp32"
    return Precision(train=train, eval=train if eval_amp else "fp32", device_type=device.type)
