"""Which words fill the zero-shot prompts - the class names and the templates they go into.

Class names: ``benchmark`` (the default) takes CLIP_benchmark's names for the dataset
(:mod:`clipdrift.data.benchmark`; a task it does not know keeps its own readable names);
``readable`` the task's plain words ("aquarium fish", "maple tree", "crab"); a list names the
classes in label order. ``published``
reproduces the published study's prompts exactly: its code took CIFAR-100's names from the
Hugging Face ``uoft-cs/cifar100`` ``fine_label`` feature, which are torchvision's
``fine_label_names`` with underscores kept and "crab" spelled ``cra``. Those lists ship as data
(``resources/published_class_names.json``) together with the respellings, so that they are
checked against the dataset's own names at scoring time, index by index.

Templates: ``benchmark`` (CLIP_benchmark's per-dataset set), ``single`` (the published study's
``"a photo of a {}"``), ``cifar18`` (CLIP's 18 CIFAR templates, ``resources/zeroshot_templates.json``)
or a list of strings with one ``{}`` slot.

Standard library only: the Snakefile resolves names and templates at parse time.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

from clipdrift.core.errors import UserFacingError
from clipdrift.data.benchmark import benchmark_names, benchmark_templates

CLASS_NAME_STYLES = ("benchmark", "readable", "published")
PUBLISHED_NAMES_FILE = "published_class_names.json"


class ClassNameError(UserFacingError, ValueError):
    """The requested class-name style does not fit the dataset."""


@cache
def _published_lists() -> dict[str, dict]:
    text = resources.files("clipdrift").joinpath("resources", PUBLISHED_NAMES_FILE).read_text()
    return {name: entry for name, entry in json.loads(text).items() if not name.startswith("_")}


def datasets_with_published_names() -> tuple[str, ...]:
    return tuple(sorted(_published_lists()))


def check_style(style: str, dataset: str) -> None:
    """Refuse a style the dataset cannot have, naming the config key and the fix."""
    if style not in CLASS_NAME_STYLES:
        raise ClassNameError(f"zeroshot.class_names {style!r} is unknown: use one of {CLASS_NAME_STYLES}")
    if style == "published" and dataset not in _published_lists():
        raise ClassNameError(
            f"zeroshot.class_names 'published' exists only for {datasets_with_published_names()}, not for "
            f"zero-shot task {dataset!r}: set zeroshot.class_names: readable."
        )


def _as_readable(published_name: str, respelled: dict[str, str]) -> str:
    return respelled.get(published_name, published_name).replace("_", " ")


def published_class_names(dataset: str, readable: list[str]) -> list[str]:
    """The published spellings of ``dataset``'s classes, in the order of ``readable``.

    ``readable`` are the task's own names (the image split's ``class_names``); each published
    name, respelled back and with spaces for underscores, must equal the readable name at the
    same index, so a reordered or different class list can never be scored with these prompts.
    """
    check_style("published", dataset)
    entry = _published_lists()[dataset]
    names, respelled = list(entry["names"]), dict(entry["respelled"])
    if len(names) != len(readable):
        raise ClassNameError(
            f"the {dataset} zero-shot task has {len(readable)} classes but the published list has "
            f"{len(names)}: prepare the full {dataset} test set, or set zeroshot.class_names: readable."
        )
    mismatched = [(i, n, r) for i, (n, r) in enumerate(zip(names, readable)) if _as_readable(n, respelled) != r]
    if mismatched:
        index, name, found = mismatched[0]
        raise ClassNameError(
            f"the {dataset} task's class {index} is {found!r} but the published list has {name!r} there "
            f"({len(mismatched)} mismatches): the dataset's class order differs from the published one; "
            "set zeroshot.class_names: readable."
        )
    return names


def class_names(style: str, dataset: str, readable: list[str]) -> list[str]:
    """The prompt subjects of ``dataset`` in ``readable`` or ``published`` style."""
    check_style(style, dataset)
    return list(readable) if style == "readable" else published_class_names(dataset, readable)


def prompt_names(settings: dict, task: str, readable: list[str], own: list[str]) -> list[str]:
    """The class names a task's zero-shot prompts use (``settings``: its zero-shot settings;
    ``readable``/``own``: the task's readable and source class names, from its manifest)."""
    style, dataset = settings["class_names"], settings.get("torchvision")
    if style == "custom":
        names = list(settings["custom_names"])
        if len(names) != len(readable):
            raise ClassNameError(f"zero-shot task {task!r} has {len(readable)} classes but its class_names list has "
                                 f"{len(names)}: list one name per class, in label order ({readable[:3]}...)")
        return names
    if style == "benchmark":
        return benchmark_names(dataset, own, readable)
    return class_names(style, dataset or task, readable)


@cache
def _template_sets() -> dict[str, tuple[str, ...]]:
    text = resources.files("clipdrift").joinpath("resources", "zeroshot_templates.json").read_text()
    return {name: tuple(templates) for name, templates in json.loads(text).items() if not name.startswith("_")}


def template_texts(choice, benchmark_key: str | None = None) -> list[str]:
    """The templates of ``choice``: a set name (``benchmark`` - those of CLIP_benchmark dataset
    ``benchmark_key``) or a list of templates."""
    if not isinstance(choice, str):
        return list(choice)
    if choice == "benchmark":
        return benchmark_templates(benchmark_key)
    if choice not in _template_sets():
        raise ClassNameError(f"zero-shot template set {choice!r} is unknown: use benchmark or one of "
                             f"{sorted(_template_sets())}")
    return list(_template_sets()[choice])
