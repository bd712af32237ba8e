"""Where and how the package computes: the device, seeded random streams, fp32 measurement and
deterministic kernels.

Everything here runs the same lines on the CPU as on a GPU; only the device differs. That is
how the CUDA path is tested without a GPU.

- :func:`resolve_device`: ``auto`` means CUDA when available, unless ``CLIPDRIFT_DEVICE`` names
  a device (the test suite pins ``cpu``; a job that claimed no GPU is pinned to ``cpu`` too).
- :func:`seeded`: draws inside the block come from ``seed``; the caller's CPU and *that
  device's* generator are restored afterwards, and no other GPU's generator is touched
  (``torch.manual_seed`` would reseed every GPU while ``fork_rng`` restores only some).
- :func:`full_fp32`: TF32 off for matmuls and cuDNN convolutions inside the block. On
  Ampere/Hopper PyTorch leaves cuDNN TF32 on by default, which would run the patch embedding of
  an "fp32" measurement at 10-bit mantissa precision while the drifts measured are tenths of a
  percent.
- :func:`deterministic`: deterministic kernels (and cuBLAS's fixed workspace) inside the block,
  so "same seed, same numbers" holds on a GPU too, at some cost in speed.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from clipdrift.core.environment import DEVICE_ENV
from clipdrift.core.errors import UserFacingError

CUBLAS_WORKSPACE = (":4096:8", ":16:8")  # the settings cuBLAS accepts for deterministic results


class DeviceError(UserFacingError, ValueError):
    """A device was asked for that this machine does not have."""


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """The device ``name`` means here; ``auto`` (or None): ``$CLIPDRIFT_DEVICE`` if set, else
    CUDA when available, else the CPU."""
    if name is None or name == "auto":
        pinned = os.environ.get(DEVICE_ENV)
        if pinned:
            return _checked(pinned, f"{DEVICE_ENV}={pinned}")
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return _checked(name, f"device {str(name)!r}")


def _checked(name: str | torch.device, what: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise DeviceError(f"{what} is not a device torch knows ({error}): use 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"{what} asks for CUDA but none is available: use 'auto' or 'cpu'")
    return device


def _cuda_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` inside the block (None: left as they are), then restored."""
    if n is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | str = "cpu") -> Iterator[None]:
    """Draw from ``seed`` inside the block; restore the CPU generator and ``device``'s own."""
    device = torch.device(device)
    devices = [_cuda_index(device)] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.default_generator.manual_seed(seed)
        if device.type == "cuda":
            with torch.cuda.device(devices[0]):
                torch.cuda.manual_seed(seed)  # this device only, the one fork_rng restores
        yield


def _precision_flags() -> list[tuple[object, str]]:
    """(object, attribute) of the fp32 precision switches this torch has."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    if hasattr(matmul, "fp32_precision") and hasattr(getattr(cudnn, "conv", None), "fp32_precision"):
        return [(matmul, "fp32_precision"), (cudnn.conv, "fp32_precision")]
    return [(matmul, "allow_tf32"), (cudnn, "allow_tf32")]  # torch before the fp32_precision API


@contextlib.contextmanager
def full_fp32() -> Iterator[None]:
    """Matmuls and cuDNN convolutions in full fp32 (no TF32) inside the block; restored after."""
    flags = _precision_flags()
    saved = [getattr(owner, name) for owner, name in flags]
    try:
        for owner, name in flags:
            setattr(owner, name, "ieee" if name == "fp32_precision" else False)
        yield
    finally:
        for (owner, name), value in zip(flags, saved):
            setattr(owner, name, value)


@contextlib.contextmanager
def deterministic(enabled: bool = True) -> Iterator[None]:
    """Deterministic kernels inside the block (a no-op when not ``enabled``); restored after.

    cuBLAS reads ``CUBLAS_WORKSPACE_CONFIG`` when its handle is created, so the variable is set
    here when missing (it must precede the process's first cuBLAS call to take effect).
    """
    if not enabled:
        yield
        return
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    if os.environ.get("CUBLAS_WORKSPACE_CONFIG") not in CUBLAS_WORKSPACE:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE[0]
    try:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]
