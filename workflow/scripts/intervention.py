"""One run's intruder intervention: its image tower with a share of its intruder dimensions kept,
against the uniform control at the same distance from the pretrained weights, each scored
in-domain, zero-shot and by attention drift like a curve point."""

from clipdrift.pipeline.jobs.warm.client import hand_over

hand_over(snakemake)  # noqa: F821 - the job server ran this job (and this process exits), or it runs here

from clipdrift.core.device import resolve_device
from clipdrift.core.io import read_safetensors, write_table
from clipdrift.measure.intervention import intervention_table
from clipdrift.measure.settings import InterventionSettings
from clipdrift.measure.tables import with_run_columns
from clipdrift.model.backbones import build_classifier
from clipdrift.model.checkpoints import load_backbone_spec, load_classifier
from clipdrift.model.weights import tower_matrices
from clipdrift.pipeline.jobs.runner import run_script
from clipdrift.pipeline.scoring import scoring_inputs


def main(smk):
    settings = InterventionSettings(**smk.params.settings)
    spec = load_backbone_spec(smk.input.backbone)
    finetuned, _ = load_classifier(smk.input.checkpoint, base=spec)
    pretrained = tower_matrices(build_classifier(spec, finetuned.n_classes, seed=0))
    inputs, _ = scoring_inputs(smk, settings.attention, settings.eval_batch_size, settings.zeroshot)
    table = intervention_table(finetuned, pretrained, read_safetensors(smk.input.bases)[0], inputs, settings.keeps,
                               settings.top_k, settings.epsilon, resolve_device())
    write_table(with_run_columns(table, smk.params.run), smk.output.table)


run_script(snakemake, main, uses_gpu=True)  # noqa: F821 - injected by Snakemake
