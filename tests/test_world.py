"""The offline synthetic world: determinism, what the images and captions show, the tasks'
interface, a pretrained backbone that loads like downloaded weights, and the study's effect."""

import dataclasses

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from clipdrift.core.errors import UserFacingError
from clipdrift.data.split import ImageSplit
from clipdrift.data.world.render import (
    COLOURS,
    SHAPES,
    TERRAINS,
    Attributes,
    WorldConfig,
    captions,
    colour_rgb,
    render,
    sample_attributes,
    stream_generator,
)
from clipdrift.data.world.tasks import TASK_SPECS, task_splits
from clipdrift.measure.zeroshot import evaluate, text_classifier
from clipdrift.model.adapters import MethodConfig, apply_method
from clipdrift.model.backbones import BackboneSpec, build_classifier, create_clip
from clipdrift.train.config import TrainConfig
from clipdrift.train.engine import finetune
from clipdrift.train.pretrain import PretrainConfig, pretrain_backbone, world_pairs

WORLD = WorldConfig(seed=3)
SIZES = {"train": 120, "val": 40, "test": 100}


def test_same_seed_gives_byte_identical_images_and_captions():
    images_a, captions_a = world_pairs(WORLD, 300)
    images_b, captions_b = world_pairs(WorldConfig(seed=3), 300)
    assert images_a.dtype == torch.uint8 and images_a.shape == (300, 3, 32, 32)
    assert torch.equal(images_a, images_b)
    assert captions_a == captions_b
    images_c, captions_c = world_pairs(WorldConfig(seed=4), 300)
    assert not torch.equal(images_a, images_c)
    assert captions_a != captions_c


def test_task_splits_are_deterministic_per_seed():
    first, manifest_a = task_splits("world-pets", WORLD, SIZES)
    second, manifest_b = task_splits("world-pets", WORLD, SIZES)
    for name in SIZES:
        assert torch.equal(first[name].images, second[name].images)
        assert torch.equal(first[name].labels, second[name].labels)
    assert manifest_a == manifest_b
    # Splits draw from their own streams: val and train never share images.
    assert not torch.equal(first["train"].images[:40], first["val"].images)


def _tokens_used(tokenizer, texts):
    ids = tokenizer(texts)
    return (ids != 0).sum(dim=1), ids


def test_captions_name_colour_and_shape_and_fit_the_context():
    generator = stream_generator(0, "test-captions")
    attrs = sample_attributes(WORLD, 400, generator)
    texts = captions(WORLD, attrs)
    for text, colour, shape in zip(texts, attrs.colour.tolist(), attrs.shape.tolist()):
        assert f"{COLOURS[colour]} {SHAPES[shape]}" in text
    assert len(set(texts)) > 200  # varied templates and optional attributes, not one sentence
    tokenizer = open_clip.get_tokenizer("clipdrift-tiny")
    used, ids = _tokens_used(tokenizer, texts)
    # Untruncated: every caption ends with end-of-text before the context is full.
    assert int(used.max()) < tokenizer.context_length
    assert all(row[n - 1] == tokenizer.eot_token_id for row, n in zip(ids, used.tolist()))


def _single_object(shape: int, colour: int, pattern: int = 0) -> tuple[WorldConfig, Attributes]:
    """One noise-free, centred object of radius 0.35 on its world's ground."""
    world = dataclasses.replace(WORLD, noise=0.0, colour_jitter=0.0)
    attrs = sample_attributes(world, 1, stream_generator(0, "single"), shape=torch.tensor([shape]),
                              colour=torch.tensor([colour]), pattern=torch.tensor([pattern]))
    attrs.radius[:] = 0.35
    attrs.centre[:] = 0.5
    return world, attrs


