"""From a validated study config to the settings each stage runs with, and script plumbing.

The Snakemake layer validates the config against its JSON schema, then calls these functions
to derive plain, JSON-able settings dicts that it passes to each rule as ``params`` (so that a
change to a stage's settings reruns exactly that stage). :func:`run_script` is the common
wrapper of the workflow scripts: logging to the rule's log, thread count, and user errors
reported without a traceback.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
from pathlib import Path
from typing import Callable

from clipdrift.classnames import check_style
from clipdrift.errors import UserFacingError

REAL_DATASETS = ("eurosat", "pets", "cifar100")
# The split the probe subset is drawn from: the evaluation split, as published.
PROBE_SOURCE_SPLIT = "test"
log = logging.getLogger("clipdrift")


class StudyConfigError(UserFacingError, ValueError):
    """The study config is valid JSON-schema-wise but inconsistent."""


def canonical_lr(value) -> str:
    """The canonical string of a learning rate, as used in paths and tables: ``1e-05``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise StudyConfigError(f"learning_rates: {value!r} is not a number (e.g. 1.0e-5)") from None
    if not 0 < number <= 1:
        raise StudyConfigError(f"learning_rates: {value!r} must lie in (0, 1]")
    mantissa, exponent = f"{number:.6e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent):+03d}"


def dataset_source(name: str) -> str:
    return "real" if name in REAL_DATASETS else "world"


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
    # clipdrift.backbones registers the same packaged folder with open_clip (not imported here)
    folders = [Path(found.submodule_search_locations[0]) / "model_configs", Path(__file__).parent / "model_configs"]
    return {path.stem: json.loads(path.read_text()) for folder in folders for path in sorted(folder.glob("*.json"))}


def backbone_image_size(model_config: dict) -> int:
    size = model_config.get("vision_cfg", {}).get("image_size", 224)
    return size if isinstance(size, int) else size[0]


def check_study_config(config: dict) -> None:
    """Cross-key checks the schema cannot express; raises naming the key and the fix."""
    names = [d["name"] for d in config["datasets"]]
    if len(set(names)) != len(names):
        raise StudyConfigError(f"datasets: names must be unique, got {names}")
    lrs = [canonical_lr(lr) for lr in config["learning_rates"]]
    if len(set(lrs)) != len(lrs):
        raise StudyConfigError(f"learning_rates: {config['learning_rates']} lists the same rate twice ({lrs})")
    model_config = model_configs().get(config["backbone"]["name"])
    if model_config is None:
        raise StudyConfigError(
            f"backbone.name {config['backbone']['name']!r} is not an open_clip model config "
            "(e.g. ViT-B-32-quickgelu, clipdrift-tiny)"
        )
    check_style(config["zeroshot"]["class_names"], config["zeroshot"]["dataset"])
    expected = backbone_image_size(model_config)
    for name in [*names, config["zeroshot"]["dataset"]]:
        key, size = _image_size_key(config, name)
        if size != expected:
            raise StudyConfigError(
                f"{key} is {size} but backbone {config['backbone']['name']} expects {expected}-pixel "
                f"images: set {key}: {expected} (dataset {name})."
            )


def _image_size_key(config: dict, dataset: str) -> tuple[str, int]:
    if dataset_source(dataset) == "world":
        return "world.image_size", config["world"]["image_size"]
    return "data.image_size", config["data"]["image_size"]


def data_settings(config: dict, dataset: str) -> dict:
    """How to build a dataset's splits and probe (what its cache depends on)."""
    data = config["data"]
    settings = {"source": dataset_source(dataset), "probe_size": data["probe_size"], "probe_seed": data["probe_seed"]}
    if settings["source"] == "world":
        settings["world"] = {"seed": config["world"]["seed"], "image_size": config["world"]["image_size"]}
    else:
        settings.update(
            root=data["root"], download=data["download"], image_size=data["image_size"],
            interpolation=data["interpolation"], split_seed=data["split_seed"],
        )
    return settings


# Split sizes of the synthetic-world tasks when the config gives none.
DEFAULT_WORLD_SIZES = {
    "world-eurosat": {"train": 2000, "val": 500, "test": 500},
    "world-pets": {"train": 2960, "val": 740, "test": 740},
    "world-cifar100": {"test": 2000},
}


def build_dataset(dataset: dict, settings: dict):
    """The image splits and manifest of one dataset (fine-tuning tasks also get their probe)."""
    from clipdrift import data

    name, sizes = dataset["name"], dataset.get("sizes") or None
    if settings["source"] == "world":
        from clipdrift.world import WorldConfig, task_splits

        splits, manifest = task_splits(name, WorldConfig(**settings["world"]), sizes or DEFAULT_WORLD_SIZES[name])
    else:
        options = {"val_fraction": dataset["val_fraction"]} if dataset.get("val_fraction") is not None else {}
        splits, manifest = data.prepare_real_dataset(
            name, settings["root"], download=settings["download"], image_size=settings["image_size"],
            interpolation=settings["interpolation"], split_sizes=sizes, seed=settings["split_seed"], **options,
        )
    if "train" in splits:
        splits, manifest = data.with_probe(splits, manifest, source=PROBE_SOURCE_SPLIT, n=settings["probe_size"],
                                           seed=settings["probe_seed"])
    return splits, manifest


