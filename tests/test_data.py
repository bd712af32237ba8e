"""Real datasets through torchvision on fabricated directories, splits, probe subset, tensor cache."""

import json
import shutil

import pytest
import torch
from PIL import Image

from clipdrift.data.real import DatasetUnavailableError, prepare_real_dataset, preprocess_transform
from clipdrift.data.sampling import SplitError, class_counts, probe_indices, seeded_order, stratified_split, with_probe

from fakedata import (
    CIFAR100_CLASSES,
    CIFAR100_FINE_LABEL_NAMES,
    EUROSAT_CLASSES,
    PETS_BREEDS,
    accept_fabricated,
    cifar100_test_pixels,
    make_cifar100,
    make_eurosat,
    make_pets,
    nearest_class,
    pets_class_name,
)

EUROSAT_SIZES = {"train": 30, "val": 10, "test": 10}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    make_eurosat(root, per_class=5)
    make_pets(root, trainval_per_class=10, test_per_class=3)
    make_cifar100(root, test_per_class=4)
    return root


@pytest.fixture(scope="module")
def eurosat(data_root):
    return prepare_real_dataset("eurosat", data_root, image_size=32, split_sizes=EUROSAT_SIZES, seed=3)


# ---- splits and the probe subset ---------------------------------------------------------------

def imbalanced_labels():
    return torch.tensor([0] * 50 + [1] * 30 + [2] * 20)[seeded_order(100, 0, "shuffle")]


def test_stratified_split_has_exact_sizes_class_proportions_and_no_overlap():
    labels = imbalanced_labels()
    splits = stratified_split(labels, {"train": 60, "val": 20, "test": 20}, seed=1)
    assert {k: class_counts(labels[v], 3) for k, v in splits.items()} == {
        "train": [30, 18, 12], "val": [10, 6, 4], "test": [10, 6, 4]}
    union = torch.cat(list(splits.values()))
    assert sorted(union.tolist()) == list(range(100))  # disjoint and complete
    assert all(torch.equal(v, v.sort().values) for v in splits.values())


def test_stratified_split_leaves_out_what_the_sizes_do_not_ask_for():
    splits = stratified_split(imbalanced_labels(), {"train": 10, "val": 5}, seed=1)
    assert [len(v) for v in splits.values()] == [10, 5]
    assert not set(splits["train"].tolist()) & set(splits["val"].tolist())


def test_split_is_stable_across_calls_and_machines_and_depends_on_the_seed():
    labels = imbalanced_labels()
    first = stratified_split(labels, {"train": 60, "val": 20, "test": 20}, seed=1)
    again = stratified_split(labels.clone(), {"train": 60, "val": 20, "test": 20}, seed=1)
    assert all(torch.equal(first[k], again[k]) for k in first)
    # Hash-ranked, not drawn from a library RNG: these values hold on any machine and version.
    assert seeded_order(8, 0, "split").tolist() == [4, 3, 1, 2, 0, 5, 7, 6]
    assert first["val"].tolist()[:6] == [3, 7, 8, 9, 13, 16]
    other = stratified_split(labels, {"train": 60, "val": 20, "test": 20}, seed=2)
    assert not torch.equal(first["val"], other["val"])


def test_split_sizes_larger_than_the_data_are_refused():
    with pytest.raises(SplitError, match="add up to 101 but the data has only 100 items"):
        stratified_split(imbalanced_labels(), {"train": 81, "val": 10, "test": 10}, seed=0)
    with pytest.raises(SplitError, match="non-negative integer"):
        stratified_split(imbalanced_labels(), {"train": 1.5}, seed=0)


def test_probe_is_class_balanced_fixed_and_a_subset():
    labels = torch.arange(37).repeat_interleave(10)  # Pets-like: 37 classes
    probe = probe_indices(labels)
    counts = class_counts(labels[probe], 37)
    assert len(probe) == 200 and sorted(set(counts)) == [5, 6] and counts.count(6) == 200 - 37 * 5
    assert torch.equal(probe, probe_indices(labels.clone(), 200, 42))
    assert len(set(probe.tolist())) == 200 and torch.equal(probe, probe.sort().values)
    assert not torch.equal(probe, probe_indices(labels, 200, seed=43))


def test_probe_takes_all_of_a_small_class_and_fills_up_from_the_others():
    labels = torch.tensor([0] * 3 + [1] * 100 + [2] * 100)
    counts = class_counts(labels[probe_indices(labels, n=60)], 3)
    assert counts[0] == 3 and sorted(counts[1:]) == [28, 29] and sum(counts) == 60
    assert len(probe_indices(labels[:10], n=200)) == 10  # fewer items than n: all of them


