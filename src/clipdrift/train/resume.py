"""Where a killed or stopped fine-tune resumes from: its latest training state (weights,
optimiser moments, loss scaler, step, position in the epoch's batch order, the epoch's running
sums, RNG streams) saved after every epoch - and at the step where a stop was requested - in a
scratch directory outside the declared outputs.

A rerun continues from there and ends where an uninterrupted run does, bit for bit; a state
saved by another run configuration (:func:`run_fingerprint`) is discarded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from clipdrift.core.io import ArtifactError, read_safetensors, write_safetensors
from clipdrift.data.split import ImageSplit
from clipdrift.model.backbones import CLIPClassifier
from clipdrift.model.methods import MethodConfig
from clipdrift.train.config import TrainConfig
from clipdrift.train.precision import Precision

log = logging.getLogger(__name__)

_RESUME_KIND = "clipdrift-finetune-resume"


class ResumeStore:
    """A scratch directory holding one run's latest training state, outside its declared outputs.

    Snakemake deletes the outputs of a failed job, so the state a killed fine-tune resumes from
    lives here instead (``results/<study>/.resume/<run>/``). ``state.safetensors`` is the commit
    point: it is replaced atomically after each epoch and names the other files it needs
    (e.g. the best weights so far), which are written first and pruned after.
    """

    STATE = "state"

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)

    def __repr__(self) -> str:
        return f"ResumeStore({str(self.directory)!r})"

    def _path(self, name: str) -> Path:
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"resume file name {name!r} must be a plain file name")
        return self.directory / f"{name}.safetensors"

    def save(self, name: str, tensors: dict[str, torch.Tensor], metadata: dict) -> None:
        write_safetensors(self._path(name), tensors, metadata)

    def load(self, name: str) -> tuple[dict[str, torch.Tensor], dict]:
        return read_safetensors(self._path(name))

    def exists(self, name: str = STATE) -> bool:
        return self._path(name).is_file()

    def save_state(self, tensors: dict[str, torch.Tensor], metadata: dict) -> None:
        self.save(self.STATE, tensors, metadata)

    def load_state(self) -> tuple[dict[str, torch.Tensor], dict] | None:
        """The saved state, or ``None`` when there is none (raises :class:`ArtifactError` if unreadable)."""
        return self.load(self.STATE) if self.exists(self.STATE) else None

    def prune(self, keep: set[str]) -> None:
        """Delete every stored file except the state and ``keep``."""
        if not self.directory.is_dir():
            return
        for path in self.directory.glob("*.safetensors"):
            if path.stem not in keep | {self.STATE}:
                path.unlink(missing_ok=True)

    def clear(self) -> None:
        """Remove the store's files (and the directory, if then empty) once the run is complete.

        Only files this store writes are deleted, so a mistyped directory loses nothing else.
        """
        if not self.directory.is_dir():
            return
        for path in [*self.directory.glob("*.safetensors"), *self.directory.glob(".*.safetensors.*.tmp")]:
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.directory.rmdir()


# ---------------------------------------------------------------------------------------------
# The state of a run
# ---------------------------------------------------------------------------------------------

@dataclass
class Progress:
    """Everything that survives an epoch boundary (and goes into the resume state)."""

    epoch: int = 0  # last completed epoch
    step: int = 0  # optimiser steps done
    epochs: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    best_select_acc: float | None = None
    best_state: dict[str, torch.Tensor] | None = None
    resumed_from_epoch: int | None = None
    resumed_at_step: int | None = None
    diverged_at_step: int | None = None
    skipped_steps: int = 0  # fp16 steps the GradScaler skipped (inf/NaN gradients)
    position: int = 0  # batches done of the epoch after ``epoch`` (a run stopped mid-epoch)
    partial: dict | None = None  # that epoch's running sums (loss, penalty, correct, seconds, trace)


class ResumableRun(Protocol):
    """What the resume state reads from a run and restores into it (:mod:`clipdrift.train.engine` builds one)."""

    model: CLIPClassifier
    config: TrainConfig
    method: MethodConfig | None
    precision: Precision
    device: torch.device
    named_params: list[tuple[str, torch.nn.Parameter]]
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler


def load_params(model: CLIPClassifier, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` (parameter name -> tensor) into ``model``'s parameters."""
    params = dict(model.named_parameters())
    unknown = sorted(set(state) - set(params))
    if unknown:
        raise KeyError(f"state holds parameters the model lacks: {unknown[:5]}")
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor)


