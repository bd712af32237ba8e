"""More fabricated datasets in torchvision's real on-disk layouts (DTD, Country211, GTSRB,
FGVC-Aircraft, Food-101, SUN397, Caltech-101, Flowers-102) and researchers' image folders.

Every image is its class's solid colour (``fakedata.class_image``), so a test can tell from the
pixels which class an image was filed under. Each maker returns the class names in label order.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from fakedata import class_image


def _save(path: Path, label: int, n_classes: int, item: int, size: int = 40) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(class_image(label, n_classes, item, size, size + 8))
    image.save(path, **({"quality": 95} if path.suffix == ".jpg" else {}))


def make_dtd(root, per_split: int = 2) -> list[str]:
    classes = ["banded", "dotted", "striped"]
    base = Path(root) / "dtd" / "dtd"
    for split in ("train", "val", "test"):
        lines = []
        for label, cls in enumerate(classes):
            for item in range(per_split):
                name = f"{cls}_{split}_{item}.jpg"
                _save(base / "images" / cls / name, label, len(classes), item)
                lines.append(f"{cls}/{name}")
        (base / "labels").mkdir(parents=True, exist_ok=True)
        (base / "labels" / f"{split}1.txt").write_text("\n".join(lines) + "\n")
    return classes


def make_country211(root, per_split: int = 1) -> list[str]:
    codes = [f"C{i:03d}" for i in range(211)]  # 211 country folders, like the real ISO codes, sorted
    for split in ("train", "valid", "test"):
        for label, code in enumerate(codes):
            for item in range(per_split):
                _save(Path(root) / "country211" / split / code / f"{item}.jpg", label, len(codes), item)
    return codes


def make_gtsrb(root, train_per_class: int = 4, test_per_class: int = 2, n_classes: int = 43) -> int:
    base = Path(root) / "gtsrb"
    rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
    for label in range(n_classes):
        for item in range(train_per_class):
            _save(base / "GTSRB" / "Training" / f"{label:05d}" / f"00000_{item:05d}.ppm", label, n_classes, item, 32)
        for item in range(test_per_class):
            name = f"{label:03d}{item:02d}.ppm"
            _save(base / "GTSRB" / "Final_Test" / "Images" / name, label, n_classes, item, 32)
            rows.append(f"{name};32;32;0;0;31;31;{label}")
    (base / "GT-final_test.csv").write_text("\n".join(rows) + "\n")
    return n_classes


def make_fgvc_aircraft(root, per_split: int = 2) -> list[str]:
    variants = ["707-320", "A300B4", "Cessna 172"]  # variant names have spaces, as the real ones do
    base = Path(root) / "fgvc-aircraft-2013b" / "data"
    (base / "images").mkdir(parents=True, exist_ok=True)
    (base / "variants.txt").write_text("\n".join(variants) + "\n")
    number = 1000000
    for split in ("train", "val", "test", "trainval"):
        lines = []
        for label, variant in enumerate(variants):
            for item in range(per_split):
                number += 1
                _save(base / "images" / f"{number}.jpg", label, len(variants), item)
                lines.append(f"{number} {variant}")
        (base / f"images_variant_{split}.txt").write_text("\n".join(lines) + "\n")
    return variants


def make_food101(root, train_per_class: int = 5, test_per_class: int = 2) -> list[str]:
    classes = ["apple_pie", "baby_back_ribs", "baklava"]
    base = Path(root) / "food-101"
    meta = {"train": {}, "test": {}}
    for label, cls in enumerate(classes):
        for split, count in (("train", train_per_class), ("test", test_per_class)):
            ids = [f"{cls}/{split}{item}" for item in range(count)]
            for item, image_id in enumerate(ids):
                _save(base / "images" / f"{image_id}.jpg", label, len(classes), item)
            meta[split][cls] = ids
    (base / "meta").mkdir(parents=True, exist_ok=True)
    for split, content in meta.items():
        (base / "meta" / f"{split}.json").write_text(json.dumps(content))
    return classes


def make_sun397(root, per_class: int = 10) -> list[str]:
    categories = ["/a/abbey", "/a/apartment_building/outdoor", "/b/bakery/shop"]
    base = Path(root) / "SUN397"
    base.mkdir(parents=True, exist_ok=True)
    (base / "ClassName.txt").write_text("\n".join(categories) + "\n")
    for label, category in enumerate(categories):
        for item in range(per_class):
            _save(base / category.lstrip("/") / f"sun_{label}{item:04d}.jpg", label, len(categories), item)
    return [c[3:] for c in categories]


def make_caltech101(root, per_class: int = 10) -> list[str]:
    categories = ["Faces", "Leopards", "accordion"]
    base = Path(root) / "caltech101" / "101_ObjectCategories"
    for label, category in enumerate(categories):
        for item in range(per_class):
            _save(base / category / f"image_{item + 1:04d}.jpg", label, len(categories), item)
    (base / "BACKGROUND_Google").mkdir(parents=True, exist_ok=True)  # not a class: torchvision drops it
    _save(base / "BACKGROUND_Google" / "image_0001.jpg", 0, 1, 0)
    return categories


def make_flowers102(root, per_split: int = 1, n_classes: int = 102) -> int:
    """``root/flowers-102/jpg/image_<nnnnn>.jpg`` with ``imagelabels.mat`` (labels 1..102) and
    ``setid.mat`` (1-based image ids of each split), as the real archive has them.

    torchvision checks both ``.mat`` files against the real MD5 sums; tests accept these through
    ``fakedata.accept_fabricated`` or ``fakedata.accepting_environment``.
    """
    from scipy.io import savemat

    base = Path(root) / "flowers-102"
    labels, ids = [], {"trnid": [], "valid": [], "tstid": []}
    for split in ids:
        for label in range(n_classes):
            for item in range(per_split):
                labels.append(label + 1)
                ids[split].append(len(labels))
                _save(base / "jpg" / f"image_{len(labels):05d}.jpg", label, n_classes, item)
    savemat(base / "imagelabels.mat", {"labels": [labels]})
    savemat(base / "setid.mat", {split: [image_ids] for split, image_ids in ids.items()})
    return n_classes


def make_imagefolder(root, classes=("cat_a", "cat_b", "cat_c"), per_class: int = 10, splits=None, size: int = 40) -> Path:
    """``root/<class>/<n>.png`` (or ``root/<split>/<class>/<n>.png`` for each of ``splits``: name → count)."""
    root = Path(root)
    for split, count in (splits or {"": per_class}).items():
        for label, cls in enumerate(classes):
            for item in range(count):
                _save(root / split / cls / f"{item}.png", label, len(classes), item, size)
    return root
