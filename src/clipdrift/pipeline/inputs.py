"""What a study reads, checked and turned into settings at parse time: its tasks - the fine-tuning
datasets and the held-out zero-shot suite, each from torchvision, an image folder or the
synthetic world - and its backbone's open_clip config.

Standard library only, like :mod:`clipdrift.pipeline.plan` (the Snakefile imports both on every start).
"""

from __future__ import annotations

import importlib.util
import json
from functools import cache
from importlib import resources
from pathlib import Path

from clipdrift.core.errors import StudyConfigError
from clipdrift.data.catalog import REAL_DATASETS, TORCHVISION_DATASETS, WORLD_TASKS
from clipdrift.data.classnames import ClassNameError, check_style, template_texts

# The split the probe subset is drawn from: the evaluation split, as published.
PROBE_SOURCE_SPLIT = "test"


@cache
def model_configs() -> dict[str, dict]:
    """open_clip's model configs by name, plus the ones packaged with clipdrift, read from the JSON
    files open_clip itself loads them from (``open_clip/model_configs/*.json``).

    The Snakefile checks the config on every start: every ``snakemake -n`` and every SLURM job
    step. Importing open_clip for that (torch, torchvision, transformers) would cost seconds
    each time; reading its config files costs milliseconds. A test keeps the two views equal.
    """
    found = importlib.util.find_spec("open_clip")  # locates the package without importing it
    if found is None or not found.submodule_search_locations:
        raise StudyConfigError("open_clip is not installed: python3 -m pip install -e .")
    # clipdrift.model.backbones registers the same packaged folder with open_clip (not imported here)
    packaged = Path(str(resources.files("clipdrift").joinpath("model_configs")))
    folders = [Path(found.submodule_search_locations[0]) / "model_configs", packaged]
    return {path.stem: json.loads(path.read_text()) for folder in folders for path in sorted(folder.glob("*.json"))}


def backbone_image_size(model_config: dict) -> int:
    size = model_config.get("vision_cfg", {}).get("image_size", 224)
    return size if isinstance(size, int) else size[0]


# The image towers whose attention clipdrift rewrites and captures: open_clip's own VisionTransformer.
SUPPORTED_FAMILIES = ("open_clip ViT image towers that pool the CLS token - ViT-B-32, ViT-B-16, ViT-L-14, ViT-H-14, "
                      "ViT-g-14, ViT-bigG-14 and their -quickgelu and -336/-378 variants, with any pretrained tag or "
                      "weights file")


def check_backbone_family(name: str, model_config: dict) -> None:
    """Refuse a backbone whose image tower is not open_clip's VisionTransformer (timm towers such as
    SigLIP or EVA, ResNets, CoCa's attentional pooler), naming what is supported."""
    vision = model_config.get("vision_cfg", {})
    why = ("its image tower is built by timm" if vision.get("timm_model_name") else
           "its image tower is a ResNet" if not isinstance(vision.get("layers"), int) else
           "its image tower pools with an attentional pooler" if vision.get("attentional_pool") else
           "its image tower averages the tokens, so the CLS token whose attention clipdrift measures does not feed "
           "the features" if vision.get("pool_type", "tok") != "tok" else None)
    if why:
        raise StudyConfigError(f"backbone.name {name!r} is not supported: {why}, and clipdrift's attention surgery and "
                               f"capture are proven for {SUPPORTED_FAMILIES}.")