def test_object_shows_its_colour_and_each_shape_has_its_own_silhouette():
    silhouettes = []
    for shape in range(len(SHAPES)):
        world, attrs = _single_object(shape, colour=COLOURS.index("blue"))
        image = render(world, attrs, stream_generator(0, "render")).float()[0] / 255
        blue = (image - colour_rgb()[COLOURS.index("blue")].view(3, 1, 1)).abs().amax(0) < 0.02
        silhouettes.append(blue)
        assert blue.sum() > 60, f"{SHAPES[shape]} covers too few pixels"
    for i in range(len(SHAPES)):
        for j in range(i + 1, len(SHAPES)):
            a, b = silhouettes[i], silhouettes[j]
            # Pixels covered by exactly one of the two: a circle and a square of radius 11 px
            # still differ in ~70 pixels (the corners).
            differing = int((a ^ b).sum())
            assert differing >= 50, f"{SHAPES[i]} and {SHAPES[j]} differ in only {differing} pixels"


@pytest.mark.parametrize("task,n_classes,splits", [
    ("world-eurosat", 10, ("train", "val", "test")),
    ("world-pets", 37, ("train", "val", "test")),
    ("world-cifar100", 100, ("test",)),
])
def test_tasks_have_the_interface_of_real_datasets(task, n_classes, splits):
    sizes = {name: SIZES[name] if n_classes < 100 else 200 for name in splits}
    result, manifest = task_splits(task, WORLD, sizes)
    assert tuple(result) == splits
    for name, split in result.items():
        assert isinstance(split, ImageSplit)
        assert len(split.class_names) == n_classes and len(split) == sizes[name]
        counts = torch.bincount(split.labels, minlength=n_classes)
        assert counts.max() - counts.min() <= 1  # balanced
        assert manifest["splits"][name]["class_counts"] == counts.tolist()
    assert manifest["class_names"] == result["test"].class_names
    assert manifest["seed"] == WORLD.seed and manifest["dataset"] == task


def test_class_names_are_prompt_subjects():
    cifar, _ = task_splits("world-cifar100", WORLD, {"test": 100})
    assert "red triangle" in cifar["test"].class_names
    eurosat, _ = task_splits("world-eurosat", WORLD, {"test": 10})
    assert eurosat["test"].class_names == list(TERRAINS)
    pets, _ = task_splits("world-pets", WORLD, {"test": 37})
    assert "navy star" in pets["test"].class_names and len(set(pets["test"].class_names)) == 37
    # The zero-shot task is held out: no class, and no colour, in common with fine-tuning.
    assert not set(cifar["test"].class_names) & set(pets["test"].class_names)
    zeroshot_colours = {name.split(" ")[0] for name in cifar["test"].class_names}
    assert len(zeroshot_colours) == 10 and not zeroshot_colours & {name.split(" ")[0] for name in pets["test"].class_names}


def test_zero_shot_task_refuses_training_splits():
    with pytest.raises(UserFacingError, match="world-cifar100 has splits"):
        task_splits("world-cifar100", WORLD, {"train": 100, "test": 100})
    with pytest.raises(UserFacingError, match="unknown world task"):
        task_splits("world-imagenet", WORLD, {"test": 100})
    with pytest.raises(UserFacingError, match="below its 37 classes"):
        task_splits("world-pets", WORLD, {"train": 20})
    assert set(TASK_SPECS) == {"world-eurosat", "world-pets", "world-cifar100", "world-patterns"}
    with pytest.raises(UserFacingError, match="world-patterns has splits"):
        task_splits("world-patterns", WORLD, {"train": 100})


def test_eurosat_like_task_is_visually_shifted():
    eurosat, _ = task_splits("world-eurosat", WORLD, {"test": 200})
    pets, _ = task_splits("world-pets", WORLD, {"test": 200})
    # Ground tiles through the sensor: low contrast and a blue cast, unlike pretraining images.
    spread = lambda split: split.images.float().std(dim=(1, 2, 3)).mean()  # noqa: E731
    assert spread(eurosat["test"]) < 0.8 * spread(pets["test"])
    channel_means = eurosat["test"].images.float().mean(dim=(0, 2, 3))
    assert channel_means[2] > channel_means[0] + 5
    # Land-cover classes differ in texture: class-mean spatial spectra are not all alike.
    by_class = [eurosat["test"].images[eurosat["test"].labels == c].float().mean(1) for c in range(10)]
    spectra = torch.stack([torch.fft.fft2(x - x.mean()).abs().mean(0).flatten() for x in by_class])
    distances = torch.cdist(spectra, spectra) + torch.eye(10) * 1e9
    assert distances.min() > 0.05 * spectra.norm(dim=1).mean()


