"""The weight-space drift of one run: every matrix of its image tower against the pretrained one,
at its drift checkpoint and its kept epochs; the intruder sweep; the top directions of its changes."""

from clipdrift.pipeline.jobs.warm.client import hand_over

hand_over(snakemake)  # noqa: F821 - the job server ran this job (and this process exits), or it runs here

from pathlib import Path

from clipdrift.core.device import full_fp32, resolve_device
from clipdrift.core.io import read_json, read_safetensors, write_safetensors, write_table
from clipdrift.measure.settings import WeightSettings
from clipdrift.measure.tables import with_run_columns
from clipdrift.measure.weight_drift import weight_drift
from clipdrift.model.backbones import build_classifier
from clipdrift.model.checkpoints import kept_epoch_loaders, load_backbone_spec, load_classifier
from clipdrift.model.weights import tower_matrices
from clipdrift.pipeline.jobs.runner import run_script


def main(smk):
    settings = WeightSettings(**smk.params.settings)
    spec = load_backbone_spec(smk.input.backbone)
    history = read_json(smk.input.history)
    finetuned, _ = load_classifier(smk.input.checkpoint, base=spec)
    pretrained = tower_matrices(build_classifier(spec, finetuned.n_classes, seed=0))
    checkpoint_epoch = history["best_epoch"] if smk.params.checkpoint == "best" else len(history["epochs"])
    epochs = [(epoch, lambda load=load: tower_matrices(load()))
              for epoch, load in kept_epoch_loaders(Path(smk.input.get("epochs", "")), list(settings.epochs), spec,
                                                    diverged=history["status"] == "diverged")]
    with full_fp32():
        drift, sweep, subspaces = weight_drift(pretrained, tower_matrices(finetuned), checkpoint_epoch, epochs,
                                               read_safetensors(smk.input.bases)[0], settings, resolve_device())
    write_table(with_run_columns(drift, smk.params.run), smk.output.drift)
    write_table(with_run_columns(sweep, smk.params.run), smk.output.sweep)
    write_safetensors(smk.output.subspaces, subspaces, {"run": smk.params.run, "rank": settings.overlap_rank})


run_script(snakemake, main, uses_gpu=True)  # noqa: F821 - injected by Snakemake
