"""One pass over the probe per checkpoint: attention statistics, CKA and (when on) the probe-subset
sensitivity of a run's checkpoint, against the pretrained reference of its dataset."""

from clipdrift.pipeline.jobs.warm.client import hand_over

hand_over(snakemake)  # noqa: F821 - the job server ran this job (and this process exits), or it runs here

from clipdrift.core.io import read_safetensors, write_table
from clipdrift.data.sampling import probe_subsets
from clipdrift.data.split import read_image_split
from clipdrift.measure.extract import extract, reference_from_tensors
from clipdrift.measure.settings import AttentionConfig, CKAConfig
from clipdrift.measure.tables import with_run_columns
from clipdrift.model.checkpoints import load_backbone_spec, load_classifier
from clipdrift.pipeline.jobs.runner import run_script


def main(smk):
    settings, sensitivity = smk.params.settings, smk.params.sensitivity
    finetuned, _ = load_classifier(smk.input.checkpoint, base=load_backbone_spec(smk.input.backbone))
    reference = reference_from_tensors(*read_safetensors(smk.input.reference))
    subsets = (probe_subsets(read_image_split(smk.input.probe_source), sensitivity["probe_size"], sensitivity["seeds"])
               if sensitivity else None)
    tables = extract(finetuned, reference, read_image_split(smk.input.probe), AttentionConfig(**settings["attention"]),
                     CKAConfig(**settings["cka"]), subsets)
    for name, table in tables.items():
        write_table(with_run_columns(table, smk.params.run), smk.output[name])


run_script(snakemake, main, uses_gpu=True)  # noqa: F821 - injected by Snakemake
