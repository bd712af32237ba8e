"""Bring your own data: torchvision's classification datasets from their on-disk layouts and
researchers' image folders, split and cached like EuroSAT and Pets; missing, malformed and
corrupt data reported with the path and the layout expected."""

import inspect
import json

import pytest
import torch
import torchvision.datasets
import yaml
from fakefolders import (
    make_caltech101,
    make_country211,
    make_dtd,
    make_fgvc_aircraft,
    make_food101,
    make_gtsrb,
    make_imagefolder,
    make_sun397,
)
from PIL import Image

from clipdrift.data.catalog import REAL_DATASETS, TORCHVISION_DATASETS, WORLD_TASKS
from clipdrift.data.decode import CorruptImagesError
from clipdrift.data.layout import DatasetUnavailableError, imagefolder_partitions
from clipdrift.data.real import prepare_imagefolder, prepare_real_dataset
from clipdrift.data.world.tasks import TASK_SPECS

from fakedata import nearest_class
from workflow_helpers import REPO

SCHEMA = REPO / "workflow/schemas/config.schema.yaml"


def _labels_match_pixels(split) -> bool:
    n = len(split.class_names)
    return all(nearest_class(image, n) == int(label) for image, label in zip(split.images, split.labels))


# ---- the catalog is what torchvision and the schema say -----------------------------------------

@pytest.mark.parametrize("name", REAL_DATASETS)
def test_every_catalog_entry_opens_a_real_torchvision_class_with_arguments_it_takes(name):
    source = TORCHVISION_DATASETS[name]
    reader = getattr(torchvision.datasets, source.torchvision_class)
    accepted = inspect.signature(reader.__init__).parameters
    for kwargs in source.partitions.values():
        fetch = {"download"} if source.downloadable else set()
        assert set(kwargs) | set(source.extra_kwargs) | fetch <= set(accepted), (name, kwargs)
    assert source.downloadable == ("download" in accepted)


def test_the_schema_lists_the_catalog_and_the_world_draws_each_of_its_tasks():
    schema = yaml.safe_load(SCHEMA.read_text())
    assert schema["definitions"]["task"]["properties"]["torchvision"]["enum"] == list(REAL_DATASETS)
    assert list(TASK_SPECS) == list(WORLD_TASKS)


@pytest.mark.parametrize("name", REAL_DATASETS)
def test_a_missing_torchvision_dataset_names_its_folder_layout_and_fetch_command(tmp_path, name):
    with pytest.raises(DatasetUnavailableError) as raised:
        prepare_real_dataset(name, tmp_path, image_size=32)
    message, source = str(raised.value), TORCHVISION_DATASETS[name]
    assert message.startswith(f"{source.title} dataset is missing") and f"looked in {tmp_path / source.folder}" in message
    assert source.layout.format(root=tmp_path) in message and "download=True" in message


# ---- torchvision datasets on fabricated files ---------------------------------------------------

def test_official_train_val_test_splits_are_kept_as_given(tmp_path):
    classes = make_dtd(tmp_path, per_split=2)
    splits, manifest = prepare_real_dataset("dtd", tmp_path, image_size=32)
    assert {k: len(v) for k, v in splits.items()} == {"train": 6, "val": 6, "test": 6}
    assert splits["train"].class_names == classes and all(_labels_match_pixels(s) for s in splits.values())
    assert manifest["splits"]["val"]["source_partition"] == "val"
    assert manifest["split_rule"] == "the official train/val/test splits"
    assert manifest["splits"]["test"]["ids"][0] == "banded/banded_test_0.jpg"


def test_country211_reads_its_valid_folder_as_val_and_names_countries_like_clip_benchmark(tmp_path):
    codes = make_country211(tmp_path)
    splits, manifest = prepare_real_dataset("country211", tmp_path, image_size=32)
    assert manifest["splits"]["val"]["ids"][0] == "valid/C000/0.jpg" and len(splits["test"]) == 211
    assert splits["test"].class_names[:3] == ["Andorra", "United Arab Emirates", "Afghanistan"]
    assert manifest["source_class_names"] == codes and _labels_match_pixels(splits["test"])


