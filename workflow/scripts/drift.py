"""Attention statistics or CKA (by rule) of one run's checkpoint against the pretrained model,
on the fixed probe set."""

from clipdrift.backbones import build_classifier
from clipdrift.checkpoints import load_classifier
from clipdrift.io import read_image_split, write_table
from clipdrift.metrics import AttentionConfig, CKAConfig, attention_table, cka_table
from clipdrift.study import load_backbone_spec, run_script, with_run_columns

MEASUREMENTS = {"attention": (AttentionConfig, attention_table), "cka": (CKAConfig, cka_table)}


def main(smk):
    settings_class, measure = MEASUREMENTS[smk.rule]
    spec = load_backbone_spec(smk.input.backbone)
    finetuned, _ = load_classifier(smk.input.checkpoint, base=spec)
    pretrained = build_classifier(spec, finetuned.n_classes, seed=0)
    table = measure(finetuned, pretrained, read_image_split(smk.input.probe), settings_class(**smk.params.settings))
    write_table(with_run_columns(table, smk.params.run), smk.output.table)


run_script(snakemake, main)  # noqa: F821 - injected by Snakemake
