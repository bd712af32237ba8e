"""One task's tensor cache, from its config entry and its data settings
(:func:`clipdrift.pipeline.inputs.data_settings`): the synthetic world's task, a torchvision
dataset or an image folder, with the probe drawn for a fine-tuning task.
"""

from __future__ import annotations

from clipdrift.data.catalog import WORLD_TASKS
from clipdrift.data.layout import check_dataset_on_disk
from clipdrift.data.real import prepare_imagefolder, prepare_real_dataset
from clipdrift.data.sampling import DEFAULT_VAL_FRACTION, with_probe
from clipdrift.data.split import ImageSplit


def build_dataset(dataset: dict, settings: dict, wanted=("train", "val", "test")) -> tuple[dict[str, ImageSplit], dict]:
    """The ``wanted`` image splits and the manifest of one task (fine-tuning tasks - those that
    want a train split - also get their probe, drawn from ``settings["probe_source"]``)."""
    name, sizes = dataset["name"], dataset.get("sizes") or None
    if settings["source"] == "world":
        from clipdrift.data.world.render import WorldConfig
        from clipdrift.data.world.tasks import task_splits

        splits, manifest = task_splits(name, WorldConfig(**settings["world"]), sizes or WORLD_TASKS[name].default_sizes)
    else:
        check_dataset_on_disk(settings, name, wanted, sizes)
        fraction = dataset.get("val_fraction")
        common = {"image_size": settings["image_size"], "interpolation": settings["interpolation"], "split_sizes": sizes,
                  "seed": settings["split_seed"], "wanted": tuple(wanted),
                  "val_fraction": DEFAULT_VAL_FRACTION if fraction is None else fraction}
        if settings["source"] == "imagefolder":
            splits, manifest = prepare_imagefolder(name, settings["root"], class_names=settings.get("classes"), **common)
        else:
            splits, manifest = prepare_real_dataset(settings.get("torchvision", name), settings["root"],
                                                    download=settings["download"], task=name, **common)
    if "train" in wanted:
        splits, manifest = with_probe(splits, manifest, source=settings["probe_source"], n=settings["probe_size"],
                                      seed=settings["probe_seed"])
    return splits, manifest