def test_a_dataset_with_train_and_test_gets_a_stratified_val_carved_from_train(tmp_path):
    classes = make_food101(tmp_path, train_per_class=5, test_per_class=2)
    splits, manifest = prepare_real_dataset("food101", tmp_path, image_size=32, val_fraction=0.2, seed=1)
    assert [e["class_counts"] for e in manifest["splits"].values()] == [[4, 4, 4], [1, 1, 1], [2, 2, 2]]
    assert not set(manifest["splits"]["train"]["ids"]) & set(manifest["splits"]["val"]["ids"])
    assert splits["train"].class_names == [c.replace("_", " ") for c in classes]
    again, _ = prepare_real_dataset("food101", tmp_path, image_size=32, val_fraction=0.2, seed=1)
    assert torch.equal(again["val"].images, splits["val"].images)  # the carve is a function of the seed


def test_gtsrb_reads_its_test_csv_and_takes_clip_benchmarks_sign_names(tmp_path):
    make_gtsrb(tmp_path, train_per_class=2, test_per_class=1)
    splits, manifest = prepare_real_dataset("gtsrb", tmp_path, image_size=32, val_fraction=0.5,
                                            split_sizes={"test": 43})
    assert len(splits["test"]) == 43 and splits["test"].class_names[0] == "red and white circle 20 kph speed limit"
    assert _labels_match_pixels(splits["test"]) and manifest["splits"]["test"]["ids"][0] == "Final_Test/Images/00000.ppm"
    assert all(i.startswith("Training/000") for i in manifest["splits"]["train"]["ids"])


def test_fgvc_aircraft_variants_with_spaces_and_held_out_use_only_the_test_split(tmp_path):
    variants = make_fgvc_aircraft(tmp_path)
    splits, manifest = prepare_real_dataset("fgvc-aircraft", tmp_path, image_size=32, wanted=("test",), task="planes")
    assert list(splits) == ["test"] and manifest["dataset"] == "planes" and splits["test"].class_names == variants
    assert manifest["split_rule"] == "the official test split (a held-out task)"


@pytest.mark.parametrize("maker, name", [(make_sun397, "sun397"), (make_caltech101, "caltech101")])
def test_datasets_without_an_official_split_are_drawn_80_10_10_stratified(tmp_path, maker, name):
    classes = maker(tmp_path, per_class=10)
    splits, manifest = prepare_real_dataset(name, tmp_path, image_size=32, seed=0)
    assert [e["class_counts"] for e in manifest["splits"].values()] == [[8, 8, 8], [1, 1, 1], [1, 1, 1]]
    assert manifest["source_class_names"] == classes and all(_labels_match_pixels(s) for s in splits.values())
    assert all(" " in n or n.isalpha() for n in splits["train"].class_names)  # '_' and '/' read as spaces


def test_split_sizes_beyond_an_official_split_are_refused_with_the_fix(tmp_path):
    make_dtd(tmp_path, per_split=2)
    with pytest.raises(ValueError, match="split size test=100 is more than the 6 images"):
        prepare_real_dataset("dtd", tmp_path, image_size=32, split_sizes={"test": 100})


# ---- image folders -------------------------------------------------------------------------------

def test_an_image_folder_of_class_folders_is_split_stratified_with_the_seed(tmp_path):
    root = make_imagefolder(tmp_path / "shapes", per_class=10)
    splits, manifest = prepare_imagefolder("shapes", root, image_size=32, seed=3)
    assert [e["class_counts"] for e in manifest["splits"].values()] == [[8, 8, 8], [1, 1, 1], [1, 1, 1]]
    assert splits["train"].class_names == ["cat a", "cat b", "cat c"]
    assert manifest["source_class_names"] == ["cat_a", "cat_b", "cat_c"]
    assert all(_labels_match_pixels(split) for split in splits.values())
    ids = [i for entry in manifest["splits"].values() for i in entry["ids"]]
    assert len(set(ids)) == 30 and "cat_a/0.png" in ids and splits["train"].images.shape[1:] == (3, 32, 32)


def test_split_folders_are_kept_and_a_missing_val_is_carved_from_train(tmp_path):
    root = make_imagefolder(tmp_path / "xray", splits={"train": 10, "test": 3})
    splits, manifest = prepare_imagefolder("xray", root, image_size=32, val_fraction=0.2,
                                           class_names={"cat_a": "normal", "cat_b": "pneumonia", "cat_c": "covid"})
    assert {k: len(v) for k, v in splits.items()} == {"train": 24, "val": 6, "test": 9}
    assert splits["test"].class_names == ["normal", "pneumonia", "covid"]
    assert manifest["splits"]["test"]["ids"][0] == "test/cat_a/0.png"


