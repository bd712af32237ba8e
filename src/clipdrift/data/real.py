"""Datasets read from disk - torchvision's classification datasets in their standard layouts
(:data:`clipdrift.data.catalog.TORCHVISION_DATASETS`) and a researcher's image folders - split
(official splits where published, else stratified with a seed) and decoded once into the uint8
tensor cache with their manifest. A missing or malformed dataset stops with the path, the layout
expected and, for torchvision's, the fetch command.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from clipdrift.data.benchmark import benchmark_class_names
from clipdrift.data.catalog import TORCHVISION_DATASETS
from clipdrift.data.decode import decode_images, preprocess_transform, refuse_unreadable
from clipdrift.data.layout import (
    IMAGE_EXTENSIONS,
    DatasetUnavailableError,
    check_torchvision_present,
    imagefolder_partitions,
    subfolders,
    torchvision_unavailable,
)
from clipdrift.data.sampling import DEFAULT_VAL_FRACTION, class_counts, split_plan
from clipdrift.data.split import ImageSplit

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
EUROSAT_SPLIT_SIZES = TORCHVISION_DATASETS["eurosat"].default_sizes
PETS_VAL_FRACTION = DEFAULT_VAL_FRACTION
ON_THE_FLY = "random horizontal flip (train), the backbone's mean/std"


# ---------------------------------------------------------------------------------------------
# torchvision datasets
# ---------------------------------------------------------------------------------------------

def _open_torchvision(name: str, root: Path, download: bool, needed) -> dict[str, object]:
    """The torchvision dataset objects of ``name`` in the official partitions ``needed``."""
    from torchvision import datasets

    source = TORCHVISION_DATASETS[name]
    if not download:
        check_torchvision_present(name, root)
    reader = getattr(datasets, source.torchvision_class)
    where = root / source.subdir if source.subdir else root
    if download and not source.downloadable:
        raise torchvision_unavailable(name, root, "cannot be downloaded by torchvision")
    fetch = {"download": download} if source.downloadable else {}
    try:
        parts = {part: reader(where, **fetch, **source.extra_kwargs, **kwargs)
                 for part, kwargs in source.partitions.items() if part in needed}
    except DatasetUnavailableError:
        raise
    except Exception as error:  # torchvision: RuntimeError (corrupt/missing), URLError (no network)
        problem = "could not be downloaded" if download else "is incomplete or corrupted"
        raise torchvision_unavailable(name, root, problem, error) from error
    for dataset in parts.values():
        _in_path_order(dataset)
    return parts


def _in_path_order(dataset) -> None:
    """Put a dataset that lists its files in directory order (SUN397 globs them) in path order, so
    its items - and the splits drawn from them - are the same on every machine."""
    files, labels = getattr(dataset, "_image_files", None), getattr(dataset, "_labels", None)
    if files is not None and labels is not None and len(files) == len(labels):
        order = sorted(range(len(files)), key=lambda i: str(files[i]))
        dataset._image_files, dataset._labels = [files[i] for i in order], [labels[i] for i in order]


def dataset_labels(dataset) -> list[int]:
    """Every item's label, read from the dataset's own record (decoding every image is the last resort)."""
    for attribute in ("targets", "_labels", "labels", "y"):
        found = getattr(dataset, attribute, None)
        if found is not None:
            return [int(label) for label in found]
    for attribute in ("_samples", "samples"):
        found = getattr(dataset, attribute, None)
        if found is not None:
            return [int(label) for _, label in found]
    return [int(dataset[i][1]) for i in range(len(dataset))]


def _file_paths(dataset) -> list | None:
    for attribute in ("_image_files", "_images"):
        if getattr(dataset, attribute, None) is not None:
            return list(getattr(dataset, attribute))
    for attribute in ("_samples", "samples"):
        found = getattr(dataset, attribute, None)
        if found is not None and found and isinstance(found[0][0], (str, Path)):
            return [path for path, _ in found]
    return None


def dataset_ids(dataset, base: Path, stem: bool = False) -> list:
    """Stable ids of the items: file paths relative to ``base`` (or stems), else indices."""
    paths = _file_paths(dataset)
    if paths is None:
        return list(range(len(dataset)))
    if stem:
        return [Path(path).stem for path in paths]
    return [Path(path).resolve().relative_to(base.resolve()).as_posix() for path in paths]


def torchvision_class_names(name: str, dataset, n_classes: int) -> tuple[list[str], list[str]]:
    """(torchvision dataset ``name``'s own class names, readable prompt subjects), from its
    ``dataset`` object (the catalog's ``class_source`` says how)."""
    source = TORCHVISION_DATASETS[name]
    own = getattr(dataset, "classes", None) or getattr(dataset, "categories", None)
    if source.class_source == "benchmark":
        readable = benchmark_class_names(name, n_classes)
        return list(own or readable), readable
    own = list(own)
    if source.class_source == "eurosat":
        readable = [EUROSAT_READABLE.get(c) or re.sub(r"(?<!^)(?=[A-Z])", " ", c).lower() for c in own]
    elif source.class_source in ("spaced", "categories"):
        readable = [c.replace("_", " ").replace("/", " ") for c in own]
    else:
        readable = list(own)
    return own, readable


def _split_rule(partitions, wanted, plan=None, labels=None) -> str:
    if tuple(wanted) == ("test",):
        part, index = plan["test"] if plan else ("test", None)
        whole = "all of its images" if part == "all" else "the official test split"
        capped = index is not None and labels is not None and len(index) < len(labels[part])
        return (f"{whole} (a held-out task)" + (f", a stratified subset of {len(index)} of its {len(labels[part])} "
                                                 "drawn with the seed" if capped else ""))
    if "all" in partitions:
        return "stratified train/val/test drawn with the seed (no official split)"
    if "val" in partitions:
        return "the official train/val/test splits"
    source = next(iter(partitions))
    return f"the official test split; train and a stratified val carved with the seed from the official {source}"


def prepare_real_dataset(name: str, root, *, download: bool = False, image_size: int = 224,
                         interpolation: str = "bilinear", split_sizes: dict[str, int] | None = None,
                         val_fraction: float = DEFAULT_VAL_FRACTION, seed: int = 0, num_workers: int = 0,
                         progress: bool = False, task: str | None = None, wanted=None) -> tuple[dict[str, ImageSplit], dict]:
    """Read torchvision dataset ``name``, split it, and decode it into image splits.

    Official splits are kept; ``val_fraction`` of an official train(val) is carved (stratified)
    as val where there is none (``val_fraction=0`` trains on all of it, as the published Pets
    runs did); a dataset without an official split is drawn stratified with ``split_sizes``
    (EuroSAT: the published 21,600 / 2,700 / 2,700). ``wanted``: the splits to decode (default
    train/val/test; CIFAR-100 alone, the published held-out task, defaults to test only).

    Returns the splits and the manifest (dataset, source, seed, class names, preprocessing, and
    per split: n, class counts, ids). ``download=False`` never touches the network; a missing
    dataset raises :class:`DatasetUnavailableError` naming the directory, layout and fix.
    """
    if name not in TORCHVISION_DATASETS:
        raise ValueError(f"dataset {name!r} is unknown: use one of {tuple(TORCHVISION_DATASETS)}")
    preprocess_transform(image_size, interpolation)  # validate before any slow work
    source, root = TORCHVISION_DATASETS[name], Path(root).expanduser()
    wanted = tuple(wanted or (("test",) if name == "cifar100" else ("train", "val", "test")))
    # a held-out task reads the official test partition alone where there is one
    needed = ["test"] if wanted == ("test",) and "test" in source.partitions else list(source.partitions)
    parts = _open_torchvision(name, root, download, needed)
    labels = {part: dataset_labels(dataset) for part, dataset in parts.items()}
    ids = {part: dataset_ids(dataset, root / source.id_dir, stem=source.ids == "stem") for part, dataset in parts.items()}
    n_classes = 1 + max(max(found, default=-1) for found in labels.values())
    own, readable = torchvision_class_names(name, next(iter(parts.values())), n_classes)
    plan = split_plan(labels, sizes=split_sizes, default_sizes=source.default_sizes, val_fraction=val_fraction,
                      seed=seed, wanted=wanted)
    splits, entries = _decode_plan(parts, plan, ids, readable, image_size, interpolation, num_workers, progress,
                                   task or name)
    manifest = {
        "dataset": task or name,
        "source": f"torchvision.datasets.{source.torchvision_class}",
        "seed": seed,
        "split_rule": _split_rule(source.partitions, wanted, plan, labels),
        "class_names": list(readable),
        "source_class_names": own,
        "preprocessing": _preprocessing(image_size, interpolation),
        "splits": entries,
    }
    return splits, manifest


def _preprocessing(image_size: int, interpolation: str) -> dict:
    return {"resize": image_size, "center_crop": image_size, "interpolation": interpolation, "dtype": "uint8",
            "on_the_fly": ON_THE_FLY}


def _decode_plan(parts, plan, ids, class_names, image_size, interpolation, num_workers, progress, task):
    decoded, unreadable = {}, []
    for split, (part, index) in plan.items():
        decoded[split] = decode_images(parts[part], index.tolist(), image_size, interpolation, ids=ids[part],
                                       num_workers=num_workers, progress=progress, desc=f"{task}/{split}",
                                       unreadable=unreadable)
    refuse_unreadable(unreadable, task)  # every unreadable file of every split, at once
    splits = {split: ImageSplit(images, labels, list(class_names)) for split, (images, labels) in decoded.items()}
    entries = {split: {"source_partition": part, "n": len(index),
                       "class_counts": class_counts(splits[split].labels, len(class_names)),
                       "ids": [ids[part][i] for i in index.tolist()]}
               for split, (part, index) in plan.items()}
    return splits, entries


# ---------------------------------------------------------------------------------------------
# Image folders
# ---------------------------------------------------------------------------------------------

def imagefolder_class_names(task: str, folders: list[str], mapping) -> list[str]:
    """Class names a prompt can use: the folder names with underscores and hyphens as spaces (as
    CLIP_benchmark's names are written), or ``mapping`` (folder → name; a dict or the path of a
    JSON file) which must name every folder and no other. The manifest keeps the folder names."""
    if mapping is None:
        return [" ".join(folder.replace("_", " ").replace("-", " ").split()) for folder in folders]
    if isinstance(mapping, str):
        path = Path(mapping).expanduser()
        try:
            mapping = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise DatasetUnavailableError(f"class_names file {path} of task {task!r} cannot be read as a JSON object "
                                          f"{{folder: name}}: {error}") from error
    missing, extra = sorted(set(folders) - set(mapping)), sorted(set(mapping) - set(folders))
    if missing or extra or not all(isinstance(v, str) and v.strip() for v in mapping.values()):
        raise DatasetUnavailableError(
            f"class_names of task {task!r} must map every class folder to a non-empty name: "
            f"missing {missing[:10]}, not a folder {extra[:10]}")
    return [mapping[folder] for folder in folders]


def prepare_imagefolder(task: str, root, *, image_size: int = 224, interpolation: str = "bilinear",
                        class_names=None, split_sizes: dict[str, int] | None = None,
                        val_fraction: float = DEFAULT_VAL_FRACTION, seed: int = 0, num_workers: int = 0,
                        progress: bool = False, wanted=("train", "val", "test")) -> tuple[dict[str, ImageSplit], dict]:
    """Read an image folder (:func:`clipdrift.data.layout.imagefolder_partitions`), split it like a
    torchvision dataset (its own split folders kept) and decode it; ids are paths under ``root``."""
    preprocess_transform(image_size, interpolation)
    root = Path(root).expanduser()
    partitions = imagefolder_partitions(task, root, wanted)
    parts = {part: _image_folder(folder) for part, folder in partitions.items()}
    folders = list(next(iter(parts.values())).classes)
    readable = imagefolder_class_names(task, folders, class_names)
    labels = {part: dataset_labels(dataset) for part, dataset in parts.items()}
    ids = {part: dataset_ids(dataset, root) for part, dataset in parts.items()}
    plan = split_plan(labels, sizes=split_sizes, val_fraction=val_fraction, seed=seed, wanted=tuple(wanted))
    splits, entries = _decode_plan(parts, plan, ids, readable, image_size, interpolation, num_workers, progress, task)
    manifest = {"dataset": task, "source": f"image folder {root}", "seed": seed,
                "split_rule": _split_rule(partitions, tuple(wanted), plan, labels), "class_names": readable,
                "source_class_names": folders, "preprocessing": _preprocessing(image_size, interpolation),
                "files": folder_census(partitions.values(), root), "splits": entries}
    return splits, manifest


def _is_image(path: str) -> bool:
    """An image file to read: an image extension in any case, not hidden (``._x.jpg`` is macOS clutter)."""
    name = Path(path).name
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS


def _image_folder(folder: Path):
    """torchvision's ImageFolder, but hidden folders (``.ipynb_checkpoints``) are no class and
    hidden or non-image files are skipped; images in sub-folders of a class folder are read as that
    class (torchvision walks them, following links)."""
    from torchvision.datasets import ImageFolder

    class Folder(ImageFolder):
        def find_classes(self, directory):
            classes = subfolders(Path(directory))
            return classes, {name: index for index, name in enumerate(classes)}

    return Folder(str(folder), is_valid_file=_is_image)


def folder_census(folders, root: Path) -> dict:
    """What a manifest says of an image folder's files besides the images read: the files skipped
    (hidden, or not images: ``Thumbs.db``, notes) with a few examples, the images found in
    sub-folders of a class folder (read as that class), and those reached through a link."""
    skipped, nested, linked = [], 0, 0
    for folder in folders:
        for class_folder in (Path(folder) / name for name in subfolders(Path(folder))):
            for path in class_folder.rglob("*"):
                if not path.is_file():
                    continue
                if not _is_image(str(path)):
                    skipped.append(path.relative_to(root).as_posix())
                    continue
                nested += path.parent != class_folder
                linked += path.is_symlink()
    return {"skipped": len(skipped), "skipped_examples": sorted(skipped)[:5], "in_subfolders": nested,
            "through_links": linked}
