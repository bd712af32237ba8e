"""The image-split format: uint8 images, labels and class names (:class:`ImageSplit`), their
model input (CLIP normalisation, optional flips) and their safetensors file, written with its
digest and refused on read if anything about it is off.

An :class:`ImageSplit` holds deterministically preprocessed images (resize and centre crop done
once, into the tensor cache); training applies random flips and normalisation on the fly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from clipdrift.core.io import RERUN, ArtifactError, read_safetensors, write_safetensors


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

    def subset(self, indices) -> ImageSplit:
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


def write_image_split(path: str | os.PathLike, split: ImageSplit, dataset: str, split_name: str) -> None:
    """Store a :class:`clipdrift.data.split.ImageSplit` in the tensor cache."""
    tensors = {"images": split.images.contiguous(), "labels": split.labels.contiguous()}
    metadata = {"dataset": dataset, "split": split_name, "class_names": list(split.class_names)}
    write_safetensors(path, tensors, metadata)


def read_image_split(path: str | os.PathLike) -> ImageSplit:
    """Read an image split from the tensor cache, refusing one of another shape (naming the file)."""
    tensors, metadata = read_safetensors(path)
    _check_image_split(Path(path), tensors, metadata)
    return ImageSplit(tensors["images"], tensors["labels"], metadata["class_names"])


def _check_image_split(path: Path, tensors: dict[str, torch.Tensor], metadata: dict) -> None:
    """Refuse an image split whose tensors or metadata do not have the documented shape."""
    def refuse(problem: str) -> ArtifactError:
        return ArtifactError(f"{path} is not a usable image split: {problem}. {RERUN}")

    if set(tensors) != {"images", "labels"}:
        raise refuse(f"it holds {sorted(tensors)}, not images and labels")
    images, labels = tensors["images"], tensors["labels"]
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise refuse(f"images must be uint8 (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
    if labels.dtype != torch.int64 or labels.shape != (images.shape[0],):
        raise refuse(f"labels must be int64 ({images.shape[0]},), got {labels.dtype} {tuple(labels.shape)}")
    for field in ("dataset", "split"):
        if not isinstance(metadata.get(field), str):
            raise refuse(f"metadata field {field!r} must be a string, got {metadata.get(field)!r}")
    names = metadata.get("class_names")
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise refuse("metadata field 'class_names' must be a list of strings")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= len(names)):
        raise refuse(f"labels span {int(labels.min())}..{int(labels.max())} but there are {len(names)} class_names")
