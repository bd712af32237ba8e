"""Fabricated EuroSAT, Oxford-IIIT Pets and CIFAR-100 directories in torchvision's real layouts.

A few tiny images per class, each a solid class colour (hues spread evenly) with a faint
per-image gradient, so a test can tell from the pixels which class an image belongs to.
"""

from __future__ import annotations

import colorsys
import hashlib
import os
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

EUROSAT_CLASSES = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial",
                   "Pasture", "PermanentCrop", "Residential", "River", "SeaLake"]
# (file-name stem, species: 1 cat / 2 dog), as in the real annotations (cats capitalised).
PETS_BREEDS = [("Abyssinian", 1), ("american_bulldog", 2), ("Bengal", 1), ("great_pyrenees", 2)]
# The real CIFAR-100 fine label names (the meta file's fine_label_names), in their order.
CIFAR100_FINE_LABEL_NAMES = [
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle",
    "bicycle", "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel",
    "can", "castle", "caterpillar", "cattle", "chair", "chimpanzee", "clock", "cloud",
    "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant",
    "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree",
    "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter",
    "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy", "porcupine",
    "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea",
    "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television",
    "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale",
    "willow_tree", "wolf", "woman", "worm",
]
# Fabricated images exist for the first few classes only; the meta lists all 100 names.
CIFAR100_CLASSES = CIFAR100_FINE_LABEL_NAMES[:5]


def class_colour(label: int, n_classes: int) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(label / n_classes, 0.9, 0.9)
    return round(r * 255), round(g * 255), round(b * 255)


def class_image(label: int, n_classes: int, item: int, height: int, width: int) -> np.ndarray:
    """``(H, W, 3)`` uint8: the class colour plus a faint item-specific texture.

    The texture (a few grey levels, zero mean) keeps the mean colour at the class colour while
    giving resampling filters something to disagree about.
    """
    colour = np.array(class_colour(label, n_classes), dtype=np.int32)
    y, x = np.mgrid[0:height, 0:width]
    texture = ((3 * x + 5 * y + item) % 5 - 2) * 6
    pixels = colour[None, None, :] + texture[:, :, None]
    return np.clip(pixels, 0, 255).astype(np.uint8)


def nearest_class(image, n_classes: int) -> int:
    """The class whose colour is closest to the mean colour of a ``(3, H, W)`` image tensor."""
    mean = image.float().mean(dim=(1, 2)).tolist()
    distances = [sum((m - c) ** 2 for m, c in zip(mean, class_colour(k, n_classes))) for k in range(n_classes)]
    return distances.index(min(distances))


def make_eurosat(root, per_class: int = 5, size: int = 64) -> Path:
    """``root/eurosat/2750/<Class>/<Class>_<n>.jpg`` (1-based n, like the real archive)."""
    base = Path(root) / "eurosat" / "2750"
    for label, name in enumerate(EUROSAT_CLASSES):
        (base / name).mkdir(parents=True, exist_ok=True)
        for item in range(per_class):
            pixels = class_image(label, len(EUROSAT_CLASSES), item, size, size)
            Image.fromarray(pixels).save(base / name / f"{name}_{item + 1}.jpg", quality=95)
    return Path(root)


def pets_class_name(stem: str) -> str:
    return " ".join(part.title() for part in stem.split("_"))


def make_pets(root, trainval_per_class: int = 10, test_per_class: int = 3) -> Path:
    """``root/oxford-iiit-pet/images/<stem>_<n>.jpg`` + ``annotations/{trainval,test}.txt``.

    Images are non-square (the real ones are photos of any shape) to exercise the centre crop.
    """
    base = Path(root) / "oxford-iiit-pet"
    (base / "images").mkdir(parents=True, exist_ok=True)
    (base / "annotations").mkdir(parents=True, exist_ok=True)
    lines = {"trainval": [], "test": []}
    number = 0
    for class_id, (stem, species) in enumerate(PETS_BREEDS, start=1):
        for part, count in (("trainval", trainval_per_class), ("test", test_per_class)):
            for _ in range(count):
                number += 1
                image_id = f"{stem}_{number}"
                pixels = class_image(class_id - 1, len(PETS_BREEDS), number, 36 + number % 3, 48)
                Image.fromarray(pixels).save(base / "images" / f"{image_id}.jpg", quality=95)
                lines[part].append(f"{image_id} {class_id} {species} {class_id}")
    for part, part_lines in lines.items():
        (base / "annotations" / f"{part}.txt").write_text("\n".join(part_lines) + "\n")
    return Path(root)


