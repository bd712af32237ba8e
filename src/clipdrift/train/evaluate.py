"""In-domain accuracy: the top-1 accuracy of a classifier on an image split, in fp32 unless asked
otherwise (the engine's epoch selection and test accuracy; :func:`evaluate` for everyone else)."""

from __future__ import annotations

import contextlib

import torch

from clipdrift.core.device import full_fp32, resolve_device
from clipdrift.data.split import ImageSplit, to_model_input
from clipdrift.model.backbones import CLIPClassifier, normalisation
from clipdrift.train.precision import Precision, resolve_precision


@torch.no_grad()
def top1_accuracy(model, split: ImageSplit, device, precision: Precision, mean, std, batch_size: int) -> float:
    """Top-1 accuracy of ``model`` on ``split`` (eval mode, normalised by ``mean`` and ``std``, ``precision.eval``)."""
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    for start in range(0, len(split), batch_size):
        images = split.images[start:start + batch_size].to(device, non_blocking=True)
        labels = split.labels[start:start + batch_size].to(device, non_blocking=True)
        with precision.eval_autocast(), _eval_math(precision):
            logits = model(to_model_input(images, mean, std))
        correct += (logits.argmax(dim=1) == labels).sum()
    return int(correct) / len(split)


def _eval_math(precision: Precision):
    # an fp32 evaluation is fp32 through and through: no TF32 matmuls or convolutions
    return full_fp32() if precision.eval == "fp32" else contextlib.nullcontext()


def evaluate(model: CLIPClassifier, split: ImageSplit, *, batch_size: int = 256, device: str = "auto",
             amp: str = "off") -> float:
    """Top-1 accuracy of ``model`` on ``split`` (eval mode, no flips, CLIP normalisation).

    fp32 by default; ``amp`` evaluates under that autocast on CUDA (see :func:`clipdrift.train.precision.choose_amp`).
    """
    resolved = resolve_device(device)
    precision = resolve_precision(amp, resolved, eval_amp=True)
    mean, std = normalisation(model.clip, resolved)
    model.to(resolved)
    return top1_accuracy(model, split, resolved, precision, mean, std, batch_size)
