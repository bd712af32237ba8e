"""File I/O: atomic writes, safetensors with a JSON metadata block, JSON and tables.

Every writer goes through :func:`atomic_output`: the content is written to a temporary file in
the destination's directory and renamed over the destination only when complete, so a killed
job never leaves a half-written artifact that looks finished.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from clipdrift.errors import UserFacingError

METADATA_KEY = "clipdrift"


class ArtifactError(UserFacingError, ValueError):
    """A file exists but cannot be used (truncated, wrong kind, missing metadata)."""


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes 0600 files; outputs get the usual mode
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def write_json(path: str | os.PathLike, data) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_json(path: str | os.PathLike):
    return json.loads(Path(path).read_text())


def _json_default(value):
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def write_safetensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict) -> None:
    """Save tensors with ``metadata`` (any JSON-able dict) under the ``clipdrift`` header key."""
    header = {METADATA_KEY: json.dumps(metadata, sort_keys=True, default=_json_default)}
    with atomic_output(path) as tmp:
        save_file(tensors, str(tmp), metadata=header)


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Load tensors and the clipdrift metadata; refuse missing, truncated or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"checkpoint {path} does not exist")
    try:
        tensors = load_file(str(path))
        with open(path, "rb") as handle:
            header_len = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(header_len))
    except (SafetensorError, OSError, ValueError) as error:
        raise ArtifactError(
            f"checkpoint {path} is unreadable (truncated or not a safetensors file: {error}). "
            "Delete it and rerun the job that writes it."
        ) from error
    raw = (header.get("__metadata__") or {}).get(METADATA_KEY)
    if raw is None:
        raise ArtifactError(f"{path} has no clipdrift metadata: it was not written by clipdrift")
    return tensors, json.loads(raw)


def write_table(frame, path: str | os.PathLike) -> None:
    """Write a pandas DataFrame as CSV or Parquet, chosen by the file suffix."""
    path = Path(path)
    with atomic_output(path) as tmp:
        if path.suffix == ".parquet":
            frame.to_parquet(tmp, index=False)
        elif path.suffix == ".csv":
            frame.to_csv(tmp, index=False)
        else:
            raise ValueError(f"unsupported table format {path.suffix!r}: use .csv or .parquet")


def read_table(path: str | os.PathLike):
    import pandas as pd

    path = Path(path)
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


def write_image_split(path: str | os.PathLike, split, dataset: str, split_name: str) -> None:
    """Store a :class:`clipdrift.data.ImageSplit` in the tensor cache."""
    tensors = {"images": split.images.contiguous(), "labels": split.labels.contiguous()}
    metadata = {"dataset": dataset, "split": split_name, "class_names": list(split.class_names)}
    write_safetensors(path, tensors, metadata)


def read_image_split(path: str | os.PathLike):
    from clipdrift.data import ImageSplit

    tensors, metadata = read_safetensors(path)
    if set(tensors) != {"images", "labels"}:
        raise ArtifactError(f"{path} is not an image split (holds {sorted(tensors)})")
    return ImageSplit(tensors["images"], tensors["labels"], metadata["class_names"])


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


def write_figure(figure, *paths: str | os.PathLike, dpi: int = 150) -> None:
    """Save a matplotlib Figure to each path (format from the suffix: .png, .svg, .pdf), atomically.

    SVG output carries no date and a fixed hash salt, so an unchanged figure gives an unchanged file.
    """
    import matplotlib

    for path in map(Path, paths):
        fmt = path.suffix.lstrip(".").lower()
        if not fmt:
            raise ValueError(f"figure path {path} has no suffix: name it .png, .svg or .pdf")
        metadata = {"Date": None} if fmt in ("svg", "pdf") else {}
        with atomic_output(path) as tmp, matplotlib.rc_context({"svg.hashsalt": "clipdrift"}):
            figure.savefig(tmp, format=fmt, dpi=dpi, metadata=metadata)
