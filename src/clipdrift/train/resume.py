"""Where a killed fine-tune resumes from: its latest training state in a scratch directory,
outside the declared outputs Snakemake deletes on failure.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from clipdrift.core.io import read_safetensors, write_safetensors


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