def check_tasks(config: dict) -> None:
    """Fine-tuning and held-out task names unique and apart; every task's source settings complete."""
    heldout = [entry if isinstance(entry, str) else entry["name"] for entry in config["zeroshot"]["tasks"]]
    if len(set(heldout)) != len(heldout):
        raise StudyConfigError(f"zeroshot.tasks: names must be unique, got {heldout}")
    both = sorted(set(heldout) & {d["name"] for d in config["datasets"]})
    if both:
        raise StudyConfigError(f"zeroshot.tasks: {both[0]!r} is also a fine-tuning dataset: a held-out task is never "
                               "fine-tuned on - remove it from one of the two lists")
    for key, entries in (("datasets", config["datasets"]), ("zeroshot.tasks", heldout_entries(config).values())):
        for entry in entries:
            _check_task_source(key, entry)
    for entry in heldout_entries(config).values():
        sizes, key = (entry["sizes"], f"zeroshot.tasks: {entry['name']!r}: sizes") if "sizes" in entry else \
            (config["zeroshot"].get("sizes"), "zeroshot.sizes")
        if set(sizes or {}) - {"test"}:
            raise StudyConfigError(f"{key} names {sorted(sizes)}, but a held-out task is only ever tested: give "
                                   "{test: N} (a cap on its test images; leave it out to use them all)")
        style = entry.get("class_names", config["zeroshot"]["class_names"])
        if isinstance(style, str):
            try:
                check_style(style, torchvision_name(entry) or entry["name"])
            except ClassNameError as error:
                raise StudyConfigError(f"zeroshot.tasks: {entry['name']!r}: {error}") from None
        elif not all(name.strip() for name in style):
            raise StudyConfigError(f"zeroshot.tasks: {entry['name']!r} lists an empty class name: name every class")


def _check_task_source(key: str, entry: dict) -> None:
    name, source = entry["name"], entry.get("source")
    if source is None and name not in REAL_DATASETS and name not in WORLD_TASKS and not {"torchvision", "root"} & set(entry):
        raise StudyConfigError(f"{key}: {name!r} is neither a torchvision dataset of the list nor a synthetic-world task: "
                               "say where its images are (root: <folder> for an image folder, or torchvision: <dataset>)")
    if source == "world" and name not in WORLD_TASKS:
        raise StudyConfigError(f"{key}: {name!r} is not a synthetic-world task: use one of {', '.join(WORLD_TASKS)}")
    kind = task_source(entry)
    if (kind == "imagefolder") != ("root" in entry):
        raise StudyConfigError(f"{key}: {name!r} " + ("needs root: <folder> (source imagefolder)" if kind == "imagefolder"
                                                      else "sets root, which only source imagefolder reads (torchvision "
                                                           "datasets live under data.root)"))
    if "classes" in entry and kind != "imagefolder":
        raise StudyConfigError(f"{key}: {name!r} sets classes, which only source imagefolder reads")
    if "torchvision" in entry and kind != "real":
        raise StudyConfigError(f"{key}: {name!r} sets torchvision but its source is {entry.get('source')}")
    if kind == "real" and torchvision_name(entry) not in REAL_DATASETS:
        raise StudyConfigError(f"{key}: {name!r} names no torchvision dataset of the list: set torchvision: one of "
                               f"{', '.join(REAL_DATASETS)}")


def task_source(entry: dict) -> str:
    """Where a task's images come from: ``real`` (a torchvision dataset), ``imagefolder`` or ``world``."""
    source = entry.get("source") or ("torchvision" if "torchvision" in entry else "imagefolder" if "root" in entry
                                     else "world" if entry["name"] in WORLD_TASKS else "torchvision")
    return "real" if source == "torchvision" else source


def torchvision_name(entry: dict) -> str | None:
    """The torchvision dataset a task reads (None for image folders and world tasks)."""
    return entry.get("torchvision", entry["name"]) if task_source(entry) == "real" else None


def heldout_entries(config: dict) -> dict[str, dict]:
    """The held-out zero-shot suite by task name, each as a dict (a bare name becomes ``{name}``)."""
    entries = [{"name": entry} if isinstance(entry, str) else entry for entry in config["zeroshot"]["tasks"]]
    return {entry["name"]: entry for entry in entries}


def heldout_data_entry(config: dict, task: str) -> dict:
    """What a held-out task's data preparation reads of its entry (its prompts are not data):
    name, sizes (the task's own, else zeroshot.sizes) and where its images come from."""
    entry = heldout_entries(config)[task]
    sizes = entry["sizes"] if "sizes" in entry else config["zeroshot"].get("sizes")
    return {"name": task, "sizes": sizes or {},
            **{key: entry[key] for key in ("source", "torchvision", "root", "classes") if key in entry}}


def heldout_names(config: dict) -> list[str]:
    return list(heldout_entries(config))


def task_entry(config: dict, name: str) -> dict:
    """A fine-tuning dataset's or held-out task's config entry."""
    found = {d["name"]: d for d in config["datasets"]} | heldout_entries(config)
    return found[name]


