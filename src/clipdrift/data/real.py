"""The real datasets through torchvision, from their standard on-disk layouts: EuroSAT,
Oxford-IIIT Pets and CIFAR-100 read, split as published (or carved with a seed), and decoded
once into the uint8 tensor cache with their manifest. A missing or malformed dataset stops with
the path, the layout expected and the fetch command.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from clipdrift.core.errors import UserFacingError
from clipdrift.data.catalog import REAL_DATASETS
from clipdrift.data.sampling import SplitError, class_counts, stratified_split
from clipdrift.data.split import ImageSplit

# ---------------------------------------------------------------------------------------------
# Real datasets through torchvision, decoded once into the uint8 tensor cache
# ---------------------------------------------------------------------------------------------

INTERPOLATIONS = ("bilinear", "bicubic")
# The published study's EuroSAT split (27,000 images; EuroSAT has no official split).
EUROSAT_SPLIT_SIZES = {"train": 21600, "val": 2700, "test": 2700}
PETS_VAL_FRACTION = 0.1

# Readable prompt subjects for EuroSAT's folder names (after CLIP's EuroSAT class names).
EUROSAT_READABLE = {
    "AnnualCrop": "annual crop land",
    "Forest": "forest",
    "HerbaceousVegetation": "herbaceous vegetation land",
    "Highway": "highway or road",
    "Industrial": "industrial buildings",
    "Pasture": "pasture land",
    "PermanentCrop": "permanent crop land",
    "Residential": "residential buildings",
    "River": "river",
    "SeaLake": "sea or lake",
}


class DatasetUnavailableError(UserFacingError, FileNotFoundError):
    """A real dataset is not on disk (or not intact) and may not be downloaded."""


@dataclass(frozen=True)
class _Source:
    """How a dataset sits on disk and how to get it."""

    title: str
    torchvision_class: str
    folder: str
    layout: str
    fetch: str


_SOURCES = {
    "eurosat": _Source(
        "EuroSAT (RGB)", "EuroSAT", "eurosat",
        "{root}/eurosat/2750/<Class>/<Class>_<n>.jpg  (10 class folders: AnnualCrop, Forest, "
        "HerbaceousVegetation, Highway, Industrial, Pasture, PermanentCrop, Residential, River, SeaLake)",
        "python -c \"from torchvision.datasets import EuroSAT; EuroSAT('{root}', download=True)\"",
    ),
    "pets": _Source(
        "Oxford-IIIT Pets", "OxfordIIITPet", "oxford-iiit-pet",
        "{root}/oxford-iiit-pet/images/<Breed>_<n>.jpg and "
        "{root}/oxford-iiit-pet/annotations/{{trainval,test}}.txt  (lines: '<image id> <class 1-37> <species> <breed id>')",
        "python -c \"from torchvision.datasets import OxfordIIITPet; OxfordIIITPet('{root}', download=True)\"",
    ),
    "cifar100": _Source(
        "CIFAR-100", "CIFAR100", "cifar-100-python",
        "{root}/cifar-100-python/{{train,test,meta}}  (the pickled batches of cifar-100-python.tar.gz, "
        "checked against torchvision's MD5 sums)",
        "python -c \"from torchvision.datasets import CIFAR100; CIFAR100('{root}', download=True)\"",
    ),
}


def _unavailable(name: str, root: Path, problem: str, error: Exception | None = None) -> DatasetUnavailableError:
    source = _SOURCES[name]
    message = (
        f"{source.title} dataset {problem}: looked in {root / source.folder}.\n"
        f"Expected layout: {source.layout.format(root=root)}\n"
        f"To fetch it, allow downloading (data.download: true in the study config, or download=True) on "
        f"a machine with network access, or run there\n    {source.fetch.format(root=root)}\n"
        f"and copy {root / source.folder} here."
    )
    if error is not None:
        message += f"\nUnderlying error: {error}"
    return DatasetUnavailableError(message)


def _check_present(name: str, root: Path) -> None:
    """Refuse a missing dataset before torchvision does, with a message that says what to do."""
    required = {
        "eurosat": ["eurosat/2750"],
        "pets": ["oxford-iiit-pet/images", "oxford-iiit-pet/annotations/trainval.txt",
                 "oxford-iiit-pet/annotations/test.txt"],
        "cifar100": ["cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta"],
    }[name]
    missing = [path for path in required if not (root / path).exists()]
    if missing:
        raise _unavailable(name, root, f"is missing ({', '.join(missing)} not found)")


def _open_torchvision(name: str, root: Path, download: bool) -> dict[str, object]:
    """The torchvision dataset objects of ``name``, keyed by official partition."""
    from torchvision import datasets

    if not download:
        _check_present(name, root)
    try:
        if name == "eurosat":
            return {"all": datasets.EuroSAT(root, download=download)}
        if name == "pets":
            return {part: datasets.OxfordIIITPet(root, split=part, target_types="category", download=download)
                    for part in ("trainval", "test")}
        return {"test": datasets.CIFAR100(root, train=False, download=download)}
    except DatasetUnavailableError:
        raise
    except Exception as error:  # torchvision: RuntimeError (corrupt/missing), URLError (no network)
        problem = "could not be downloaded" if download else "is incomplete or corrupted"
        raise _unavailable(name, root, problem, error) from error


def _labels_and_ids(name: str, dataset) -> tuple[list[int], list]:
    """Labels and stable ids: file paths (EuroSAT), image ids (Pets), indices (CIFAR-100)."""
    if name == "eurosat":
        base = Path(dataset.root) / "eurosat" / "2750"
        return list(dataset.targets), [Path(path).relative_to(base).as_posix() for path, _ in dataset.samples]
    if name == "pets":
        return list(dataset._labels), [Path(path).stem for path in dataset._images]
    return list(dataset.targets), list(range(len(dataset.targets)))


def _class_names(name: str, dataset) -> tuple[list[str], list[str]]:
    """(torchvision's class names, readable prompt subjects)."""
    source = list(dataset.classes)
    if name == "eurosat":
        readable = [EUROSAT_READABLE.get(c) or re.sub(r"(?<!^)(?=[A-Z])", " ", c).lower() for c in source]
    elif name == "cifar100":
        readable = [c.replace("_", " ") for c in source]
    else:  # torchvision already writes Pets breeds readably ("American Pit Bull Terrier")
        readable = list(source)
    return source, readable


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


class _Transformed:
    """``dataset`` with ``transform`` applied to each image (a module-level class: picklable for
    DataLoader workers; setting ``dataset.transform`` would miss datasets that use ``transforms``)."""

    def __init__(self, dataset, transform):
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, label = self.dataset[index]
        return self.transform(image), label


def decode_images(dataset, indices, image_size: int, interpolation: str = "bilinear", *,
                  num_workers: int = 0, progress: bool = False, desc: str = "decode") -> tuple[torch.Tensor, torch.Tensor]:
    """Decode and preprocess ``dataset[indices]`` once into uint8 ``(N, 3, S, S)`` and labels."""
    from torch.utils.data import DataLoader, Subset
    from tqdm.auto import tqdm

    indices = [int(i) for i in indices]
    transformed = _Transformed(dataset, preprocess_transform(image_size, interpolation))
    images = torch.empty((len(indices), 3, image_size, image_size), dtype=torch.uint8)
    labels = torch.empty(len(indices), dtype=torch.long)
    loader = DataLoader(Subset(transformed, indices), batch_size=64, num_workers=num_workers, shuffle=False)
    start = 0
    # Filled into one preallocated tensor: a list of batches would hold the cache twice.
    for batch_images, batch_labels in tqdm(loader, desc=desc, disable=not progress, unit="batch"):
        images[start:start + len(batch_labels)] = batch_images
        labels[start:start + len(batch_labels)] = batch_labels
        start += len(batch_labels)
    return images, labels


def _split_plan(name: str, labels: dict[str, list[int]], split_sizes, val_fraction: float,
                seed: int) -> dict[str, tuple[str, torch.Tensor]]:
    """Split name → (official partition it is drawn from, indices into that partition)."""
    if name == "eurosat":
        sizes = dict(split_sizes or EUROSAT_SPLIT_SIZES)
        if set(sizes) != {"train", "val", "test"}:
            raise SplitError(f"EuroSAT split_sizes must name train, val and test, got {sorted(sizes)}")
        return {split: ("all", ix) for split, ix in stratified_split(labels["all"], sizes, seed).items()}
    if name == "pets":
        if not 0.0 <= val_fraction < 1.0:
            raise SplitError(f"Pets val_fraction must be in [0, 1), got {val_fraction}")
        n = len(labels["trainval"])
        n_val = round(val_fraction * n)
        carved = stratified_split(labels["trainval"], {"train": n - n_val, "val": n_val}, seed)
        return {"train": ("trainval", carved["train"]), "val": ("trainval", carved["val"]),
                "test": ("test", torch.arange(len(labels["test"])))}
    return {"test": ("test", torch.arange(len(labels["test"])))}


_SPLIT_RULES = {
    "eurosat": "stratified train/val/test drawn with the seed from all images (no official split)",
    "pets": "official test; train and a stratified val carved with the seed from the official trainval",
    "cifar100": "official test set only (the zero-shot task)",
}


def prepare_real_dataset(name: str, root, *, download: bool = False, image_size: int = 224,
                         interpolation: str = "bilinear", split_sizes: dict[str, int] | None = None,
                         val_fraction: float = PETS_VAL_FRACTION, seed: int = 0, num_workers: int = 0,
                         progress: bool = False) -> tuple[dict[str, ImageSplit], dict]:
    """Read a real dataset through torchvision, split it, and decode it into image splits.

    - ``eurosat``: stratified ``split_sizes`` (default 21,600 / 2,700 / 2,700) → train/val/test.
    - ``pets``: official test; ``val_fraction`` of the official trainval carved (stratified) as
      val, the rest train (``val_fraction=0`` trains on all of trainval, as published).
    - ``cifar100``: test only (the zero-shot task).

    Returns the splits and the manifest (dataset, source, seed, class names, preprocessing, and
    per split: n, class counts, ids). ``download=False`` never touches the network; a missing
    dataset raises :class:`DatasetUnavailableError` naming the directory, layout and fix.
    """
    if name not in REAL_DATASETS:
        raise ValueError(f"dataset {name!r} is unknown: use one of {REAL_DATASETS}")
    preprocess_transform(image_size, interpolation)  # validate before any slow work
    root = Path(root).expanduser()
    parts = _open_torchvision(name, root, download)
    labels, ids = {}, {}
    for part, dataset in parts.items():
        labels[part], ids[part] = _labels_and_ids(name, dataset)
    source_names, readable = _class_names(name, next(iter(parts.values())))
    plan = _split_plan(name, labels, split_sizes, val_fraction, seed)

    splits, entries = {}, {}
    for split, (part, index) in plan.items():
        images, split_labels = decode_images(parts[part], index.tolist(), image_size, interpolation,
                                             num_workers=num_workers, progress=progress, desc=f"{name}/{split}")
        splits[split] = ImageSplit(images, split_labels, list(readable))
        entries[split] = {
            "source_partition": part,
            "n": len(index),
            "class_counts": class_counts(split_labels, len(readable)),
            "ids": [ids[part][i] for i in index.tolist()],
        }
    manifest = {
        "dataset": name,
        "source": f"torchvision.datasets.{_SOURCES[name].torchvision_class}",
        "seed": seed,
        "split_rule": _SPLIT_RULES[name],
        "class_names": list(readable),
        "source_class_names": source_names,
        "preprocessing": {"resize": image_size, "center_crop": image_size, "interpolation": interpolation,
                          "dtype": "uint8", "on_the_fly": "random horizontal flip (train), CLIP mean/std"},
        "splits": entries,
    }
    return splits, manifest
