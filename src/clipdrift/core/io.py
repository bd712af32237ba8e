"""File I/O: atomic writes, integrity digests, safetensors with a JSON metadata block, JSON and tables.

Every writer goes through :func:`atomic_output`: the content is written to a temporary file in
the destination's directory and renamed over the destination only when complete, so a killed
job never leaves a half-written artifact that looks finished.

Every artifact a job reads back carries a SHA-256 digest of its content, written with it and
checked on read: safetensors files (checkpoints, image caches, resume state) in their metadata
block, Parquet tables in their schema metadata, JSON objects in an ``"_integrity"`` record. A
byte changed on disk, a cut-short copy, an edit or a file from a clipdrift older than the
digests is refused with an :class:`ArtifactError` naming the file and the fix, instead of
loading as something else. See docs/artifacts.md, "Integrity digests".
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from clipdrift.core.errors import UserFacingError

if TYPE_CHECKING:  # torch and safetensors load on first use: the table jobs never need them (~2.5 s)
    import torch

METADATA_KEY = "clipdrift"
DIGEST_KEY = "clipdrift_digest"  # safetensors metadata key; as bytes, the Parquet schema metadata key
JSON_INTEGRITY_KEY = "_integrity"
JSON_INTEGRITY_FORMAT = 1
# SHA-256 rather than blake2b: with the SHA instructions of current x86 and ARM CPUs it hashes
# ~1.2 GB/s here, blake2b ~0.5 GB/s (360 MB: 0.29 s vs 0.71 s).
DIGEST_ALGORITHM = "sha256"
RERUN = "Delete it and rerun the job that writes it."


class ArtifactError(UserFacingError, ValueError):
    """A file exists but cannot be used (truncated, damaged, wrong kind, missing metadata)."""


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


# ---------------------------------------------------------------------------------------------
# Digests
# ---------------------------------------------------------------------------------------------

class _Digest:
    """SHA-256 over a sequence of pieces, each prefixed with its length.

    The length framing keeps different sequences apart (``"ab", "c"`` vs ``"a", "bc"``); the
    domain (first piece) keeps a JSON digest from ever matching a tensor digest.
    """

    def __init__(self, domain: str):
        self._hash = hashlib.new(DIGEST_ALGORITHM)
        self.add(domain.encode())

    def add(self, piece) -> None:
        view = memoryview(piece)
        self._hash.update(view.nbytes.to_bytes(8, "little"))
        self._hash.update(view)

    def text(self) -> str:
        return f"{DIGEST_ALGORITHM}:{self._hash.hexdigest()}"


def _check_digest(path: Path, recorded: str | None, compute: Callable[[], str]) -> None:
    """Refuse ``path`` unless its ``recorded`` digest equals the digest of what was read."""
    if recorded is None:
        raise ArtifactError(
            f"{path} carries no integrity digest: it was written by a clipdrift older than the "
            f"digests (or its header is damaged). {RERUN}"
        )
    if recorded != compute():
        raise ArtifactError(
            f"{path} is damaged: its content does not match the digest written with it (a byte "
            f"changed on disk, an incomplete copy or an edit). {RERUN}"
        )


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise ArtifactError(f"{path} does not exist: run the job that writes it.")


def _unreadable(path: Path, kind: str, error: BaseException) -> ArtifactError:
    return ArtifactError(f"{path} is unreadable (truncated, damaged or not a {kind} file: {error}). {RERUN}")


# ---------------------------------------------------------------------------------------------
# JSON
# ---------------------------------------------------------------------------------------------

def write_json(path: str | os.PathLike, data) -> None:
    """Write ``data`` as indented JSON with sorted keys.

    An object gets a last key ``"_integrity": {"digest": ..., "format": 1}``, the digest of the
    canonical JSON of the rest, which :func:`read_json` checks and removes. A top-level array or
    scalar has no room for it without changing its shape, so it is written unverified.
    """
    plain = json.loads(json.dumps(data, sort_keys=True, default=_json_default))  # what a reader sees
    if isinstance(plain, dict):
        if JSON_INTEGRITY_KEY in plain:
            raise ValueError(f"{JSON_INTEGRITY_KEY!r} is reserved for the integrity record: rename that key")
        plain[JSON_INTEGRITY_KEY] = {"digest": _json_digest(plain), "format": JSON_INTEGRITY_FORMAT}
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(plain, indent=2) + "\n")


def read_json(path: str | os.PathLike):
    """The value :func:`write_json` wrote, its integrity record checked and removed.

    Refuses (:class:`ArtifactError`) a missing, unparsable, damaged or edited file, and an object
    without the record (written before the digests).
    """
    path = Path(path)
    _require_file(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ArtifactError(f"{path} is not valid JSON (truncated or damaged: {error}). {RERUN}") from error
    if isinstance(value, dict):
        _check_json_integrity(path, value)
    return value


def _check_json_integrity(path: Path, value: dict) -> None:
    record = value.pop(JSON_INTEGRITY_KEY, None)
    if record is not None and not (
        isinstance(record, dict) and record.get("format") == JSON_INTEGRITY_FORMAT and isinstance(record.get("digest"), str)
    ):
        raise ArtifactError(
            f"{path} has an {JSON_INTEGRITY_KEY!r} record this clipdrift does not read (damaged, or written "
            f"by another version): {record!r}. {RERUN}"
        )
    _check_digest(path, record["digest"] if record else None, lambda: _json_digest(value))


def _json_digest(value) -> str:
    digest = _Digest("clipdrift json 1")
    digest.add(json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode())
    return digest.text()


def _json_default(value):
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


# ---------------------------------------------------------------------------------------------
# safetensors
# ---------------------------------------------------------------------------------------------

def write_safetensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict) -> None:
    """Save tensors with ``metadata`` (any JSON-able dict) under the ``clipdrift`` header key.

    A digest of the metadata and of every tensor (name, dtype, shape, bytes) goes under
    ``clipdrift_digest``. Readers that ignore safetensors metadata (open_clip loading a
    ``backbone.safetensors``) load the file as any other.
    """
    from safetensors.torch import save_file

    metadata_json = json.dumps(metadata, sort_keys=True, default=_json_default)
    header = {METADATA_KEY: metadata_json, DIGEST_KEY: _safetensors_digest(metadata_json, tensors)}
    with atomic_output(path) as tmp:
        save_file(tensors, str(tmp), metadata=header)


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Load tensors and the clipdrift metadata; refuse missing, truncated, damaged, foreign or older files."""
    path = Path(path)
    _require_file(path)
    tensors, header = _load_safetensors(path)
    metadata_json = header.get(METADATA_KEY)
    if metadata_json is None:
        raise ArtifactError(
            f"{path} has no clipdrift metadata: it was not written by clipdrift (or its header is damaged). {RERUN}"
        )
    _check_digest(path, header.get(DIGEST_KEY), lambda: _safetensors_digest(metadata_json, tensors))
    return tensors, json.loads(metadata_json)