def test_class_names_come_from_a_json_file_that_must_name_every_folder(tmp_path):
    root = make_imagefolder(tmp_path / "data", classes=("a", "b"), per_class=10)
    mapping = tmp_path / "names.json"
    mapping.write_text(json.dumps({"a": "apple", "b": "banana"}))
    splits, _ = prepare_imagefolder("fruit", root, image_size=32, class_names=str(mapping))
    assert splits["train"].class_names == ["apple", "banana"]
    mapping.write_text(json.dumps({"a": "apple", "z": "zebra"}))
    with pytest.raises(DatasetUnavailableError, match=r"missing \['b'\], not a folder \['z'\]"):
        prepare_imagefolder("fruit", root, image_size=32, class_names=str(mapping))


@pytest.mark.parametrize("arrange, problem", [
    (lambda root: None, "does not exist"),
    (lambda root: make_imagefolder(root, classes=("only",), per_class=3),
     "has one class folder, only/: a classification task needs at least two classes"),
    (lambda root: (make_imagefolder(root, splits={"train": 2, "test": 2}), (root / "test" / "cat_c" / "0.png").unlink(),
                   (root / "test" / "cat_c" / "1.png").unlink()), "class folders without images (test/cat_c"),
    (lambda root: (make_imagefolder(root, splits={"train": 2}), (root / "test" / "x").mkdir(parents=True)),
     "different class folders in train/ and test/"),
    (lambda root: make_imagefolder(root, splits={"train": 2, "val": 2}),
     "has split folders ['train', 'val'] but not ['test']"),
    # a level off: a class folder as root, or the folder above the split or class folders
    (lambda root: (make_imagefolder(root.parent / "all", per_class=2), (root.parent / "all" / "cat_a").rename(root)),
     "holds 2 image file(s) directly: it looks like one class folder, one level too deep - point root at"),
    (lambda root: make_imagefolder(root / "xray", splits={"train": 2, "test": 2}),
     "holds one folder, xray/, which holds the split folders: root is one level too high - point it at"),
    (lambda root: make_imagefolder(root / "photos", per_class=2),
     "holds one folder, photos/, which holds the class folders: root is one level too high"),
])
def test_malformed_image_folders_are_refused_with_the_layout_expected(tmp_path, arrange, problem):
    root = tmp_path / "mine"
    arrange(root)
    with pytest.raises(DatasetUnavailableError) as raised:
        imagefolder_partitions("mine", root)
    assert problem in str(raised.value) and "Expected layout:" in str(raised.value) and str(root) in str(raised.value)


