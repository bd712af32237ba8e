"""How alike the runs' changes of each matrix are: the overlap of their top singular subspaces,
for every pair of runs of a dataset (between methods, and between seeds: the noise floor)."""

from clipdrift.pipeline.jobs.warm.client import hand_over

hand_over(snakemake)  # noqa: F821 - the job server ran this job (and this process exits), or it runs here

from clipdrift.core.io import read_safetensors, write_table
from clipdrift.measure.weight_drift import subspace_overlaps
from clipdrift.pipeline.jobs.runner import run_script


def main(smk):
    runs = []
    for path in smk.input.subspaces:
        tensors, metadata = read_safetensors(path)
        runs.append((metadata["run"], tensors))
    write_table(subspace_overlaps(runs), smk.output.table)


run_script(snakemake, main)  # noqa: F821 - injected by Snakemake