def verify_safetensors(path: str | os.PathLike) -> dict:
    """Check a file :func:`write_safetensors` wrote and return its metadata.

    For files another library loads afterwards (open_clip and ``backbone.safetensors``).
    """
    return read_safetensors(path)[1]


def written_by_clipdrift(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a safetensors file carrying clipdrift's metadata (only its header is
    read), i.e. one :func:`verify_safetensors` can check; False for foreign or unreadable files."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return METADATA_KEY in (handle.metadata() or {})
    except Exception:  # not safetensors at all: not ours to verify
        return False


def _load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as error:  # a damaged file fails in the decoder in many ways; see below
        # SafetensorError for a bad header, OSError for a short read, TypeError/ValueError for a
        # dtype torch lacks: whatever the decoder raises, the file cannot be used.
        raise _unreadable(path, "safetensors", error) from error
    return tensors, header


def _safetensors_digest(metadata_json: str, tensors: dict[str, torch.Tensor]) -> str:
    digest = _Digest("clipdrift safetensors 1")
    digest.add(metadata_json.encode())
    for name in sorted(tensors):
        tensor = tensors[name]
        digest.add(json.dumps([name, str(tensor.dtype), list(tensor.shape)]).encode())
        digest.add(_tensor_bytes(tensor))
    return digest.text()


def _tensor_bytes(tensor: torch.Tensor) -> np.ndarray:
    """The tensor's memory as flat uint8: a view, not a copy, of a contiguous CPU tensor."""
    import torch

    return tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------

def write_table(frame, path: str | os.PathLike) -> None:
    """Write a pandas DataFrame as CSV or Parquet, chosen by the file suffix.

    Parquet tables (what jobs read back) carry a digest of their content in the schema metadata,
    checked by :func:`read_table`. CSV tables are for humans and carry none.
    """
    path = Path(path)
    if path.suffix not in (".parquet", ".csv"):
        raise ValueError(f"unsupported table format {path.suffix!r}: use .csv or .parquet")
    with atomic_output(path) as tmp:
        if path.suffix == ".parquet":
            _write_parquet(frame, tmp)
        else:
            frame.to_csv(tmp, index=False)


