"""The pretrained model's side of every drift comparison on one dataset's probe, computed once:
attention statistics, CKA features and the sensitivity subsets' statistics."""

from clipdrift.pipeline.jobs.warm.client import hand_over

hand_over(snakemake)  # noqa: F821 - the job server ran this job (and this process exits), or it runs here

from clipdrift.core.io import write_safetensors
from clipdrift.data.sampling import probe_subsets
from clipdrift.data.split import read_image_split
from clipdrift.measure.extract import probe_reference, reference_tensors
from clipdrift.measure.settings import AttentionConfig, CKAConfig
from clipdrift.model.backbones import build_classifier
from clipdrift.model.checkpoints import load_backbone_spec
from clipdrift.pipeline.jobs.runner import run_script


def main(smk):
    settings, sensitivity = smk.params.settings, smk.params.sensitivity
    probe = read_image_split(smk.input.probe)
    pretrained = build_classifier(load_backbone_spec(smk.input.backbone), len(probe.class_names), seed=0)
    subsets = (probe_subsets(read_image_split(smk.input.probe_source), sensitivity["probe_size"], sensitivity["seeds"])
               if sensitivity else None)
    reference = probe_reference(pretrained, probe, AttentionConfig(**settings["attention"]),
                                CKAConfig(**settings["cka"]), subsets)
    write_safetensors(smk.output.reference, *reference_tensors(reference))


run_script(snakemake, main, uses_gpu=True)  # noqa: F821 - injected by Snakemake
