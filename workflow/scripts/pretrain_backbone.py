"""Pretrain the synthetic world's tiny CLIP and record it as the study's backbone."""

from clipdrift.pipeline.jobs.warm.client import hand_over

hand_over(snakemake)  # noqa: F821 - the job server ran this job (and this process exits), or it runs here

import sys

from clipdrift.core.io import write_json, write_safetensors
from clipdrift.data.world.render import WorldConfig
from clipdrift.pipeline.jobs.runner import run_script
from clipdrift.train.pretrain import PretrainConfig, pretrain_backbone


def main(smk):
    world_settings = smk.params.world
    world = WorldConfig(seed=world_settings["seed"], image_size=world_settings["image_size"])
    config = PretrainConfig(model_name=smk.params.name, **world_settings.get("pretrain", {}))
    clip, history = pretrain_backbone(world, config, progress=sys.stderr.isatty())
    state = {key: value.detach().contiguous() for key, value in clip.state_dict().items()}
    write_safetensors(smk.output.weights, state, {"kind": "backbone", "model": smk.params.name, "pretrain": history})
    write_json(smk.output.history, history)
    write_json(smk.output.descriptor, {"name": smk.params.name, "pretrained": smk.output.weights,
                                       "cache_dir": None, "source": "world"})


run_script(snakemake, main)  # noqa: F821 - injected by Snakemake