# ---------------------------------------------------------------- the backbone and the effect

# Enough pretraining to be far above chance (1%) in well under a minute of CPU.
SMALL_PRETRAIN = PretrainConfig(steps=400, batch_size=64, pool_size=5000, eval_size=500)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    clip, history = pretrain_backbone(WORLD, SMALL_PRETRAIN, progress=False)
    path = tmp_path_factory.mktemp("backbone") / "backbone.safetensors"
    save_file(clip.state_dict(), str(path))
    return clip, history, path


@pytest.mark.slow
def test_pretraining_learns_a_zero_shot_classifier(pretrained):
    _, history, _ = pretrained
    assert history["zeroshot"]["task"] == "world-cifar100" and history["zeroshot"]["n_images"] == 500
    assert history["zeroshot"]["top1"] >= 0.10  # 10× chance after this short run (measured ~0.2)
    assert history["loss_final"] < 0.5 * history["loss_first"]
    assert history["loss_curve"][-1]["step"] == SMALL_PRETRAIN.steps
    assert history["time_s"] >= history["train_time_s"] > 0


@pytest.mark.slow
def test_saved_backbone_loads_like_downloaded_weights(pretrained):
    clip, _, path = pretrained
    loaded = create_clip(BackboneSpec("clipdrift-tiny", str(path)))
    for key, value in clip.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    classifier = build_classifier(BackboneSpec("clipdrift-tiny", str(path)), n_classes=10, seed=0)
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(classifier.image_features(images), clip.encode_image(images), atol=1e-5)


def test_pretraining_is_deterministic():
    config = PretrainConfig(steps=3, batch_size=16, pool_size=64, eval_size=100)
    first, history_a = pretrain_backbone(WORLD, config, progress=False)
    second, history_b = pretrain_backbone(WORLD, config, progress=False)
    assert history_a["loss_curve"] == history_b["loss_curve"] and history_a["zeroshot"] == history_b["zeroshot"]
    for key, value in first.state_dict().items():
        assert torch.equal(second.state_dict()[key], value), key


def _zero_shot_after(path, splits, method, lr, classifier_weights, cifar) -> float:
    model = apply_method(build_classifier(BackboneSpec("clipdrift-tiny", str(path)), 10, seed=7), MethodConfig(method))
    finetune(model, splits["train"], splits["val"], TrainConfig(epochs=3, lr=lr, seed=7, device="cpu"), progress=False)
    return evaluate(model, classifier_weights, cifar, device="cpu")["top1"]


@pytest.mark.slow
def test_at_the_highest_rate_lora_keeps_more_zero_shot_than_full_ft(pretrained):
    clip, history, path = pretrained
    splits, _ = task_splits("world-eurosat", WORLD, {"train": 500, "val": 100})
    cifar = task_splits("world-cifar100", WORLD, {"test": 500})[0]["test"]
    weights = text_classifier(clip, open_clip.get_tokenizer("clipdrift-tiny"), cifar.class_names, ["a photo of a {}"])
    low, high = 1e-4, 5e-3  # the ends of the default grid
    top1 = {(method, lr): _zero_shot_after(path, splits, method, lr, weights, cifar)
            for method in ("full", "lora") for lr in (low, high)}
    pretrained_top1 = history["zeroshot"]["top1"]
    # The study's central effect: aggressive Full FT forgets, LoRA keeps clearly more.
    assert top1[("lora", high)] > top1[("full", high)] + 0.05
    assert top1[("full", high)] < 0.5 * pretrained_top1
    # Regimes: at the lowest rate LoRA barely moves, and Full FT forgets more as the rate grows.
    assert abs(top1[("lora", low)] - pretrained_top1) < 0.05
    assert top1[("full", low)] > top1[("full", high)]
