"""Zero-shot class names: readable by default, the published spellings on request (CIFAR-100),
checked index by index against the task's own names."""

import json
from importlib import resources

import pytest

from clipdrift.data.classnames import ClassNameError, check_style, class_names, published_class_names
from clipdrift.data.real import torchvision_class_names

from fakedata import CIFAR100_FINE_LABEL_NAMES


class _TorchvisionCifar100:
    classes = CIFAR100_FINE_LABEL_NAMES  # torchvision reads fine_label_names from the meta file


def _readable():
    return torchvision_class_names("cifar100", _TorchvisionCifar100(), 100)[1]


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


# ---- CLIP_benchmark's names and templates ----------------------------------------------------------

def _clip_benchmark():
    """The installed clip_benchmark package's folder (its data files only: nothing is imported)."""
    import importlib.util
    import os
    from pathlib import Path

    found = importlib.util.find_spec("clip_benchmark")
    if found is None:
        message = "clip_benchmark is not installed: python3 -m pip install --no-deps clip_benchmark==1.6.2"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI installs it (.ci/run): never skipped there
        pytest.skip(message)
    return Path(found.submodule_search_locations[0])


@pytest.mark.parametrize("kind", ["classnames", "zeroshot_classification_templates"])
def test_the_shipped_clip_benchmark_data_is_the_pinned_packages(kind):
    from importlib.metadata import version

    from clipdrift.data.benchmark import BENCHMARK_VERSION

    package = _clip_benchmark()
    assert version("clip_benchmark") == BENCHMARK_VERSION
    shipped = resources.files("clipdrift").joinpath("resources", "clip_benchmark", f"en_{kind}.json").read_text()
    assert json.loads(shipped) == json.loads((package / "datasets" / f"en_{kind}.json").read_text())


def _builder_name_sources(package) -> dict[str, str]:
    """Per CLIP_benchmark dataset key: where its builder takes the class names from - ``list``
    (``ds.classes = default_classnames[...]``), ``spaced`` (a replace() of torchvision's) or ``own``.
    Its torchvision builder first; datasets it reads only through VTAB (SVHN) from the VTAB one."""
    import ast

    tree = ast.parse((package / "datasets" / "builder.py").read_text())
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    sources = _name_sources(functions["build_vtab_dataset"])
    sources.update(_name_sources(functions["build_dataset"]))
    return sources


def _name_sources(function) -> dict[str, str]:
    import ast

    sources = {}
    for node in ast.walk(function):
        if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare):
            continue
        right = node.test.comparators[0] if node.test.comparators else None
        if not (isinstance(node.test.left, ast.Name) and node.test.left.id == "dataset_name"
                and isinstance(right, ast.Constant) and isinstance(right.value, str)):
            continue
        assigned = [n.value for n in node.body if isinstance(n, ast.Assign) and any(
            (isinstance(t, ast.Attribute) and t.attr == "classes") or (isinstance(t, ast.Name) and t.id == "classes")
            for t in n.targets)]
        source = "own"
        for value in assigned:
            source = "list" if isinstance(value, ast.Subscript) else "spaced" if "replace" in ast.unparse(value) else source
        sources[right.value] = source
    return sources


def test_each_datasets_class_name_rule_is_the_one_clip_benchmarks_builder_follows():
    from clipdrift.data.catalog import TORCHVISION_DATASETS

    sources = _builder_name_sources(_clip_benchmark())
    for name, entry in TORCHVISION_DATASETS.items():
        assert sources[entry.benchmark] == entry.benchmark_names, name


def test_benchmark_names_fill_in_what_torchvision_lacks_and_leave_caltechs_background_out():
    from clipdrift.data.benchmark import BenchmarkNamesError, benchmark_class_names, benchmark_names

    assert benchmark_class_names("flowers102", 102)[0] == "pink primrose"
    caltech = benchmark_class_names("caltech101", 101)
    assert caltech[:2] == ["off-center face", "centered face"] and "background" not in caltech
    with pytest.raises(BenchmarkNamesError, match="names 102 classes for flowers102 but the dataset on disk has 5"):
        benchmark_class_names("flowers102", 5)
    assert benchmark_names("cifar100", CIFAR100_FINE_LABEL_NAMES, _readable())[1] == "aquarium_fish"  # as-is
    assert benchmark_names("sun397", ["apartment_building/outdoor"], ["x"]) == ["apartment building outdoor"]
    assert benchmark_names(None, ["own"], ["readable"]) == ["readable"]  # image folders, world tasks


def test_a_tasks_own_class_name_list_must_name_every_class():
    from clipdrift.data.classnames import prompt_names

    settings = {"class_names": "custom", "custom_names": ["a", "b"], "torchvision": None}
    assert prompt_names(settings, "mine", ["x", "y"], ["x", "y"]) == ["a", "b"]
    with pytest.raises(ClassNameError, match="has 3 classes but its class_names list has 2"):
        prompt_names(settings, "mine", ["x", "y", "z"], ["x", "y", "z"])
