"""One dataset of a study, from its config entry and its data settings
(:func:`clipdrift.pipeline.plan.data_settings`): the synthetic world's task or a real dataset,
with the probe drawn for a fine-tuning task.
"""

from __future__ import annotations

from clipdrift.data.real import prepare_real_dataset
from clipdrift.data.sampling import with_probe
from clipdrift.data.split import ImageSplit


def build_dataset(dataset: dict, settings: dict) -> tuple[dict[str, ImageSplit], dict]:
    """The image splits and manifest of one dataset (fine-tuning tasks also get their probe,
    drawn from ``settings["probe_source"]``)."""
    name, sizes = dataset["name"], dataset.get("sizes") or None
    if settings["source"] == "world":
        from clipdrift.world.render import WorldConfig
        from clipdrift.world.tasks import DEFAULT_SIZES, task_splits

        splits, manifest = task_splits(name, WorldConfig(**settings["world"]), sizes or DEFAULT_SIZES[name])
    else:
        options = {"val_fraction": dataset["val_fraction"]} if dataset.get("val_fraction") is not None else {}
        splits, manifest = prepare_real_dataset(
            name, settings["root"], download=settings["download"], image_size=settings["image_size"],
            interpolation=settings["interpolation"], split_sizes=sizes, seed=settings["split_seed"], **options,
        )
    if "train" in splits:
        splits, manifest = with_probe(splits, manifest, source=settings["probe_source"], n=settings["probe_size"],
                                      seed=settings["probe_seed"])
    return splits, manifest