def image_size_key(config: dict, dataset: str) -> tuple[str, int | None]:
    if task_source(task_entry(config, dataset)) == "world":
        return "world.image_size", config["world"]["image_size"]
    return "data.image_size", config["data"]["image_size"]


def data_image_size(config: dict) -> int:
    """The size images read from disk are cropped to: data.image_size, else the backbone's."""
    return config["data"]["image_size"] or backbone_image_size(model_configs()[config["backbone"]["name"]])


def data_settings(config: dict, dataset: str) -> dict:
    """How to build a task's splits and probe (what its cache depends on)."""
    data, entry = config["data"], task_entry(config, dataset)
    settings = {"source": task_source(entry), "probe_size": data["probe_size"], "probe_seed": data["probe_seed"],
                "probe_source": PROBE_SOURCE_SPLIT}
    if settings["source"] == "world":
        settings["world"] = {"seed": config["world"]["seed"], "image_size": config["world"]["image_size"]}
        return settings
    settings.update(image_size=data_image_size(config), interpolation=data["interpolation"],
                    split_seed=data["split_seed"])
    if settings["source"] == "imagefolder":  # absent otherwise, so a torchvision task's settings stay as they were
        settings.update(root=entry["root"], classes=entry.get("classes"))
    else:
        settings.update(root=data["root"], download=data["download"])
        if torchvision_name(entry) != dataset:
            settings["torchvision"] = torchvision_name(entry)
    return settings


def zeroshot_settings(config: dict, task: str, indomain: bool = False) -> dict:
    """How zero-shot scoring of ``task`` runs: its templates (resolved to their texts, so an edit of
    a shipped set reruns the scoring) and class names, from the task's entry or the study's
    defaults. ``indomain``: the pretrained model on a fine-tuning task's own test set, a
    reference that always uses the task's readable class names."""
    zeroshot = config["zeroshot"]
    entry = task_entry(config, task)
    templates = entry.get("templates", zeroshot["templates"])
    names = "readable" if indomain else entry.get("class_names", zeroshot["class_names"])
    settings = {
        "templates": templates if isinstance(templates, str) else "custom",
        "template_texts": template_texts(templates, _benchmark_key(entry)),
        "class_names": names if isinstance(names, str) else "custom",
        "torchvision": torchvision_name(entry),
        "amp": zeroshot["amp"],
        "batch_size": zeroshot["batch_size"],
    }
    if not isinstance(names, str):
        settings["custom_names"] = list(names)
    return settings


def _benchmark_key(entry: dict) -> str | None:
    name = torchvision_name(entry)
    return TORCHVISION_DATASETS[name].benchmark if name else None


def suite_settings(config: dict) -> dict[str, dict]:
    """Every held-out task's zero-shot settings, in the suite's order."""
    return {task: zeroshot_settings(config, task) for task in heldout_names(config)}


def suite_description(config: dict) -> str:
    """The held-out suite in words, for the report: each task with its templates."""
    return ", ".join(f"{task} ({settings['templates']} templates)" for task, settings in suite_settings(config).items())


def suite_class_names(config: dict) -> str:
    """The suite's class-name style ("mixed" when its tasks differ)."""
    styles = {settings["class_names"] for settings in suite_settings(config).values()}
    return styles.pop() if len(styles) == 1 else "mixed"


def check_tasks_on_disk(config: dict, pending) -> None:
    """Refuse, before any job runs, a task whose cache is still to be built (``pending(name)``)
    and whose data is missing or malformed (:func:`clipdrift.data.layout.check_dataset_on_disk`).
    Every such task is checked; all problems are reported together."""
    from clipdrift.data.layout import DatasetUnavailableError, check_dataset_on_disk

    problems = []
    tasks = [(entry["name"], ("train", "val", "test"), entry.get("sizes"), f"datasets[{index}].sizes")
             for index, entry in enumerate(config["datasets"])]
    tasks += [(name, ("test",), heldout_data_entry(config, name)["sizes"], f"the sizes of held-out task {name!r}")
              for name in heldout_names(config)]
    for name, wanted, sizes, key in tasks:
        if pending(name):
            try:
                check_dataset_on_disk(data_settings(config, name), name, wanted, sizes, key)
            except DatasetUnavailableError as error:
                problems.append(f"[{name}] {error}")
    if problems:
        raise DatasetUnavailableError("\n\n".join(problems))
