"""The pretrained side of every weight-space comparison, computed once per study: each matrix of
the pretrained image tower's left singular vectors (what intruder dimensions are measured against)."""

from clipdrift.pipeline.jobs.warm.client import hand_over

hand_over(snakemake)  # noqa: F821 - the job server ran this job (and this process exits), or it runs here

from clipdrift.core.device import full_fp32, resolve_device
from clipdrift.core.io import write_safetensors
from clipdrift.measure.weight_drift import pretrained_bases
from clipdrift.model.backbones import build_classifier
from clipdrift.model.checkpoints import load_backbone_spec
from clipdrift.model.weights import tower_matrices
from clipdrift.pipeline.jobs.runner import run_script


def main(smk):
    pretrained = build_classifier(load_backbone_spec(smk.input.backbone), 1, seed=0)  # the head plays no part
    with full_fp32():
        bases = pretrained_bases(tower_matrices(pretrained), resolve_device())
    write_safetensors(smk.output.bases, bases, {"kind": "pretrained left singular vectors"})


run_script(snakemake, main, uses_gpu=True)  # noqa: F821 - injected by Snakemake
