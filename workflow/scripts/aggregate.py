"""Collect every run's artifacts into the study's tidy tables and computed findings."""

from clipdrift.pipeline.jobs.warm.client import hand_over

hand_over(snakemake)  # noqa: F821 - the job server ran this job (and this process exits), or it runs here

import pandas as pd

from clipdrift.analysis.study import build_tables, study_findings
from clipdrift.core.io import read_json, read_table, write_json, write_table
from clipdrift.pipeline.jobs.runner import run_script
from clipdrift.pipeline.protocol import published_ablation_definitions


def main(smk):
    histories = [read_json(path) for path in smk.input.histories]
    zeroshot = [read_json(path) for path in smk.input.zeroshot]
    pretrained = [read_json(path) for path in smk.input.pretrained_zeroshot]
    attention = pd.concat([read_table(path) for path in smk.input.attention], ignore_index=True)
    cka = pd.concat([read_table(path) for path in smk.input.cka], ignore_index=True)
    sensitivity, curves, weights, sweep, intervention = (
        pd.concat([read_table(path) for path in smk.input[name]], ignore_index=True) if name in smk.input.keys() else None
        for name in ("sensitivity", "curves", "weights", "intruder_sweep", "intervention"))
    overlap = read_table(smk.input.weight_overlap) if "weight_overlap" in smk.input.keys() else None
    compare = smk.params.compare_with_paper
    tables = build_tables(histories, zeroshot, attention, cka, compare_with_paper=compare,
                          sensitivity=sensitivity, curves=curves, variants=smk.params.variants,
                          pretrained_zeroshot=pretrained, weights=weights, intruder_sweep=sweep,
                          weight_overlap=overlap, intervention=intervention,
                          published_definitions=published_ablation_definitions(smk.config) if compare else None)
    for name, frame in tables.items():
        write_table(frame, smk.output[f"{name}_csv"])
        write_table(frame, smk.output[f"{name}_parquet"])
    write_json(smk.output.findings, study_findings(tables, pretrained, smk.params.variants))


run_script(snakemake, main)  # noqa: F821 - injected by Snakemake
