"""Fine-tune one (dataset, method, lr, seed) run; write best/final checkpoints and its history."""

from clipdrift.pipeline.jobs.warm.client import hand_over

hand_over(snakemake)  # noqa: F821 - the job server ran this job (and this process exits), or it runs here

from clipdrift.core.io import write_json
from clipdrift.data.split import read_image_split
from clipdrift.model.adapters import MethodConfig, apply_method
from clipdrift.model.backbones import build_classifier
from clipdrift.model.checkpoints import load_backbone_spec, save_classifier
from clipdrift.pipeline.jobs.runner import run_script
from clipdrift.pipeline.jobs.signals import STOPPED_EXIT, stop_on_signals
from clipdrift.train.config import TrainConfig, settings_hash
from clipdrift.train.engine import TrainingStopped, finetune
from clipdrift.train.snapshots import EpochSnapshots


def main(smk):
    spec = load_backbone_spec(smk.input.backbone)
    train, val, test, probe = (read_image_split(smk.input[split]) for split in ("train", "val", "test", "probe"))
    config = TrainConfig(**smk.params.training, num_threads=smk.threads)
    method = MethodConfig(**smk.params.method)
    model = apply_method(build_classifier(spec, len(train.class_names), seed=config.seed), method, seed=config.seed)
    select = val if config.selection_split == "val" else test
    config_hash = settings_hash(smk.params.method, smk.params.training)

    def save(path, checkpoint, dtype="float32"):
        save_classifier(path, model, spec, method, config.seed, config_hash,
                        extra={"run": smk.params.run, "checkpoint": checkpoint}, stored_dtype=dtype)

    keep = smk.params.snapshots if "epochs" in smk.output.keys() else None  # trajectories on
    kept = EpochSnapshots(keep, f"{smk.params.resume_dir}.epochs", save)
    # progress goes to the job's log, one line per epoch; no progress bar on the shared terminal.
    # A preemption warning, SIGTERM or Ctrl-C stops the run after its current step, state saved.
    with stop_on_signals() as stop:
        try:
            result = finetune(model, train, select, config, test=test, resume=smk.params.resume_dir, progress=False,
                              method=method, snapshot=kept.take, stop=stop, probe=probe)
        except TrainingStopped:
            raise SystemExit(STOPPED_EXIT) from None
    for which in ("best", "final"):
        result.load_into(model, which)
        save(smk.output[which], which)
    if "epochs" in smk.output.keys():
        kept.move_to(smk.output.epochs)
    write_json(smk.output.history, {**smk.params.run, **result.history})


run_script(snakemake, main, uses_gpu=True)  # noqa: F821 - injected by Snakemake