def test_every_unreadable_image_is_reported_by_path_and_nothing_is_returned(tmp_path):
    root = make_imagefolder(tmp_path / "broken", per_class=10)
    (root / "cat_a" / "3.png").write_bytes(b"not an image")
    truncated = (root / "cat_c" / "7.png").read_bytes()
    (root / "cat_c" / "7.png").write_bytes(truncated[: len(truncated) // 3])
    with pytest.raises(CorruptImagesError) as raised:
        prepare_imagefolder("broken", root, image_size=32)
    message = str(raised.value)
    assert message.startswith("2 image file(s) of broken cannot be read")
    assert "cat_a/3.png: UnidentifiedImageError" in message and "cat_c/7.png" in message


def test_grayscale_and_rgba_images_come_out_rgb(tmp_path):
    root = make_imagefolder(tmp_path / "modes", classes=("a", "b"), per_class=10)
    Image.open(root / "a" / "0.png").convert("L").save(root / "a" / "0.png")
    Image.open(root / "b" / "0.png").convert("RGBA").save(root / "b" / "0.png")
    splits, _ = prepare_imagefolder("modes", root, image_size=32)
    assert all(split.images.shape[1] == 3 for split in splits.values())


# ---- an image folder as a held-out task -----------------------------------------------------------

@pytest.mark.parametrize("layout", ["flat", "test only", "beside train and val"])
def test_a_held_out_image_folder_is_all_test_in_either_layout_and_never_needs_train(tmp_path, layout):
    root = tmp_path / "holdout"
    if layout == "flat":
        make_imagefolder(root, per_class=10)  # root/<class>/: all of it is the test set
    else:
        make_imagefolder(root, splits={"test": 10, **({"train": 4, "val": 2} if layout != "test only" else {})})
    splits, manifest = prepare_imagefolder("holdout", root, image_size=32, wanted=("test",),
                                           split_sizes={"test": 2000})  # the default cap: larger than the folder
    assert list(splits) == ["test"] and len(splits["test"]) == 30 and _labels_match_pixels(splits["test"])
    whole = "all of its images" if layout == "flat" else "the official test split"
    assert manifest["split_rule"] == f"{whole} (a held-out task)"
    capped, manifest = prepare_imagefolder("holdout", root, image_size=32, wanted=("test",), split_sizes={"test": 6},
                                           seed=3)
    assert capped["test"].labels.bincount().tolist() == [2, 2, 2]  # a stratified, seeded cap
    assert manifest["split_rule"].endswith("a stratified subset of 6 of its 30 drawn with the seed")


def test_a_held_out_folder_with_split_folders_but_no_test_is_refused_naming_test(tmp_path):
    root = make_imagefolder(tmp_path / "holdout", splits={"train": 2, "val": 2})
    with pytest.raises(DatasetUnavailableError, match=r"has split folders \['train', 'val'\] but no test/: a held-out "
                                                      "task is only tested"):
        imagefolder_partitions("holdout", root, wanted=("test",))


def test_class_names_from_folders_read_as_a_prompt_would_and_the_manifest_keeps_the_folders(tmp_path):
    root = make_imagefolder(tmp_path / "data", classes=("golden-retriever", "tabby_cat", "sea__lion"), per_class=10)
    splits, manifest = prepare_imagefolder("pets", root, image_size=32, wanted=("test",))
    assert splits["test"].class_names == ["golden retriever", "sea lion", "tabby cat"]
    assert manifest["source_class_names"] == ["golden-retriever", "sea__lion", "tabby_cat"]


def test_sizes_that_do_not_fit_an_unsplit_fine_tuning_folder_are_refused_before_any_job(tmp_path):
    from clipdrift.data.layout import check_dataset_on_disk

    root = make_imagefolder(tmp_path / "mine", per_class=10)
    settings = {"source": "imagefolder", "root": str(root)}
    with pytest.raises(DatasetUnavailableError, match=r"datasets\[0\]\.sizes of task 'mine' names \['test'\], but its "
                                                      r"image folder .* has no split folders.*sizes: \{train: N, val: N, "
                                                      r"test: N\}"):
        check_dataset_on_disk(settings, "mine", sizes={"test": 5}, sizes_key="datasets[0].sizes")
    check_dataset_on_disk(settings, "mine", sizes={"train": 5, "val": 2, "test": 3})
    check_dataset_on_disk(settings, "mine", wanted=("test",), sizes={"test": 5})  # a held-out task: a cap


def test_a_cluttered_folder_reads_its_images_and_says_what_it_skipped(tmp_path):
    root = make_imagefolder(tmp_path / "clutter", classes=("a", "b"), per_class=6)
    (root / "a" / "0.png").rename(root / "a" / "0.PNG")  # extensions in any case
    Image.open(root / "a" / "1.png").convert("L").resize((20, 70)).save(root / "a" / "1.Jpg")  # another size and mode
    (root / "a" / "1.png").unlink()
    (root / "b" / "more").mkdir()
    (root / "b" / "2.png").rename(root / "b" / "more" / "2.png")  # a sub-folder inside a class: read as that class
    (root / "b" / "linked.png").symlink_to(root / "b" / "3.png")  # a link to an image: read
    for clutter in ("a/Thumbs.db", "a/.DS_Store", "b/notes.txt", "a/._0.PNG"):  # ._x: macOS metadata, not an image
        (root / clutter).write_bytes(b"\x00\x05clutter")
    (root / ".ipynb_checkpoints").mkdir()  # a hidden folder is no class
    splits, manifest = prepare_imagefolder("clutter", root, image_size=32, wanted=("test",))
    assert len(splits["test"]) == 13 and splits["test"].class_names == ["a", "b"] and _labels_match_pixels(splits["test"])
    files = manifest["files"]
    assert (files["skipped"], files["in_subfolders"], files["through_links"]) == (4, 1, 1)
    assert files["skipped_examples"] == sorted(["a/._0.PNG", "a/.DS_Store", "a/Thumbs.db", "b/notes.txt"])
