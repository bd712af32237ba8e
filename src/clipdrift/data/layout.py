"""Is a dataset on disk, in the layout its reader expects? Answered from directory listings alone
(standard library only), so that the workflow checks every dataset it is about to prepare before
any job starts, and the preparation job checks again before it decodes anything.

An image folder is ``root/<class>/<images>`` (the tool draws the splits) or
``root/{train,val,test}/<class>/<images>`` (splits as given; ``val`` may be absent and is then
carved from ``train``). Class folders are the same in every split folder.
"""

from __future__ import annotations

from pathlib import Path

from clipdrift.core.errors import UserFacingError
from clipdrift.data.catalog import TORCHVISION_DATASETS

# The image files torchvision's ImageFolder reads (torchvision.datasets.folder.IMG_EXTENSIONS).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SPLIT_FOLDERS = ("train", "val", "test")
IMAGEFOLDER_LAYOUT = ("{root}/<class>/<image>.{{jpg,png,...}}  (the tool draws train/val/test), or "
                      "{root}/{{train,val,test}}/<class>/<image>  (splits as given; without val, val is carved from train)")


class DatasetUnavailableError(UserFacingError, FileNotFoundError):
    """A dataset is not on disk (or not intact) and may not be downloaded."""


def torchvision_unavailable(name: str, root: Path, problem: str, error: Exception | None = None) -> DatasetUnavailableError:
    """The error for torchvision dataset ``name`` under ``root``: where, the layout, the fetch command."""
    source = TORCHVISION_DATASETS[name]
    message = (
        f"{source.title} dataset {problem}: looked in {root / source.folder}.\n"
        f"Expected layout: {source.layout.format(root=root)}\n"
        f"To fetch it, allow downloading (data.download: true in the study config, or download=True) on "
        f"a machine with network access, or run there\n    {source.fetch(root)}\n"
        f"and copy {root / source.folder} here."
    )
    if error is not None:
        message += f"\nUnderlying error: {error}"
    return DatasetUnavailableError(message)


def check_torchvision_present(name: str, root: Path) -> None:
    """Refuse a torchvision dataset whose files are missing, before torchvision does."""
    missing = [path for path in TORCHVISION_DATASETS[name].required if not (root / path).exists()]
    if missing:
        raise torchvision_unavailable(name, root, f"is missing ({', '.join(missing)} not found)")


def subfolders(folder: Path) -> list[str]:
    """The folders in ``folder`` a class or split can be: sorted, hidden ones (``.ipynb_checkpoints``) left out."""
    return sorted(entry.name for entry in folder.iterdir() if entry.is_dir() and not entry.name.startswith("."))


def _has_images(folder: Path) -> bool:
    return any(path.suffix.lower() in IMAGE_EXTENSIONS for path in folder.rglob("*") if path.is_file())


def _imagefolder_error(task: str, root: Path, problem: str) -> DatasetUnavailableError:
    return DatasetUnavailableError(f"image folder of task {task!r} {problem}: looked in {root}.\n"
                                   f"Expected layout: {IMAGEFOLDER_LAYOUT.format(root=root)}")


def imagefolder_partitions(task: str, root, wanted=("train", "val", "test")) -> dict[str, Path]:
    """The folders an image folder's classes sit in: ``{"all": root}`` or its split folders.

    A held-out task (``wanted`` only ``test``) reads ``root/test/`` where there are split folders
    (train and val beside it are never read) and all of ``root`` otherwise; a fine-tuning task
    needs ``train`` and ``test`` split folders, or none. Refuses (:class:`DatasetUnavailableError`,
    with the layout expected) a missing root, missing split folders, split folders whose class
    folders differ, fewer than two classes, and a class folder without images.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise _imagefolder_error(task, root, "does not exist")
    folders = subfolders(root)
    _refuse_a_level_off(task, root, folders)
    given = [name for name in SPLIT_FOLDERS if name in folders]
    if tuple(wanted) == ("test",) and given:
        if "test" not in given:
            raise _imagefolder_error(task, root, f"has split folders {given} but no test/: a held-out task is only "
                                     "tested - put its images in test/<class>/, or the class folders directly in the root")
        given = ["test"]
    elif given and {"train", "test"} - set(given):
        raise _imagefolder_error(task, root, f"has split folders {given} but not {sorted({'train', 'test'} - set(given))}: "
                                 "give train and test (val is optional), or put the class folders directly in the root")
    partitions = {name: root / name for name in given} if given else {"all": root}
    classes = {name: subfolders(folder) for name, folder in partitions.items()}
    first, reference = next(iter(classes.items()))
    for name, found in classes.items():
        if found != reference:
            differ = sorted(set(found) ^ set(reference))
            raise _imagefolder_error(task, root, f"has different class folders in {first}/ and {name}/ "
                                     f"({', '.join(differ[:10])}): every split needs the same class folders")
    if len(reference) < 2:
        found = f"one class folder, {reference[0]}/" if reference else "no class folder"
        raise _imagefolder_error(task, root, f"has {found}: a classification task needs at least two classes, the "
                                 "images of each in a folder of its own")
    empty = [f"{name}/{cls}" if name != "all" else cls for name, folder in partitions.items()
             for cls in reference if not _has_images(folder / cls)]
    if empty:
        raise _imagefolder_error(task, root, f"has class folders without images ({', '.join(empty[:10])}; "
                                 f"{len(empty)} in all); image files end in {', '.join(IMAGE_EXTENSIONS)}")
    return partitions


def _refuse_a_level_off(task: str, root: Path, folders: list[str]) -> None:
    """A root one level too deep (a class folder: images and no class folders in it) or one level
    too high (a single folder that holds the split or class folders), named with the right root."""
    images = [path for path in root.iterdir() if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS]
    if images and len(folders) < 2:
        raise _imagefolder_error(task, root, f"holds {len(images)} image file(s) directly: it looks like one class "
                                 f"folder, one level too deep - point root at {root.parent}, the folder that holds "
                                 "the class folders")
    if len(folders) == 1 and folders[0] not in SPLIT_FOLDERS:
        inner = root / folders[0]
        below = subfolders(inner)
        if set(below) & set(SPLIT_FOLDERS) or (len(below) >= 2 and all(_has_images(inner / name) for name in below)):
            raise _imagefolder_error(task, root, f"holds one folder, {folders[0]}/, which holds the "
                                     f"{'split' if set(below) & set(SPLIT_FOLDERS) else 'class'} folders: root is one "
                                     f"level too high - point it at {inner}")


def check_dataset_on_disk(settings: dict, task: str, wanted=("train", "val", "test"), sizes: dict | None = None,
                          sizes_key: str = "sizes") -> None:
    """Refuse a task whose data is missing or malformed (``settings``: its data settings;
    ``wanted``: its splits, only ``test`` for a held-out task), or whose ``sizes`` (config key
    ``sizes_key``) do not fit the layout on disk."""
    if settings["source"] == "imagefolder":
        partitions = imagefolder_partitions(task, settings["root"], wanted)
        drawn = "all" in partitions and tuple(wanted) != ("test",)
        if drawn and sizes and set(sizes) != set(SPLIT_FOLDERS):
            raise DatasetUnavailableError(
                f"{sizes_key} of task {task!r} names {sorted(sizes)}, but its image folder {settings['root']} has no "
                "split folders, so train, val and test are all drawn from it: give all three sizes "
                "(sizes: {train: N, val: N, test: N}) or leave sizes out (80/10/10 %)")
    elif settings["source"] == "real" and not settings["download"]:
        check_torchvision_present(settings.get("torchvision", task), Path(settings["root"]).expanduser())
