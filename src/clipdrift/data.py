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
