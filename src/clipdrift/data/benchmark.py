"""CLIP_benchmark's per-dataset zero-shot class names and prompt templates.

CLIP_benchmark (LAION, ``clip_benchmark`` on PyPI) is what researchers already use for zero-shot
suites. Its English class names and templates ship here verbatim, at the version pinned below
(``resources/clip_benchmark/``, MIT licence beside them); a test compares them with the
package's own files and checks, per dataset, where its builder takes the class names from
(:attr:`clipdrift.data.catalog.TorchvisionDataset.benchmark_names`).

One deliberate difference: CLIP_benchmark's Caltech-101 list starts with "background", a class
torchvision's Caltech101 drops, so every name would sit one class off; it is left out here.

Standard library only: the Snakefile resolves templates at parse time.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

from clipdrift.core.errors import UserFacingError
from clipdrift.data.catalog import TORCHVISION_DATASETS

BENCHMARK_VERSION = "1.6.2"
# CLIP_benchmark's templates for a dataset it has none for.
FALLBACK_TEMPLATES = "imagenet1k"


class BenchmarkNamesError(UserFacingError, ValueError):
    """CLIP_benchmark's class names do not fit the dataset on disk."""


@cache
def _shipped(kind: str) -> dict:
    folder = resources.files("clipdrift").joinpath("resources", "clip_benchmark")
    return json.loads(folder.joinpath(f"en_{kind}.json").read_text())


def benchmark_templates(key: str | None) -> list[str]:
    """The templates of CLIP_benchmark dataset ``key`` (its imagenet1k set where it has none),
    with the class slot written ``{}``."""
    templates = _shipped("zeroshot_classification_templates")
    chosen = templates.get(key) or templates[FALLBACK_TEMPLATES]
    return [template.replace("{c}", "{}") for template in chosen]


def benchmark_class_names(name: str, n_classes: int) -> list[str]:
    """CLIP_benchmark's class-name list for torchvision dataset ``name`` (``n_classes`` classes)."""
    listed = list(_shipped("classnames")[TORCHVISION_DATASETS[name].benchmark])
    if name == "caltech101" and listed[0] == "background":
        listed = listed[1:]  # torchvision's Caltech101 has no background class (see the module docstring)
    if len(listed) != n_classes:
        raise BenchmarkNamesError(f"CLIP_benchmark {BENCHMARK_VERSION} names {len(listed)} classes for {name} but the "
                                  f"dataset on disk has {n_classes}: use zeroshot class_names: readable for it")
    return listed


def benchmark_names(name: str | None, own: list[str], readable: list[str]) -> list[str]:
    """The class names CLIP_benchmark prompts with: for torchvision dataset ``name``, its list or
    torchvision's own names (``own``) as its builder spells them; for any other task (image
    folder, synthetic world) the task's ``readable`` names."""
    if name is None:
        return list(readable)
    rule = TORCHVISION_DATASETS[name].benchmark_names
    if rule == "list":
        return benchmark_class_names(name, len(own))
    if rule == "spaced":
        return [c.replace("_", " ").replace("/", " ") for c in own]
    return list(own)