# ---- EuroSAT ----------------------------------------------------------------------------------

def test_eurosat_loads_through_torchvision_into_stratified_uint8_splits(eurosat):
    splits, manifest = eurosat
    assert {k: v.images.shape for k, v in splits.items()} == {
        "train": (30, 3, 32, 32), "val": (10, 3, 32, 32), "test": (10, 3, 32, 32)}
    assert all(s.images.dtype == torch.uint8 for s in splits.values())
    assert {k: e["class_counts"] for k, e in manifest["splits"].items()} == {
        "train": [3] * 10, "val": [1] * 10, "test": [1] * 10}
    ids = [set(e["ids"]) for e in manifest["splits"].values()]
    assert sum(map(len, ids)) == 50 and len(set.union(*ids)) == 50  # disjoint, all 50 files
    assert manifest["source_class_names"] == EUROSAT_CLASSES
    assert splits["train"].class_names[0] == "annual crop land" and splits["train"].class_names[-1] == "sea or lake"
    assert manifest["preprocessing"].items() >= {"resize": 32, "center_crop": 32, "interpolation": "bilinear"}.items()


def test_eurosat_images_labels_and_ids_line_up(eurosat, data_root):
    splits, manifest = eurosat
    split, entry = splits["val"], manifest["splits"]["val"]
    transform = preprocess_transform(32, "bilinear")
    for position, file_id in enumerate(entry["ids"]):
        folder = file_id.split("/")[0]
        assert split.labels[position] == EUROSAT_CLASSES.index(folder)
        image = Image.open(data_root / "eurosat" / "2750" / file_id).convert("RGB")
        assert torch.equal(split.images[position], transform(image))
    assert all(nearest_class(img, 10) == int(lab) for img, lab in zip(splits["train"].images, splits["train"].labels))


def test_manifest_is_identical_across_calls_and_directories(eurosat, data_root, tmp_path):
    _, manifest = eurosat
    moved = tmp_path / "elsewhere"
    shutil.copytree(data_root / "eurosat", moved / "eurosat")  # another machine, another path
    _, again = prepare_real_dataset("eurosat", moved, image_size=32, split_sizes=EUROSAT_SIZES, seed=3)
    assert json.dumps(again, sort_keys=True) == json.dumps(manifest, sort_keys=True)
    _, reseeded = prepare_real_dataset("eurosat", moved, image_size=32, split_sizes=EUROSAT_SIZES, seed=4)
    assert reseeded["splits"]["val"]["ids"] != manifest["splits"]["val"]["ids"]


def test_interpolation_is_a_choice_and_unknown_ones_are_refused(data_root):
    sizes = {"train": 0, "val": 0, "test": 10}
    bicubic, manifest = prepare_real_dataset("eurosat", data_root, image_size=24, interpolation="bicubic",
                                             split_sizes=sizes, seed=3)
    bilinear, _ = prepare_real_dataset("eurosat", data_root, image_size=24, split_sizes=sizes, seed=3)
    assert manifest["preprocessing"]["interpolation"] == "bicubic" and bicubic["test"].images.shape[-1] == 24
    assert not torch.equal(bicubic["test"].images, bilinear["test"].images)
    with pytest.raises(ValueError, match="interpolation 'nearest' is unknown"):
        prepare_real_dataset("eurosat", data_root, image_size=24, interpolation="nearest", split_sizes=sizes)


def test_eurosat_split_sizes_beyond_the_data_are_refused(data_root):
    with pytest.raises(SplitError, match="only 50 items: lower the split sizes"):
        prepare_real_dataset("eurosat", data_root, image_size=32)  # the published 21,600/2,700/2,700