def cifar100_test_pixels(per_class: int) -> tuple[np.ndarray, list[int]]:
    """The fabricated CIFAR-100 test images ``(N, 32, 32, 3)`` and their fine labels."""
    labels = [label for label in range(len(CIFAR100_CLASSES)) for _ in range(per_class)]
    pixels = np.stack([class_image(label, len(CIFAR100_CLASSES), i, 32, 32) for i, label in enumerate(labels)])
    return pixels, labels


def make_cifar100(root, test_per_class: int = 4, train_per_class: int = 2) -> Path:
    """``root/cifar-100-python/{train,test,meta}`` pickles with the real keys.

    torchvision checks these files against the real archive's MD5 sums; tests accept the
    fabricated ones through :func:`accept_fabricated`.
    """
    base = Path(root) / "cifar-100-python"
    base.mkdir(parents=True, exist_ok=True)
    for part, per_class in (("test", test_per_class), ("train", train_per_class)):
        pixels, labels = cifar100_test_pixels(per_class)
        batch = {
            "filenames": [f"img_{i}.png" for i in range(len(labels))],
            "batch_label": f"{part} batch",
            "fine_labels": labels,
            "coarse_labels": [0] * len(labels),
            "data": pixels.transpose(0, 3, 1, 2).reshape(len(labels), -1),  # rows of R, G, B planes
        }
        (base / part).write_bytes(pickle.dumps(batch))
    meta = {"fine_label_names": CIFAR100_FINE_LABEL_NAMES, "coarse_label_names": ["fabricated"]}
    (base / "meta").write_bytes(pickle.dumps(meta))
    return Path(root)


def fabricated_checksums(root) -> dict[tuple[type, str], object]:
    """(torchvision dataset class, attribute) → the value under which torchvision's own integrity
    check accepts the fabricated files under ``root`` (CIFAR-100, Flowers-102; those present).

    The real check (``check_integrity`` → MD5 of each file) still runs; only the expected sums
    change, because fabricated files cannot have the real archives' sums.
    """
    from torchvision.datasets import CIFAR100, Flowers102

    def md5(path: Path) -> str:
        return hashlib.md5(path.read_bytes()).hexdigest()

    accepted = {}
    cifar = Path(root) / "cifar-100-python"
    if cifar.is_dir():
        accepted[CIFAR100, "train_list"] = [["train", md5(cifar / "train")]]
        accepted[CIFAR100, "test_list"] = [["test", md5(cifar / "test")]]
        accepted[CIFAR100, "meta"] = {**CIFAR100.meta, "md5": md5(cifar / "meta")}
    flowers = Path(root) / "flowers-102"
    if flowers.is_dir():
        files = dict(Flowers102._file_dict)
        for key in ("label", "setid"):
            files[key] = (files[key][0], md5(flowers / files[key][0]))
        accepted[Flowers102, "_file_dict"] = files
    return accepted


def accept_fabricated(monkeypatch, root) -> None:
    """In this process: torchvision accepts the fabricated datasets under ``root``."""
    for (dataset, attribute), value in fabricated_checksums(root).items():
        monkeypatch.setattr(dataset, attribute, value)


# Imported by every Python process of a workflow run through PYTHONPATH: Snakemake's jobs, and
# the warm job server, which keeps PYTHONPATH but no test variable (its environment is minimal).
# It imports as the server does (one thread per threading library), or the server would refuse
# to fork and every job would run cold.
_SITECUSTOMIZE = """\
import os, sys
from clipdrift.pipeline.jobs.warm.stack import IMPORT_SETTINGS
sys.path.append({tests!r})
_saved = {{name: os.environ.get(name) for name in IMPORT_SETTINGS}}
os.environ.update(IMPORT_SETTINGS)
import fakedata
for (dataset, attribute), value in fakedata.fabricated_checksums({root!r}).items():
    setattr(dataset, attribute, value)
for name, value in _saved.items():
    os.environ.pop(name) if value is None else os.environ.__setitem__(name, value)
"""


def accepting_environment(workdir: Path, root) -> dict[str, str]:
    """Environment for a workflow run in which torchvision accepts the fabricated datasets under
    ``root`` in every process (a ``sitecustomize`` ahead of the caller's PYTHONPATH)."""
    site = Path(workdir) / "site"
    site.mkdir(exist_ok=True)
    code = _SITECUSTOMIZE.format(tests=str(Path(__file__).parent), root=str(root))
    (site / "sitecustomize.py").write_text(code)
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
