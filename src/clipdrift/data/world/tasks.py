"""Tasks drawn from the world, in the same ImageSplit form as the real datasets.

- ``world-eurosat`` (EuroSAT-like): 10 land-cover classes ("forest", "river", …): tiles of
  ground alone, with stronger texture, seen through a "sensor" (lower contrast, colour cast,
  more noise). Pretraining always showed an object over the ground, named the terrain only
  sometimes and never with this sensor: a visual shift.
- ``world-pets`` (Oxford-IIIT-Pets-like): 37 fine-grained classes, colour × shape with the
  four colours that are each a near neighbour of a zero-shot colour ("navy star" beside
  "blue star"); pattern, terrain, size and position vary freely. In-domain: pretraining covers
  these colours and shapes.
- ``world-cifar100`` (CIFAR-100-like): 100 colour × shape classes ("red triangle") with the
  other ten colours, drawn from the pretraining distribution; held out for zero-shot transfer,
  never fine-tuned on, and sharing no class with the Pets-like task.
- ``world-patterns`` (a texture task, DTD-like): 40 pattern × shape classes ("striped star"),
  colour and terrain free; a second held-out task with another vocabulary (pattern words, which
  pretraining captions name only sometimes) and attribute mix.

Class names are the text-prompt subjects, so zero-shot code can build "a photo of a {}" prompts.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

import torch

from clipdrift.data.catalog import WORLD_TASKS
from clipdrift.data.split import ImageSplit
from clipdrift.data.world.render import (
    COLOURS,
    N_ZEROSHOT_COLOURS,
    PATTERNS,
    SHAPES,
    TERRAINS,
    Shift,
    WorldConfig,
    WorldConfigError,
    render,
    sample_attributes,
    stream_generator,
)


@dataclass(frozen=True)
class TaskSpec:
    """How a task draws its images: which attributes make the label, and any visual shift (what
    it stands for and its splits: its entry in :data:`clipdrift.data.catalog.WORLD_TASKS`)."""

    name: str
    label_attributes: tuple[str, ...]
    class_values: tuple[tuple[int, ...], ...]  # per class, the label attributes' indices
    class_names: tuple[str, ...]
    shift: Shift = Shift()
    world_overrides: tuple[tuple[str, float], ...] = ()  # WorldConfig fields this task changes

    @property
    def stands_for(self) -> str:
        return WORLD_TASKS[self.name].stands_for

    @property
    def splits(self) -> tuple[str, ...]:
        return WORLD_TASKS[self.name].splits

    @property
    def n_classes(self) -> int:
        return len(self.class_names)


def _eurosat_like(name: str) -> TaskSpec:
    return TaskSpec(
        name=name,
        label_attributes=("terrain",),
        class_values=tuple((i,) for i in range(len(TERRAINS))),
        class_names=TERRAINS,
        shift=Shift(contrast=0.6, tint=(-0.06, 0.02, 0.08), extra_noise=0.03),
        world_overrides=(("objects", False), ("texture", 0.14)),
    )


def _by_shape(name: str, attribute: str, words: tuple[str, ...], values, n_classes: int | None = None) -> TaskSpec:
    """A task whose classes are ``attribute`` (one of ``values``, named by ``words``) × shape."""
    combos = list(itertools.product(values, range(len(SHAPES))))[:n_classes]
    return TaskSpec(
        name=name,
        label_attributes=(attribute, "shape"),
        class_values=tuple(combos),
        class_names=tuple(f"{words[v]} {SHAPES[s]}" for v, s in combos),
    )


def _pets_like(name: str) -> TaskSpec:
    # Pets has 37 breeds: the first 37 of the 4 × 10 colour × shape combinations.
    return _by_shape(name, "colour", COLOURS, range(N_ZEROSHOT_COLOURS, len(COLOURS)), n_classes=37)


def _cifar100_like(name: str) -> TaskSpec:
    return _by_shape(name, "colour", COLOURS, range(N_ZEROSHOT_COLOURS))


def _patterns(name: str) -> TaskSpec:
    return _by_shape(name, "pattern", PATTERNS, range(len(PATTERNS)))


# How each task of the catalogue draws its classes (a catalogue task without one fails here, at import).
_DRAWN_AS = {"world-eurosat": _eurosat_like, "world-pets": _pets_like, "world-cifar100": _cifar100_like,
             "world-patterns": _patterns}
TASK_SPECS: dict[str, TaskSpec] = {name: _DRAWN_AS[name](name) for name in WORLD_TASKS}
ZEROSHOT_TASK = "world-cifar100"


def task_spec(task: str) -> TaskSpec:
    if task not in TASK_SPECS:
        raise WorldConfigError(f"unknown world task {task!r}: use one of {', '.join(WORLD_TASKS)}")
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
        raise WorldConfigError(
            f"{spec.name} has splits {list(spec.splits)}, not {sorted(unknown)}: fix the sizes of this dataset in the config"
        )
    for name, n in sizes.items():
        if n < spec.n_classes:
            raise WorldConfigError(
                f"{spec.name} {name} size {n} is below its {spec.n_classes} classes: give at least one image per class"
            )


def _split(spec: TaskSpec, world: WorldConfig, split: str, n: int) -> ImageSplit:
    generator = stream_generator(world.seed, spec.name, split)
    labels = (torch.arange(n) % spec.n_classes)[torch.randperm(n, generator=generator)]
    values = torch.tensor(spec.class_values)[labels]
    fixed = {attr: values[:, i] for i, attr in enumerate(spec.label_attributes)}
    task_world = dataclasses.replace(world, **dict(spec.world_overrides))
    attrs = sample_attributes(task_world, n, generator, **fixed)
    images = render(task_world, attrs, generator, spec.shift)
    return ImageSplit(images, labels, list(spec.class_names))


def _manifest(spec: TaskSpec, world: WorldConfig, splits: dict[str, ImageSplit]) -> dict:
    return {
        "dataset": spec.name,
        "source": "clipdrift.data.world (procedural)",
        "stands_for": spec.stands_for,
        "seed": world.seed,
        "world": dataclasses.asdict(world),
        "task": {
            "label_attributes": list(spec.label_attributes),
            "shift": dataclasses.asdict(spec.shift),
            "world_overrides": dict(spec.world_overrides),
        },
        "class_names": list(spec.class_names),
        "source_class_names": list(spec.class_names),
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
