"""Datasets: image splits, the tensor cache, splits and the probe subset.

An :class:`ImageSplit` holds deterministic-preprocessed uint8 images (resize + centre crop done
once) and labels; training applies random flips and CLIP normalisation on the fly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ImageSplit:
    """Images (uint8, ``(N, 3, H, W)``), labels (int64, ``(N,)``) and the class names."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be uint8 (N, 3, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels shape {tuple(self.labels.shape)} does not match {self.images.shape[0]} images")
        self.labels = self.labels.to(torch.int64)

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, indices) -> "ImageSplit":
        index = torch.as_tensor(indices, dtype=torch.long)
        return ImageSplit(self.images[index], self.labels[index], list(self.class_names))


def to_model_input(images: torch.Tensor, mean, std, flip_mask: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 ``(N, 3, H, W)`` → float, CLIP-normalised; ``flip_mask`` flips selected images.

    Runs on whatever device ``images`` is on (the GPU during training when there is one).
    """
    x = images.float().div_(255.0)
    if flip_mask is not None and bool(flip_mask.any()):
        x[flip_mask] = x[flip_mask].flip(-1)
    mean = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std
