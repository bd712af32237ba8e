"""Build one dataset's tensor cache: uint8 image splits, the probe subset and the manifest."""

from clipdrift.pipeline.jobs.warm.client import hand_over

hand_over(snakemake)  # noqa: F821 - the job server ran this job (and this process exits), or it runs here

import torch

from clipdrift.core.io import write_json
from clipdrift.data.build import build_dataset
from clipdrift.data.split import ImageSplit, write_image_split
from clipdrift.pipeline.jobs.runner import run_script


def main(smk):
    name = smk.params.dataset["name"]
    wanted = [key for key in smk.output.keys() if key not in ("manifest", "probe")]
    splits, manifest = build_dataset(smk.params.dataset, smk.params.settings, wanted)
    for split in (key for key in smk.output.keys() if key != "manifest"):
        images = splits.get(split) or _empty_like(next(iter(splits.values())))  # e.g. no val carved (paper Pets)
        write_image_split(smk.output[split], images, dataset=name, split_name=split)
    write_json(smk.output.manifest, manifest)


def _empty_like(split: ImageSplit) -> ImageSplit:
    return ImageSplit(split.images[:0], torch.zeros(0, dtype=torch.int64), list(split.class_names))


run_script(snakemake, main)  # noqa: F821 - injected by Snakemake
