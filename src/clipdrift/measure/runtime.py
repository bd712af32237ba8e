"""Running a classifier over uint8 image splits: device choice, eval mode, CLIP normalisation."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from clipdrift.core.device import full_fp32, resolve_device
from clipdrift.data.split import ImageSplit, to_model_input
from clipdrift.model.backbones import CLIPClassifier, check_image_size, normalisation

__all__ = ["check_images", "evaluating", "model_input", "probe_batches", "resolve_device"]


@contextlib.contextmanager
def evaluating(model: torch.nn.Module, device: torch.device) -> Iterator[torch.nn.Module]:
    """Run ``model`` in eval mode on ``device`` without gradients and in full fp32 (no TF32), then
    restore its mode and device (and the TF32 flags)."""
    was_training = model.training
    original = next(model.parameters()).device
    model.to(device).eval()
    try:
        with torch.no_grad(), full_fp32():
            yield model
    finally:
        model.to(original).train(was_training)


def model_input(model: CLIPClassifier, images: torch.Tensor) -> torch.Tensor:
    """uint8 images → the float input ``model`` expects (its own CLIP mean/std)."""
    return to_model_input(images, *normalisation(model.clip, images.device))


def check_images(model: CLIPClassifier, split: ImageSplit, what: str = "probe") -> None:
    """Refuse empty splits and images of another size than the model's, naming the fix."""
    if len(split) == 0:
        raise ValueError(f"the {what} set is empty: check the {what} split of the dataset")
    check_image_size(model.clip, split.images, what)


def probe_batches(model: CLIPClassifier, split: ImageSplit, batch_size: int, device: torch.device) -> Iterator[torch.Tensor]:
    """The split's images in order, CLIP-normalised for ``model``, ``batch_size`` at a time."""
    check_images(model, split)
    for start in range(0, len(split), batch_size):
        yield model_input(model, split.images[start:start + batch_size].to(device))