def test_download_allowed_but_data_present_does_not_touch_the_network(data_root, monkeypatch):
    import torchvision.datasets.eurosat as tv_eurosat

    def no_network(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(tv_eurosat, "download_and_extract_archive", no_network)
    splits, _ = prepare_real_dataset("eurosat", data_root, download=True, image_size=32,
                                     split_sizes={"train": 10, "val": 0, "test": 0})
    assert len(splits["train"]) == 10 and len(splits["val"]) == 0


def test_probe_drawn_from_the_evaluation_split_is_recorded(eurosat):
    splits, manifest = eurosat
    with_p, manifest_p = with_probe(splits, manifest, source="test", n=5)
    entry = manifest_p["splits"]["probe"]
    assert len(with_p["probe"]) == 5 and entry["n"] == 5 and entry["seed"] == 42
    assert entry["class_counts"].count(1) == 5 and set(entry["ids"]) <= set(manifest["splits"]["test"]["ids"])
    assert torch.equal(with_p["probe"].images, splits["test"].images[entry["indices"]])
    assert "probe" not in manifest["splits"]  # the input manifest is left alone


# ---- Oxford-IIIT Pets -------------------------------------------------------------------------

def test_pets_keeps_the_official_test_and_carves_a_stratified_val(data_root):
    splits, manifest = prepare_real_dataset("pets", data_root, image_size=32, val_fraction=0.2, seed=0)
    counts = {k: e["class_counts"] for k, e in manifest["splits"].items()}
    assert counts == {"train": [8, 8, 8, 8], "val": [2, 2, 2, 2], "test": [3, 3, 3, 3]}
    test_list = (data_root / "oxford-iiit-pet/annotations/test.txt").read_text()
    test_ids = [line.split()[0] for line in test_list.split("\n") if line]
    assert manifest["splits"]["test"]["ids"] == test_ids
    assert not set(manifest["splits"]["train"]["ids"]) & set(manifest["splits"]["val"]["ids"])
    assert set(manifest["splits"]["train"]["ids"]) | set(manifest["splits"]["val"]["ids"]) == {
        line.split()[0] for line in (data_root / "oxford-iiit-pet/annotations/trainval.txt").read_text().split("\n") if line}
    assert splits["test"].class_names == [pets_class_name(stem) for stem, _ in PETS_BREEDS]
    assert splits["test"].class_names[1] == "American Bulldog"
    # Non-square photos come out centre-cropped to the square size, labels matching the pixels.
    assert splits["train"].images.shape == (32, 3, 32, 32)
    assert all(nearest_class(img, 4) == int(lab) for img, lab in zip(splits["test"].images, splits["test"].labels))


def test_pets_without_val_trains_on_all_of_trainval(data_root):
    splits, manifest = prepare_real_dataset("pets", data_root, image_size=32, val_fraction=0.0)
    assert len(splits["train"]) == 40 and len(splits["val"]) == 0 and manifest["splits"]["val"]["ids"] == []


# ---- CIFAR-100 --------------------------------------------------------------------------------

def test_cifar100_gives_the_test_set_with_readable_class_names(data_root, monkeypatch):
    accept_fabricated(monkeypatch, data_root)
    splits, manifest = prepare_real_dataset("cifar100", data_root, image_size=32)
    assert list(splits) == ["test"] and len(splits["test"]) == 4 * len(CIFAR100_CLASSES)
    assert splits["test"].class_names[1] == "aquarium fish" and manifest["source_class_names"] == CIFAR100_FINE_LABEL_NAMES
    pixels, labels = cifar100_test_pixels(4)
    # 32 px at 32 px: resize and crop are the identity, so the cache holds the exact pixels.
    assert torch.equal(splits["test"].images, torch.from_numpy(pixels).permute(0, 3, 1, 2))
    assert splits["test"].labels.tolist() == labels and manifest["splits"]["test"]["ids"] == list(range(20))


def test_cifar100_files_that_fail_the_checksum_are_reported_as_corrupted(data_root):
    with pytest.raises(DatasetUnavailableError, match="CIFAR-100 dataset is incomplete or corrupted"):
        prepare_real_dataset("cifar100", data_root, image_size=32)


# ---- missing datasets -------------------------------------------------------------------------

@pytest.mark.parametrize("name, title, layout, command", [
    ("eurosat", "EuroSAT (RGB)", "eurosat/2750/<Class>/<Class>_<n>.jpg", "EuroSAT('{root}', download=True)"),
    ("pets", "Oxford-IIIT Pets", "oxford-iiit-pet/annotations/{trainval,test}.txt",
     "OxfordIIITPet('{root}', download=True)"),
    ("cifar100", "CIFAR-100", "cifar-100-python/{train,test,meta}", "CIFAR100('{root}', download=True)"),
])
def test_missing_dataset_names_the_dataset_directory_layout_and_fix(tmp_path, name, title, layout, command):
    with pytest.raises(DatasetUnavailableError) as raised:
        prepare_real_dataset(name, tmp_path, image_size=32)
    message = str(raised.value)
    assert message.startswith(f"{title} dataset is missing")
    assert f"looked in {tmp_path}/" in message and f"{tmp_path}/{layout}" in message
    assert "download=True" in message and command.format(root=tmp_path) in message


def test_unknown_dataset_is_refused(tmp_path):
    with pytest.raises(ValueError, match="dataset 'mnist' is unknown"):
        prepare_real_dataset("mnist", tmp_path)
