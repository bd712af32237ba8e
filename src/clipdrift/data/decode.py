"""Decoding images once into the uint8 tensor cache: the deterministic preprocessing (resize of
the shorter side, centre crop) and a report of every file that cannot be read.

A corrupt or unreadable file does not stop the decoding halfway: every image is tried, and the
files that failed are reported together, by path, before anything is written.
"""

from __future__ import annotations

import torch

from clipdrift.core.errors import UserFacingError

INTERPOLATIONS = ("bilinear", "bicubic")


class CorruptImagesError(UserFacingError, ValueError):
    """Some image files of a dataset cannot be decoded."""


def preprocess_transform(image_size: int, interpolation: str = "bilinear"):
    """The deterministic preprocessing: Resize(shorter side) + CenterCrop + uint8 tensor."""
    from torchvision import transforms

    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation {interpolation!r} is unknown: use one of {INTERPOLATIONS}")
    mode = getattr(transforms.InterpolationMode, interpolation.upper())
    return transforms.Compose([
        transforms.Resize(image_size, interpolation=mode, antialias=True),
        transforms.CenterCrop(image_size),
        transforms.PILToTensor(),
    ])


def _unreadable_errors() -> tuple[type[Exception], ...]:
    from PIL import Image

    # OSError: unreadable, truncated or unidentified files; SyntaxError/ValueError: broken headers
    return OSError, SyntaxError, ValueError, Image.DecompressionBombError


class _Transformed:
    """``dataset`` with ``transform`` applied to each image; an image that cannot be read comes out
    as zeros and label -1 with its error kept (a module-level class: picklable for DataLoader
    workers; setting ``dataset.transform`` would miss datasets that use ``transforms``)."""

    def __init__(self, dataset, transform, image_size: int):
        self.dataset, self.transform, self.image_size = dataset, transform, image_size
        self.unreadable = _unreadable_errors()

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        try:
            image, label = self.dataset[index]
            return self.transform(image.convert("RGB") if hasattr(image, "convert") else image), label, ""
        except self.unreadable as error:
            blank = torch.zeros(3, self.image_size, self.image_size, dtype=torch.uint8)
            return blank, -1, f"{type(error).__name__}: {error}"


def decode_images(dataset, indices, image_size: int, interpolation: str = "bilinear", *, ids=None,
                  num_workers: int = 0, progress: bool = False, desc: str = "decode",
                  unreadable: list | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode and preprocess ``dataset[indices]`` once into uint8 ``(N, 3, S, S)`` and labels.

    Every image is tried. The ones that cannot be read are named (by ``ids[i]`` - their paths -
    where given, else by index) with the reason: appended to ``unreadable`` when given (the
    caller reports several splits at once with :func:`refuse_unreadable`), else raised at once
    as :class:`CorruptImagesError`.
    """
    from torch.utils.data import DataLoader, Subset
    from tqdm.auto import tqdm

    indices = [int(i) for i in indices]
    transformed = _Transformed(dataset, preprocess_transform(image_size, interpolation), image_size)
    images = torch.empty((len(indices), 3, image_size, image_size), dtype=torch.uint8)
    labels = torch.empty(len(indices), dtype=torch.long)
    failures = []
    loader = DataLoader(Subset(transformed, indices), batch_size=64, num_workers=num_workers, shuffle=False)
    start = 0
    # Filled into one preallocated tensor: a list of batches would hold the cache twice.
    for batch_images, batch_labels, errors in tqdm(loader, desc=desc, disable=not progress, unit="batch"):
        images[start:start + len(batch_labels)] = batch_images
        labels[start:start + len(batch_labels)] = batch_labels
        failures += [(start + offset, error) for offset, error in enumerate(errors) if error]
        start += len(batch_labels)
    named = [(ids[indices[i]] if ids is not None else indices[i], error) for i, error in failures]
    if unreadable is None:
        refuse_unreadable(named, desc)
    else:
        unreadable += named
    return images, labels


def refuse_unreadable(unreadable: list, what: str) -> None:
    """Raise :class:`CorruptImagesError` listing every (file, reason) of ``unreadable``, if any."""
    if unreadable:
        lines = [f"  {name}: {error}" for name, error in unreadable]
        raise CorruptImagesError(
            f"{len(unreadable)} image file(s) of {what} cannot be read:\n" + "\n".join(lines) +
            "\nReplace or remove these files, then rerun (nothing of this dataset was written)."
        )