def run_fingerprint(run: ResumableRun, train: ImageSplit, select: ImageSplit) -> str:
    """What must match for a saved state to continue this run: config, method, data, initial weights.

    The method settings count when ``finetune`` is given them (an lp-ft state trains the very
    parameters a Full FT one does, so only they tell the two apart); without them the
    fingerprint is what it always was.
    """
    digest = hashlib.blake2b(digest_size=16)
    settings = {k: v for k, v in run.config.to_dict().items()
                if k not in ("device", "num_threads", "eval_batch_size", "data_on_device", "deterministic")}
    identity = {"config": settings, "precision": [run.precision.train, run.precision.eval], "n_train": len(train),
                "n_select": len(select)}
    if run.method is not None:
        identity["method"] = run.method.to_dict()
    if getattr(run, "reference_identity", None):  # the trace's probe, the entropy floor's base
        identity["references"] = run.reference_identity
    digest.update(json.dumps(identity, sort_keys=True).encode())
    for labels in (train.labels, select.labels):
        digest.update(labels.numpy().tobytes())
    # The starting weights of the image tower and head (trainable or frozen), so a changed
    # backbone or head seed never resumes from another model's state.
    for name, param in run.model.named_parameters():
        if name.startswith(("clip.visual.", "head.")):
            digest.update(name.encode())
            digest.update(param.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _rng_tensors(device: torch.device) -> dict[str, torch.Tensor]:
    tensors = {"rng/cpu": torch.get_rng_state()}
    if device.type == "cuda":
        tensors["rng/cuda"] = torch.cuda.get_rng_state(device)
    return tensors


def _set_rng_tensors(tensors: dict[str, torch.Tensor], device: torch.device) -> None:
    """Restore the streams :func:`_rng_tensors` saved: the CPU's and the run's GPU's."""
    torch.set_rng_state(tensors["rng/cpu"])
    if "rng/cuda" in tensors and device.type == "cuda":
        torch.cuda.set_rng_state(tensors["rng/cuda"], device)


def save_resume(store: ResumeStore, run: ResumableRun, progress: Progress, fingerprint: str, improved: bool) -> None:
    """Commit ``run``'s state to ``store`` after an epoch or, for a run stopped mid-epoch, after
    its last optimiser step (with the best weights, when ``improved``). The state file is replaced
    atomically: until the new one is complete, the previous one stays valid."""
    # before the first epoch ends (a run stopped mid-epoch 1) there are no best weights yet
    best_file = f"best-epoch{progress.best_epoch}" if progress.best_state is not None else None
    if improved:  # written before the state that names it, so the state never points at nothing
        store.save(best_file, progress.best_state, {"kind": _RESUME_KIND, "epoch": progress.best_epoch})
    tensors = {f"param/{name}": p.detach().to("cpu") for name, p in run.named_params}
    for index, values in run.optimizer.state_dict()["state"].items():
        tensors.update({f"optim/{index}/{key}": value.to("cpu") for key, value in values.items()})
    tensors.update(_rng_tensors(run.device))
    schedule = getattr(run, "rank_schedule", None)
    scores, pattern = schedule.state() if schedule else ({}, None)
    tensors.update({f"rank/{key}": value for key, value in scores.items()})
    metadata = {
        "kind": _RESUME_KIND, "fingerprint": fingerprint, "epoch": progress.epoch, "step": progress.step,
        "epochs": progress.epochs, "best_epoch": progress.best_epoch, "best_select_acc": progress.best_select_acc,
        "best_file": best_file, "scaler": run.scaler.state_dict(), "skipped_steps": progress.skipped_steps,
        "position": progress.position, "partial": progress.partial,
    }
    if schedule:
        metadata["rank_schedule"] = pattern
    store.save_state(tensors, metadata)
    store.prune({best_file} if best_file else set())


def restore_resume(store: ResumeStore, run: ResumableRun, fingerprint: str) -> Progress | None:
    """The progress saved in ``store`` loaded into ``run``; None (start afresh) if there is none usable."""
    try:
        saved = store.load_state()
        if saved is None:
            return None
        tensors, metadata = saved
        if metadata.get("kind") != _RESUME_KIND or metadata.get("fingerprint") != fingerprint:
            log.warning("resume state in %s belongs to another run configuration; starting afresh", store.directory)
            store.clear()
            return None
        best_state = store.load(metadata["best_file"])[0] if metadata["best_file"] else None
    except ArtifactError as error:
        log.warning("resume state in %s is unreadable (%s); starting afresh", store.directory, error)
        store.clear()
        return None
    load_params(run.model, {k.removeprefix("param/"): v for k, v in tensors.items() if k.startswith("param/")})
    optimizer_state = run.optimizer.state_dict()
    optimizer_state["state"] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, index, name = key.split("/", 2)
            optimizer_state["state"].setdefault(int(index), {})[name] = value
    run.optimizer.load_state_dict(optimizer_state)
    if metadata["scaler"]:
        run.scaler.load_state_dict(metadata["scaler"])
    _set_rng_tensors(tensors, run.device)
    if getattr(run, "rank_schedule", None):
        run.rank_schedule.load_state({k.removeprefix("rank/"): v for k, v in tensors.items() if k.startswith("rank/")},
                                     metadata.get("rank_schedule") or {}, run.device)
    return Progress(epoch=metadata["epoch"], step=metadata["step"], epochs=metadata["epochs"],
                    best_epoch=metadata["best_epoch"], best_select_acc=metadata["best_select_acc"],
                    best_state=best_state, resumed_from_epoch=metadata["epoch"], resumed_at_step=metadata["step"],
                    skipped_steps=metadata["skipped_steps"], position=metadata.get("position", 0),
                    partial=metadata.get("partial"))
