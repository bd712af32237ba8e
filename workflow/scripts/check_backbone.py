"""Check that the configured open_clip weights load, and record the backbone descriptor."""

from clipdrift.pipeline.jobs.warm.client import hand_over

hand_over(snakemake)  # noqa: F821 - the job server ran this job (and this process exits), or it runs here

from clipdrift.core.io import write_json
from clipdrift.model.backbones import BackboneSpec, create_clip
from clipdrift.pipeline.jobs.runner import run_script
from clipdrift.pipeline.plan import backbone_descriptor


def main(smk):
    descriptor = backbone_descriptor({"backbone": smk.params.backbone})
    create_clip(BackboneSpec(descriptor["name"], descriptor["pretrained"], descriptor["cache_dir"]))
    write_json(smk.output.descriptor, descriptor)


run_script(snakemake, main)  # noqa: F821 - injected by Snakemake
