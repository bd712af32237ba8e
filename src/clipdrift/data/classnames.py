"""Which words fill the zero-shot prompts: readable class names or the published spellings.

``readable`` is the default for new studies ("aquarium fish", "maple tree", "crab"). ``published``
reproduces the published study's prompts exactly: its code took CIFAR-100's names from the
Hugging Face ``uoft-cs/cifar100`` ``fine_label`` feature, which are torchvision's
``fine_label_names`` with underscores kept and "crab" spelled ``cra``. Those lists ship as data
(``resources/published_class_names.json``) together with the respellings, so that they are
checked against the dataset's own names at scoring time, index by index.

Standard library only: the Snakefile checks the style against the zero-shot task at parse time.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

from clipdrift.core.errors import UserFacingError

CLASS_NAME_STYLES = ("readable", "published")
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
    """The prompt subjects of ``dataset`` in ``style`` (``readable`` returns them unchanged)."""
    check_style(style, dataset)
    return list(readable) if style == "readable" else published_class_names(dataset, readable)
