"""The curves of one run: its weight-interpolation points (alpha) and its kept epochs, each with
in-domain accuracy, held-out zero-shot top-1 and the entropy/ERF drift on the probe."""

from clipdrift.pipeline.jobs.warm.client import hand_over

hand_over(snakemake)  # noqa: F821 - the job server ran this job (and this process exits), or it runs here

from pathlib import Path

from clipdrift.core.io import read_json, write_table
from clipdrift.measure.curves import curve_table
from clipdrift.measure.settings import CurveSettings
from clipdrift.measure.tables import with_run_columns
from clipdrift.model.backbones import build_classifier
from clipdrift.model.checkpoints import kept_epoch_loaders, load_backbone_spec, load_classifier
from clipdrift.pipeline.jobs.runner import run_script
from clipdrift.pipeline.scoring import scoring_inputs


def main(smk):
    settings = CurveSettings(**smk.params.settings)
    spec = load_backbone_spec(smk.input.backbone)
    finetuned, _ = load_classifier(smk.input.final, base=spec)
    pretrained = build_classifier(spec, finetuned.n_classes, seed=0)
    inputs, pretrained_zs = scoring_inputs(smk, settings.attention, settings.eval_batch_size, settings.zeroshot)
    epochs = kept_epoch_loaders(Path(smk.input.get("epochs", "")), list(settings.epochs), spec,
                                diverged=read_json(smk.input.history)["status"] == "diverged")
    table = curve_table(finetuned, pretrained, inputs, list(settings.alphas), epochs, pretrained_zs_top1=pretrained_zs)
    write_table(with_run_columns(table, smk.params.run), smk.output.table)


run_script(snakemake, main, uses_gpu=True)  # noqa: F821 - injected by Snakemake