def method_settings(config: dict, method: str) -> dict:
    """Keyword arguments of :class:`clipdrift.adapters.MethodConfig` for ``method``."""
    if method == "full":
        return {"method": "full"}
    lora = config["lora"]
    return {
        "method": "lora", "lora_r": lora["r"], "lora_alpha": lora["alpha"], "lora_dropout": lora["dropout"],
        "lora_targets": list(lora["targets"]), "train_projection": lora["train_projection"],
    }


def run_script(snakemake, main: Callable, uses_gpu: bool = False) -> None:
    """Run a workflow script's ``main(snakemake)`` with logging, threads, its device and clean
    user errors.

    ``uses_gpu``: the script's work runs on a GPU when there is one. Such a job takes its own
    GPU when the job claims ``gpu`` resources (a slot of :mod:`clipdrift.gpuslots`, so that
    concurrent jobs on a multi-GPU workstation never share a device by accident); a job of a
    script that does not use a GPU is pinned to the CPU, so it can never compete for one
    without claiming it.
    """
    import torch

    _configure_logging(snakemake.log[0] if len(snakemake.log) else None)
    try:
        _choose_device(snakemake, uses_gpu)
        torch.set_num_threads(max(1, int(snakemake.threads)))
        main(snakemake)
    except UserFacingError as error:
        log.error("%s", error)
        sys.exit(1)
    except Exception:
        log.exception("unexpected error in rule %s", getattr(snakemake, "rule", "?"))
        raise


def _choose_device(snakemake, uses_gpu: bool) -> None:
    # before anything initialises CUDA in this process: CUDA_VISIBLE_DEVICES is read once
    import os

    from clipdrift.device import DEVICE_ENV

    if not uses_gpu:
        os.environ[DEVICE_ENV] = "cpu"
        return
    resources = getattr(snakemake, "resources", None) or {}
    if int(resources.get("gpu", 0) or 0) > 0:
        from clipdrift.gpuslots import claim_gpu

        slot = claim_gpu()  # held until the job's process exits
        log.info("%s", slot.describe() if slot is not None else "no GPU found: this job runs on the CPU")


def _configure_logging(log_path: str | None) -> None:
    # the job's log file gets everything; the terminal, shared by every job Snakemake runs, only
    # warnings and errors (without a log file, everything)
    terminal = logging.StreamHandler(sys.stderr)
    handlers: list[logging.Handler] = [terminal]
    if log_path:
        terminal.setLevel(logging.WARNING)
        handlers.append(logging.FileHandler(log_path, mode="w"))
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=handlers, force=True
    )


def training_settings(config: dict, dataset: str, lr: str, seed: int) -> dict:
    """The optimisation settings of one run (everything its fine-tune depends on)."""
    training = config["training"]
    dataset_config = next(d for d in config["datasets"] if d["name"] == dataset)
    return {
        "epochs": dataset_config["epochs"],
        "lr": float(lr),
        "seed": seed,
        "batch_size": training["batch_size"],
        "weight_decay": training["weight_decay"],
        "warmup_fraction": training["warmup_fraction"],
        "grad_clip": training["grad_clip"],
        "amp": training["amp"],
        "eval_amp": training["eval_amp"],
        "eval_batch_size": training["eval_batch_size"],
        "deterministic": training["deterministic"],
        "selection_split": training["selection_split"],
    }


def attention_settings(config: dict) -> dict:
    metrics = config["metrics"]
    return {key: metrics[key] for key in ("aggregation", "batch_size", "rollout_alpha", "erf_mass", "entropy_unit")}


def cka_settings(config: dict) -> dict:
    return {"token": config["metrics"]["cka_token"], "batch_size": config["metrics"]["batch_size"]}


def zeroshot_settings(config: dict, indomain: bool = False) -> dict:
    """How zero-shot scoring runs. ``indomain``: the pretrained model on a fine-tuning task's
    own test set, a reference that always uses readable class names (the published spellings
    exist only for the held-out task)."""
    zeroshot = config["zeroshot"]
    return {
        "templates": zeroshot["templates"],
        "class_names": "readable" if indomain else zeroshot["class_names"],
        "amp": zeroshot["amp"],
        "batch_size": zeroshot["batch_size"],
    }


def probe_sensitivity_settings(config: dict) -> dict | None:
    """Probe seeds of the probe-subset sensitivity, or None when it is off."""
    sensitivity = config["metrics"]["probe_sensitivity"]
    if not sensitivity["enabled"]:
        return None
    return {"seeds": [int(s) for s in sensitivity["seeds"]], "probe_size": config["data"]["probe_size"]}


def settings_hash(*settings: dict) -> str:
    """A short stable hash of settings dicts (recorded in checkpoints as the config hash)."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_backbone_spec(descriptor_path):
    """The :class:`BackboneSpec` recorded in a study's ``backbone.json``."""
    from clipdrift.backbones import BackboneSpec
    from clipdrift.io import read_json

    descriptor = read_json(descriptor_path)
    return BackboneSpec(descriptor["name"], descriptor["pretrained"], descriptor.get("cache_dir"))


def with_run_columns(frame, run: dict):
    """``frame`` with the run's dataset/method/lr/seed as leading columns."""
    columns = {key: run[key] for key in ("dataset", "method", "lr", "seed")}
    return frame.assign(**columns)[[*columns, *frame.columns]]


def backbone_descriptor(config: dict, weights_path: str | None = None) -> dict:
    """What backbone.json records: enough to rebuild the pretrained model anywhere."""
    backbone = config["backbone"]
    return {
        "name": backbone["name"],
        "pretrained": weights_path if backbone["source"] == "world" else backbone["pretrained"],
        "cache_dir": backbone.get("cache_dir"),
        "source": backbone["source"],
    }