def read_table(path: str | os.PathLike):
    """A table :func:`write_table` wrote. Parquet: refused unless its digest matches; CSV: unverified."""
    import pandas as pd

    path = Path(path)
    return _read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


def _write_parquet(frame, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    metadata = dict(table.schema.metadata or {})
    if frame.attrs:  # as DataFrame.to_parquet stores them
        metadata[b"PANDAS_ATTRS"] = json.dumps(frame.attrs).encode()
    table = table.replace_schema_metadata(metadata)
    metadata[DIGEST_KEY.encode()] = _table_digest(table).encode()
    pq.write_table(table.replace_schema_metadata(metadata), path)


def _read_parquet(path: Path):
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    _require_file(path)
    data = path.read_bytes()
    try:
        table = pq.read_table(pa.BufferReader(data))
        table.schema.names  # noqa: B018 - decoded lazily: a damaged name fails here, not in the digest
    except Exception as error:  # a damaged file fails in many ways (ArrowInvalid, OSError, UnicodeDecodeError)
        raise _unreadable(path, "Parquet", error) from error
    recorded = (table.schema.metadata or {}).get(DIGEST_KEY.encode())
    recorded = recorded.decode("utf-8", "replace") if recorded is not None else None
    _check_digest(path, recorded, lambda: _table_digest(table))
    # pandas parses the verified bytes again so that its own conversions (string dtype, attrs) apply
    return pd.read_parquet(io.BytesIO(data))


def _table_digest(table) -> str:
    """Digest of an Arrow table's schema metadata, column names, types and values.

    Computed from values, not from Arrow's buffers, so the table in memory before writing and
    the one read back from Parquet agree (chunking, null slots and string offsets may differ).
    """
    digest = _Digest("clipdrift parquet 1")
    for key, value in sorted((table.schema.metadata or {}).items()):
        if key != DIGEST_KEY.encode():
            digest.add(key)
            digest.add(value)
    digest.add(str(table.num_rows).encode())
    for field, column in zip(table.schema, table.columns):
        digest.add(json.dumps([field.name, _type_name(field.type), field.nullable]).encode())
        for key, value in sorted((field.metadata or {}).items()):
            digest.add(key)
            digest.add(value)
        for piece in _column_pieces(column):
            digest.add(piece)
    return digest.text()


def _type_name(arrow_type) -> str:
    """The type's name, blind to what Parquet does not keep: large vs small offsets, dictionary index width."""
    import pyarrow as pa

    if pa.types.is_dictionary(arrow_type):
        return f"dictionary<{_type_name(arrow_type.value_type)}, ordered={arrow_type.ordered}>"
    return {"large_string": "string", "large_binary": "binary"}.get(str(arrow_type), str(arrow_type))


def _column_pieces(column) -> Iterator:
    """The column's validity mask, then its valid values as canonical bytes."""
    import pyarrow as pa

    array = column.combine_chunks()
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    valid = array.is_valid()
    yield np.packbits(valid.to_numpy(zero_copy_only=False))
    values = array.filter(valid) if array.null_count else array  # what lies under a null is not data
    kind = array.type
    if any(check(kind) for check in (pa.types.is_string, pa.types.is_large_string, pa.types.is_binary,
                                     pa.types.is_large_binary)):
        yield from _binary_pieces(values)
        return
    numbers = values.to_numpy(zero_copy_only=False) if pa.types.is_primitive(kind) else None
    if numbers is not None and numbers.dtype != object:
        yield np.ascontiguousarray(numbers).reshape(-1).view(np.uint8)
    else:  # nested, decimal and time-of-day values: through Python objects (slow, and rare here)
        yield json.dumps(values.to_pylist(), sort_keys=True, default=repr).encode()


def _binary_pieces(array) -> Iterator:
    """Lengths (int64) and the concatenated bytes of a string or binary array."""
    import pyarrow as pa

    if len(array) == 0:
        yield b""
        yield b""
        return
    offset_type = np.int64 if pa.types.is_large_string(array.type) or pa.types.is_large_binary(array.type) else np.int32
    _, offsets_buffer, data_buffer = array.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=offset_type)[array.offset : array.offset + len(array) + 1]
    yield np.diff(offsets).astype(np.int64).view(np.uint8)
    data = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer is not None else np.zeros(0, np.uint8)
    yield data[offsets[0] : offsets[-1]]


# ---------------------------------------------------------------------------------------------
# Image splits
# ---------------------------------------------------------------------------------------------


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
