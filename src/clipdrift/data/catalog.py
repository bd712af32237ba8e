"""The datasets a study can name, as plain data (standard library only: the Snakefile reads this on
every start).

A fine-tuning or held-out task comes from one of three sources:

- ``torchvision``: a classification dataset torchvision reads offline from its standard on-disk
  layout (:data:`TORCHVISION_DATASETS`), split as its authors published it where they did;
- ``imagefolder``: a researcher's own ``root/<class>/<images>`` (or ``root/{train,val,test}/<class>/...``);
- ``world``: a task of the offline synthetic world (:mod:`clipdrift.data.world.tasks`).

Each torchvision entry records how torchvision opens each official partition, what must exist
on disk, the layout in words, how to fetch it, and where CLIP_benchmark's class names for it
come from (:mod:`clipdrift.data.benchmark`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

SOURCES = ("torchvision", "imagefolder", "world")
# A task's name is a folder name, a table value and report text.
TASK_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"


@dataclass(frozen=True)
class TorchvisionDataset:
    """How torchvision reads one dataset from disk.

    ``partitions``: official partition → constructor keyword arguments (``all`` when the dataset
    has no official split). ``subdir``: the folder under ``data.root`` handed to torchvision as its
    root (``""`` - ``data.root`` itself). ``required``: paths under ``data.root`` that must exist.
    ``class_source``: where the readable class names come from - ``classes`` (torchvision's),
    ``spaced`` (torchvision's with ``_`` and ``/`` as spaces), ``categories`` (Caltech's
    attribute, spaced) or ``benchmark`` (CLIP_benchmark's list: torchvision has none).
    ``benchmark``: the dataset's key in CLIP_benchmark's templates and class names.
    """

    title: str
    torchvision_class: str
    partitions: dict[str, dict]
    required: tuple[str, ...]
    layout: str
    benchmark: str
    class_source: str = "classes"
    subdir: str = ""
    id_dir: str = ""  # file ids are written relative to this folder under data.root
    benchmark_names: str = "own"  # CLIP_benchmark's names: "own" (torchvision's), "spaced" ('_', '/' as spaces), "list"
    ids: str = "path"  # "stem": the file name without extension (Pets' image ids)
    extra_kwargs: dict = field(default_factory=dict)
    default_sizes: dict | None = None  # train/val/test sizes drawn from "all" (else 80/10/10 %)
    downloadable: bool = True  # whether torchvision can fetch it (download=True)

    @property
    def folder(self) -> str:
        return self.required[0].split("/")[0]

    def fetch(self, root) -> str:
        """The command that downloads the dataset on a machine with network access."""
        if not self.downloadable:
            return "(torchvision cannot download it: fetch it from its authors, see the layout above)"
        where = f"{root}/{self.subdir}" if self.subdir else f"{root}"
        return (f"python -c \"from torchvision.datasets import {self.torchvision_class}; "
                f"{self.torchvision_class}('{where}', download=True)\"")


def _splits(**partitions: dict) -> dict[str, dict]:
    return partitions


TORCHVISION_DATASETS: dict[str, TorchvisionDataset] = {
    "cifar10": TorchvisionDataset(
        "CIFAR-10", "CIFAR10", _splits(train={"train": True}, test={"train": False}),
        ("cifar-10-batches-py/data_batch_1", "cifar-10-batches-py/test_batch", "cifar-10-batches-py/batches.meta"),
        "{root}/cifar-10-batches-py/{{data_batch_1..5,test_batch,batches.meta}}  (the pickled batches of "
        "cifar-10-python.tar.gz, checked against torchvision's MD5 sums)", "cifar10"),
    "cifar100": TorchvisionDataset(
        "CIFAR-100", "CIFAR100", _splits(train={"train": True}, test={"train": False}),
        ("cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta"),
        "{root}/cifar-100-python/{{train,test,meta}}  (the pickled batches of cifar-100-python.tar.gz, "
        "checked against torchvision's MD5 sums)", "cifar100", class_source="spaced"),
    "stl10": TorchvisionDataset(
        "STL-10", "STL10", _splits(train={"split": "train"}, test={"split": "test"}),
        ("stl10_binary/train_X.bin", "stl10_binary/train_y.bin", "stl10_binary/test_X.bin", "stl10_binary/test_y.bin"),
        "{root}/stl10_binary/{{train_X,train_y,test_X,test_y}}.bin and class_names.txt  (stl10_binary.tar.gz, "
        "MD5-checked)", "stl10"),
    "food101": TorchvisionDataset(
        "Food-101", "Food101", _splits(train={"split": "train"}, test={"split": "test"}),
        ("food-101/images", "food-101/meta/train.json", "food-101/meta/test.json"),
        "{root}/food-101/images/<class>/<id>.jpg and {root}/food-101/meta/{{train,test}}.json",
        "food101", class_source="spaced", id_dir="food-101/images", benchmark_names="spaced"),
    "flowers102": TorchvisionDataset(
        "Oxford Flowers-102", "Flowers102", _splits(train={"split": "train"}, val={"split": "val"}, test={"split": "test"}),
        ("flowers-102/jpg", "flowers-102/imagelabels.mat", "flowers-102/setid.mat"),
        "{root}/flowers-102/jpg/image_<nnnnn>.jpg, imagelabels.mat and setid.mat  (MD5-checked)",
        "flowers", class_source="benchmark", id_dir="flowers-102/jpg", benchmark_names="list"),
    "dtd": TorchvisionDataset(
        "Describable Textures (DTD, partition 1)", "DTD",
        _splits(train={"split": "train"}, val={"split": "val"}, test={"split": "test"}),
        ("dtd/dtd/images", "dtd/dtd/labels/train1.txt", "dtd/dtd/labels/val1.txt", "dtd/dtd/labels/test1.txt"),
        "{root}/dtd/dtd/images/<class>/<class>_<n>.jpg and {root}/dtd/dtd/labels/{{train,val,test}}1.txt",
        "dtd", id_dir="dtd/dtd/images"),
    "fgvc-aircraft": TorchvisionDataset(
        "FGVC-Aircraft (variants)", "FGVCAircraft",
        _splits(train={"split": "train"}, val={"split": "val"}, test={"split": "test"}),
        ("fgvc-aircraft-2013b/data/images", "fgvc-aircraft-2013b/data/variants.txt",
         "fgvc-aircraft-2013b/data/images_variant_train.txt", "fgvc-aircraft-2013b/data/images_variant_test.txt"),
        "{root}/fgvc-aircraft-2013b/data/images/<id>.jpg, variants.txt and images_variant_{{train,val,test}}.txt",
        "fgvc_aircraft", id_dir="fgvc-aircraft-2013b/data/images", extra_kwargs={"annotation_level": "variant"}),
    "stanford-cars": TorchvisionDataset(
        "Stanford Cars", "StanfordCars", _splits(train={"split": "train"}, test={"split": "test"}),
        ("stanford_cars/devkit/cars_meta.mat", "stanford_cars/devkit/cars_train_annos.mat", "stanford_cars/cars_train",
         "stanford_cars/cars_test", "stanford_cars/cars_test_annos_withlabels.mat"),
        "{root}/stanford_cars/{{cars_train,cars_test}}/<id>.jpg, devkit/{{cars_meta,cars_train_annos}}.mat and "
        "cars_test_annos_withlabels.mat  (torchvision cannot download it any more: copy it in)",
        "cars", id_dir="stanford_cars"),
    "gtsrb": TorchvisionDataset(
        "GTSRB", "GTSRB", _splits(train={"split": "train"}, test={"split": "test"}),
        ("gtsrb/GTSRB/Training", "gtsrb/GTSRB/Final_Test/Images", "gtsrb/GT-final_test.csv"),
        "{root}/gtsrb/GTSRB/Training/<class 00000-00042>/*.ppm, {root}/gtsrb/GTSRB/Final_Test/Images/*.ppm and "
        "{root}/gtsrb/GT-final_test.csv", "gtsrb", class_source="benchmark", id_dir="gtsrb/GTSRB", benchmark_names="list"),
    "svhn": TorchvisionDataset(
        "SVHN (cropped digits)", "SVHN", _splits(train={"split": "train"}, test={"split": "test"}),
        ("svhn/train_32x32.mat", "svhn/test_32x32.mat"),
        "{root}/svhn/{{train,test}}_32x32.mat  (MD5-checked)", "svhn", class_source="benchmark", subdir="svhn",
        benchmark_names="list"),
    "country211": TorchvisionDataset(
        "Country211", "Country211", _splits(train={"split": "train"}, val={"split": "valid"}, test={"split": "test"}),
        ("country211/train", "country211/valid", "country211/test"),
        "{root}/country211/{{train,valid,test}}/<ISO country code>/<id>.jpg", "country211",
        class_source="benchmark", id_dir="country211", benchmark_names="list"),
    "sun397": TorchvisionDataset(
        "SUN397", "SUN397", _splits(all={}), ("SUN397/ClassName.txt",),
        "{root}/SUN397/ClassName.txt and {root}/SUN397/<letter>/<category>/sun_<id>.jpg", "sun397",
        class_source="spaced", id_dir="SUN397", benchmark_names="spaced"),
    "caltech101": TorchvisionDataset(
        "Caltech-101", "Caltech101", _splits(all={}), ("caltech101/101_ObjectCategories",),
        "{root}/caltech101/101_ObjectCategories/<category>/image_<nnnn>.jpg and "
        "{root}/caltech101/Annotations/", "caltech101", class_source="categories",
        extra_kwargs={"target_type": "category"}, benchmark_names="list"),
    "fer2013": TorchvisionDataset(
        "FER2013", "FER2013", _splits(train={"split": "train"}, test={"split": "test"}), ("fer2013/fer2013.csv",),
        "{root}/fer2013/fer2013.csv  (the file with train and labelled test rows; with train.csv/test.csv alone "
        "torchvision gives no test labels; from Kaggle, msambare/fer2013)", "fer2013", class_source="benchmark",
        downloadable=False, benchmark_names="list"),
    "pcam": TorchvisionDataset(
        "PatchCamelyon", "PCAM", _splits(train={"split": "train"}, val={"split": "val"}, test={"split": "test"}),
        ("pcam/camelyonpatch_level_2_split_train_x.h5", "pcam/camelyonpatch_level_2_split_test_x.h5"),
        "{root}/pcam/camelyonpatch_level_2_split_{{train,valid,test}}_{{x,y}}.h5  (needs h5py)", "pcam",
        class_source="benchmark", benchmark_names="list"),
    "eurosat": TorchvisionDataset(
        "EuroSAT (RGB)", "EuroSAT", _splits(all={}), ("eurosat/2750",),
        "{root}/eurosat/2750/<Class>/<Class>_<n>.jpg  (10 class folders: AnnualCrop, Forest, "
        "HerbaceousVegetation, Highway, Industrial, Pasture, PermanentCrop, Residential, River, SeaLake)",
        "eurosat", class_source="eurosat", id_dir="eurosat/2750",
        # the published study's split (27,000 images; EuroSAT has no official split)
        default_sizes={"train": 21600, "val": 2700, "test": 2700}, benchmark_names="list"),
    "pets": TorchvisionDataset(
        "Oxford-IIIT Pets", "OxfordIIITPet", _splits(trainval={"split": "trainval"}, test={"split": "test"}),
        ("oxford-iiit-pet/images", "oxford-iiit-pet/annotations/trainval.txt", "oxford-iiit-pet/annotations/test.txt"),
        "{root}/oxford-iiit-pet/images/<Breed>_<n>.jpg and {root}/oxford-iiit-pet/annotations/{{trainval,test}}.txt  "
        "(lines: '<image id> <class 1-37> <species> <breed id>')", "pets", ids="stem",
        extra_kwargs={"target_types": "category"}),
}
# The names a study may give a torchvision task (the schema's list is checked against this).
REAL_DATASETS = tuple(TORCHVISION_DATASETS)


@dataclass(frozen=True)
class WorldTask:
    """A task of the synthetic world as the planner sees it: the dataset it stands in for and its
    split sizes when a study gives none (its splits: a held-out task has only ``test``). How it
    draws its images: :mod:`clipdrift.data.world.tasks`."""

    stands_for: str
    default_sizes: dict[str, int]

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.default_sizes)


# The synthetic world's tasks: the one list of their names.
WORLD_TASKS = {
    "world-eurosat": WorldTask("EuroSAT", {"train": 2000, "val": 500, "test": 500}),
    "world-pets": WorldTask("Oxford-IIIT Pets", {"train": 2960, "val": 740, "test": 740}),
    "world-cifar100": WorldTask("CIFAR-100", {"test": 2000}),
    "world-patterns": WorldTask("DTD (textures)", {"test": 2000}),
}

