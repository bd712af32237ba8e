"""Attention statistics or CKA (by rule) of one run's checkpoint against the pretrained model,
on the fixed probe set; with probe sensitivity on, the attention statistics on other probe subsets too."""

from clipdrift.backbones import build_classifier
from clipdrift.checkpoints import load_backbone_spec, load_classifier
from clipdrift.data import probe_subsets
from clipdrift.io import read_image_split, write_table
from clipdrift.jobs import run_script, with_run_columns
from clipdrift.metrics.tables import AttentionConfig, CKAConfig, attention_table, cka_table, probe_sensitivity_table

MEASUREMENTS = {"attention": (AttentionConfig, attention_table), "cka": (CKAConfig, cka_table)}


def main(smk):
    settings_class, measure = MEASUREMENTS[smk.rule]
    settings = settings_class(**smk.params.settings)
    spec = load_backbone_spec(smk.input.backbone)
    finetuned, _ = load_classifier(smk.input.checkpoint, base=spec)
    pretrained = build_classifier(spec, finetuned.n_classes, seed=0)
    table = measure(finetuned, pretrained, read_image_split(smk.input.probe), settings)
    write_table(with_run_columns(table, smk.params.run), smk.output.table)
    if "sensitivity" in smk.output.keys():
        sensitivity = smk.params.sensitivity
        probes = probe_subsets(read_image_split(smk.input.probe_source), sensitivity["probe_size"], sensitivity["seeds"])
        table = probe_sensitivity_table(finetuned, pretrained, probes, settings)
        write_table(with_run_columns(table, smk.params.run), smk.output.sensitivity)


run_script(snakemake, main, uses_gpu=True)  # noqa: F821 - injected by Snakemake
