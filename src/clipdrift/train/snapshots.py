"""The weights of a fine-tune's kept epochs (the per-epoch trajectories), collected during
training outside the job's declared outputs and moved there when the run is done."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path


class EpochSnapshots:
    """The weights of a fine-tune's kept epochs, collected outside the job's outputs.

    Snakemake deletes a failed job's outputs, so snapshots taken during training go to a scratch
    directory beside the resume state (a resumed run finds the epochs it already took) and are
    moved to the declared output directory once the run is done. ``settings``: the finetune
    rule's ``snapshots`` params (``epochs``, ``dtype``), or None to keep nothing.
    """

    def __init__(self, settings: dict | None, scratch: str, save: Callable[[str, str, str], None]):
        self.epochs = set(settings["epochs"]) if settings else set()
        self.dtype = settings["dtype"] if settings else "float32"
        self.scratch, self.save = Path(scratch), save

    def path(self, epoch: int):
        return self.scratch / f"epoch{epoch}.safetensors"

    def take(self, epoch: int) -> None:
        if epoch in self.epochs:
            self.save(self.path(epoch), f"epoch{epoch}", self.dtype)

    def move_to(self, directory: str) -> None:
        """Move the kept epochs into ``directory`` (epochs a diverged run never reached are absent)."""
        target = Path(directory)
        target.mkdir(parents=True, exist_ok=True)
        for epoch in sorted(self.epochs):
            if self.path(epoch).exists():
                shutil.move(self.path(epoch), target / self.path(epoch).name)
        shutil.rmtree(self.scratch, ignore_errors=True)
