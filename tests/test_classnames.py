"""Zero-shot class names: readable by default, the published spellings on request (CIFAR-100),
checked index by index against the task's own names."""

import json
from importlib import resources

import pytest

from clipdrift.data.classnames import ClassNameError, check_style, class_names, published_class_names
from clipdrift.data.real import _class_names

from fakedata import CIFAR100_FINE_LABEL_NAMES


class _TorchvisionCifar100:
    classes = CIFAR100_FINE_LABEL_NAMES  # torchvision reads fine_label_names from the meta file


def _readable():
    return _class_names("cifar100", _TorchvisionCifar100())[1]


def test_the_published_list_is_torchvisions_with_crab_spelled_cra():
    shipped = json.loads(resources.files("clipdrift").joinpath("resources/published_class_names.json").read_text())
    published = shipped["cifar100"]["names"]
    assert len(published) == 100
    differing = [(p, t) for p, t in zip(published, CIFAR100_FINE_LABEL_NAMES) if p != t]
    assert differing == [("cra", "crab")]
    assert published[1] == "aquarium_fish" and "maple_tree" in published  # underscores kept


def test_published_names_line_up_with_the_readable_names_of_the_prepared_task():
    readable = _readable()
    assert readable[1] == "aquarium fish" and "crab" in readable
    names = published_class_names("cifar100", readable)
    assert names[readable.index("crab")] == "cra" and names[1] == "aquarium_fish"
    assert class_names("readable", "cifar100", readable) == readable


def test_a_reordered_or_partial_class_list_is_refused():
    readable = _readable()
    swapped = [readable[1], readable[0], *readable[2:]]
    with pytest.raises(ClassNameError, match="class 0 is 'aquarium fish' but the published list has 'apple'"):
        published_class_names("cifar100", swapped)
    with pytest.raises(ClassNameError, match="has 5 classes but the published list has 100"):
        published_class_names("cifar100", readable[:5])


def test_published_names_exist_only_for_cifar100():
    check_style("readable", "world-cifar100")
    with pytest.raises(ClassNameError, match="zeroshot.class_names 'published' exists only for .*cifar100.*"
                                             "set zeroshot.class_names: readable"):
        check_style("published", "world-cifar100")
    with pytest.raises(ClassNameError, match="unknown"):
        check_style("fancy", "cifar100")
