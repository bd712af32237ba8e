"""Tasks drawn from the world, in the same ImageSplit form as the real datasets.

- ``world-eurosat`` (EuroSAT-like): 10 terrain classes seen through a "sensor" shift (lower
  contrast, colour cast, more noise) with small objects as distractors; in-domain but shifted
  from what the backbone was pretrained on.
- ``world-pets`` (Oxford-IIIT-Pets-like): 37 fine-grained classes, a pattern × shape combination
  ("striped star"); colour, terrain, size and position vary freely.
- ``world-cifar100`` (CIFAR-100-like): 100 colour × shape classes ("red triangle") drawn from the
  pretraining distribution; held out for zero-shot transfer, never fine-tuned on.

Class names are the text-prompt subjects, so zero-shot code can build "a photo of a {}" prompts.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

import torch

from clipdrift.data import ImageSplit
from clipdrift.world.render import (
    COLOURS,
    PATTERNS,
    SHAPES,
    TERRAINS,
    Shift,
    WorldConfig,
    render,
    sample_attributes,
    stream_generator,
)

FINETUNE_SPLITS = ("train", "val", "test")
ZEROSHOT_SPLITS = ("test",)


@dataclass(frozen=True)
class TaskSpec:
    """How a task draws its images: which attributes make the label, and any visual shift."""

    name: str
    stands_for: str
    label_attributes: tuple[str, ...]
    class_values: tuple[tuple[int, ...], ...]  # per class, the label attributes' indices
    class_names: tuple[str, ...]
    splits: tuple[str, ...]
    shift: Shift = Shift()
    radius: tuple[float, float] | None = None  # overrides the world's object radius range

    @property
    def n_classes(self) -> int:
        return len(self.class_names)


def _eurosat_like() -> TaskSpec:
    return TaskSpec(
        name="world-eurosat",
        stands_for="EuroSAT",
        label_attributes=("terrain",),
        class_values=tuple((i,) for i in range(len(TERRAINS))),
        class_names=TERRAINS,
        splits=FINETUNE_SPLITS,
        shift=Shift(contrast=0.6, tint=(-0.06, 0.02, 0.08), extra_noise=0.03),
        radius=(0.14, 0.24),
    )


def _pets_like() -> TaskSpec:
    # Pets has 37 breeds: the first 37 shape × pattern combinations (the arrow keeps one).
    combos = list(itertools.product(range(len(SHAPES)), range(len(PATTERNS))))[:37]
    return TaskSpec(
        name="world-pets",
        stands_for="Oxford-IIIT Pets",
        label_attributes=("shape", "pattern"),
        class_values=tuple(combos),
        class_names=tuple(f"{PATTERNS[p]} {SHAPES[s]}" for s, p in combos),
        splits=FINETUNE_SPLITS,
    )


def _cifar100_like() -> TaskSpec:
    combos = list(itertools.product(range(len(COLOURS)), range(len(SHAPES))))
    return TaskSpec(
        name="world-cifar100",
        stands_for="CIFAR-100",
        label_attributes=("colour", "shape"),
        class_values=tuple(combos),
        class_names=tuple(f"{COLOURS[c]} {SHAPES[s]}" for c, s in combos),
        splits=ZEROSHOT_SPLITS,
    )


TASK_SPECS: dict[str, TaskSpec] = {spec.name: spec for spec in (_eurosat_like(), _pets_like(), _cifar100_like())}
TASKS = tuple(TASK_SPECS)
FINETUNE_TASKS = tuple(name for name, spec in TASK_SPECS.items() if "train" in spec.splits)
ZEROSHOT_TASK = "world-cifar100"


def task_spec(task: str) -> TaskSpec:
    if task not in TASK_SPECS:
        raise ValueError(f"unknown world task {task!r}: use one of {TASKS}")
    return TASK_SPECS[task]


def task_splits(task: str, world: WorldConfig, sizes: dict[str, int]) -> tuple[dict[str, ImageSplit], dict]:
    """Generate the task's splits (``sizes`` per split name) and a manifest of how.

    Fine-tuning tasks have ``train``/``val``/``test``; ``world-cifar100`` has only ``test``.
    Every split has balanced classes and its own random stream, named by world seed, task and
    split, so a split never depends on the sizes of the others.
    """
    spec = task_spec(task)
    _check_sizes(spec, sizes)
    splits = {name: _split(spec, world, name, n) for name, n in sizes.items()}
    return splits, _manifest(spec, world, splits)


def _check_sizes(spec: TaskSpec, sizes: dict[str, int]) -> None:
    unknown = set(sizes) - set(spec.splits)
    if unknown:
        raise ValueError(f"{spec.name} has splits {spec.splits}, not {sorted(unknown)}: fix the sizes for this task")
    for name, n in sizes.items():
        if n < spec.n_classes:
            raise ValueError(
                f"{spec.name} {name} size {n} is below its {spec.n_classes} classes: use at least one image per class"
            )


def _split(spec: TaskSpec, world: WorldConfig, split: str, n: int) -> ImageSplit:
    generator = stream_generator(world.seed, spec.name, split)
    labels = (torch.arange(n) % spec.n_classes)[torch.randperm(n, generator=generator)]
    values = torch.tensor(spec.class_values)[labels]
    fixed = {attr: values[:, i] for i, attr in enumerate(spec.label_attributes)}
    task_world = world if spec.radius is None else dataclasses.replace(world, min_radius=spec.radius[0], max_radius=spec.radius[1])
    attrs = sample_attributes(task_world, n, generator, **fixed)
    images = render(task_world, attrs, generator, spec.shift)
    return ImageSplit(images, labels, list(spec.class_names))


def _manifest(spec: TaskSpec, world: WorldConfig, splits: dict[str, ImageSplit]) -> dict:
    return {
        "dataset": spec.name,
        "source": "clipdrift.world (procedural)",
        "stands_for": spec.stands_for,
        "seed": world.seed,
        "world": dataclasses.asdict(world),
        "task": {
            "label_attributes": list(spec.label_attributes),
            "shift": dataclasses.asdict(spec.shift),
            "radius": list(spec.radius) if spec.radius else None,
        },
        "class_names": list(spec.class_names),
        "splits": {
            name: {
                "n": len(split),
                "class_counts": torch.bincount(split.labels, minlength=spec.n_classes).tolist(),
                "stream": f"{world.seed}/{spec.name}/{name}",
            }
            for name, split in splits.items()
        },
        "preprocessing": {"size": world.image_size, "interpolation": "none (rendered at size)"},
    }
