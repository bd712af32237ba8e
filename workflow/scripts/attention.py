"""Attention statistics of one run's checkpoint and of the pretrained model on the probe set."""

from clipdrift.backbones import build_classifier
from clipdrift.checkpoints import load_classifier
from clipdrift.io import read_image_split, write_table
from clipdrift.metrics import AttentionConfig, attention_table
from clipdrift.study import load_backbone_spec, run_script, with_run_columns


def main(smk):
    spec = load_backbone_spec(smk.input.backbone)
    finetuned, _ = load_classifier(smk.input.checkpoint, base=spec)
    pretrained = build_classifier(spec, finetuned.n_classes, seed=0)
    table = attention_table(finetuned, pretrained, read_image_split(smk.input.probe), AttentionConfig(**smk.params.settings))
    write_table(with_run_columns(table, smk.params.run), smk.output.table)


run_script(snakemake, main)  # noqa: F821 - injected by Snakemake
