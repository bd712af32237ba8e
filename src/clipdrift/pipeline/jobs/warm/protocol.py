"""What the warm client and server share: where the server lives, how they talk, what makes a
server fit a client, and the process facts both read from ``/proc``. Stdlib only.

**Where.** One server per working directory and user: its files are in ``.snakemake/clipdrift-
warm/`` under the working directory, a folder of mode 0700 owned by the user. Both sides use
paths relative to the working directory (a Unix socket path is limited to 107 bytes).

**Messages.** A message is a 4-byte big-endian length and that many bytes of UTF-8 JSON. The
client's job message carries its standard input, output and error as file descriptors
(``SCM_RIGHTS``) with its first bytes. The first key of every job message is ``fingerprint``,
which every version of the server reads; a server that does not recognise it answers
``stale``.

**Fingerprint.** A hash of everything a server's imports depend on: the package's files (every
byte: a server never outlives an edit of the package), the interpreter, the listing of every
site directory (the installed distributions and their versions) and the environment variables
that libraries read when they are imported. Variables Snakemake sets per job (thread counts) are
left out; the child sets the job's thread count itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import site
import socket
import stat
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

PROTOCOL = 1
STATE_DIR = Path(".snakemake") / "clipdrift-warm"
SOCKET = STATE_DIR / "server.sock"
PID_FILE = STATE_DIR / "server.pid"
LOG_FILE = STATE_DIR / "server.log"
START_LOCK = STATE_DIR / "start.lock"
MAX_MESSAGE = 64 * 1024 * 1024  # a job message holds the pickled job, its config and environment

# Read by libraries when they are imported (a server keeps what it imported with): part of the
# fingerprint. Thread counts are set per job by Snakemake and again by the job itself.
IMPORT_ENV_PREFIXES = ("PYTHON", "LD_", "HF_", "HUGGINGFACE_", "TRANSFORMERS_", "TORCH", "PYTORCH_", "CUDA_",
                       "CUBLAS_", "OMP_", "KMP_", "GOMP_", "MKL_", "OPENBLAS_", "JE_", "MALLOC_", "ARROW_", "MPL",
                       "TOKENIZERS_")
PER_JOB_THREADS = frozenset({"OMP_NUM_THREADS", "GOTO_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                             "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"})  # as Snakemake sets them
PER_JOB_ENV = PER_JOB_THREADS | {"CUDA_VISIBLE_DEVICES"}


class ProtocolError(Exception):
    """The other side sent something that is not a message of this protocol."""


# --- the state directory ---------------------------------------------------------------------


def state_dir() -> Path:
    """``.snakemake/clipdrift-warm`` under the working directory: created 0700, and refused if
    another user owns it or others can enter it."""
    STATE_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = STATE_DIR.stat()
    if info.st_uid != os.getuid():
        raise PermissionError(f"{STATE_DIR} belongs to uid {info.st_uid}, not to this user")
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(STATE_DIR, 0o700)
    return STATE_DIR


# --- messages ----------------------------------------------------------------------------------


def send(sock: socket.socket, message: dict, fds: list[int] | None = None) -> None:
    body = json.dumps(message).encode()
    header = struct.pack(">I", len(body))
    if fds:
        socket.send_fds(sock, [header], fds)
    else:
        sock.sendall(header)
    sock.sendall(body)


def receive(sock: socket.socket, max_fds: int = 0) -> tuple[dict | None, list[int]]:
    """The next message and the descriptors sent with it; (None, []) if the peer closed first."""
    fds: list[int] = []
    header = b""
    while len(header) < 4:
        if max_fds and not fds:
            chunk, fds, _, _ = socket.recv_fds(sock, 4 - len(header), max_fds)
        else:
            chunk = sock.recv(4 - len(header))
        if not chunk:
            _close_all(fds)
            if header:
                raise ProtocolError("the connection closed inside a message header")
            return None, []
        header += chunk
    (length,) = struct.unpack(">I", header)
    if length > MAX_MESSAGE:
        _close_all(fds)
        raise ProtocolError(f"a message of {length} bytes is larger than the limit of {MAX_MESSAGE}")
    body = _receive_exactly(sock, length)
    try:
        message = json.loads(body)
    except ValueError as error:
        _close_all(fds)
        raise ProtocolError(f"not JSON: {error}") from None
    if not isinstance(message, dict):
        _close_all(fds)
        raise ProtocolError("a message must be a JSON object")
    return message, fds


def _receive_exactly(sock: socket.socket, length: int) -> bytes:
    parts, missing = [], length
    while missing:
        chunk = sock.recv(min(missing, 1 << 20))
        if not chunk:
            raise ProtocolError(f"the connection closed {missing} bytes before the end of a message")
        parts.append(chunk)
        missing -= len(chunk)
    return b"".join(parts)


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def peer_uid(sock: socket.socket) -> int:
    """The user id of the process at the other end of a Unix socket (``SO_PEERCRED``)."""
    credentials = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", credentials)[1]


# --- the fingerprint ---------------------------------------------------------------------------


def package_dir() -> Path:
    """The folder of the clipdrift package this process imported."""
    return Path(sys.modules["clipdrift"].__file__).resolve().parent


def fingerprint(environ: dict[str, str] | None = None) -> str:
    """16 hex digits naming the package code and the Python environment a server would import."""
    environ = os.environ if environ is None else environ
    digest = hashlib.sha256()
    digest.update(f"{PROTOCOL}\0{sys.executable}\0{sys.version}\0{package_dir()}\n".encode())
    for name in sorted(import_environment(environ)):
        digest.update(f"env {name}={environ[name]}\n".encode())
    for relative, content in _package_files(package_dir()):
        digest.update(f"file {relative} {hashlib.sha256(content).hexdigest()}\n".encode())
    for folder in _site_dirs(environ):
        try:
            entries = sorted(os.listdir(folder))
        except OSError:
            continue
        digest.update(f"site {folder}: {' '.join(entries)}\n".encode())
    return digest.hexdigest()[:16]


def import_environment(environ: dict[str, str]) -> list[str]:
    """Names of the environment variables that are part of the fingerprint."""
    return [name for name in environ if name.startswith(IMPORT_ENV_PREFIXES) and name not in PER_JOB_ENV]


def _package_files(root: Path):
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(name for name in subfolders if not name.startswith(".") and name != "__pycache__")
        for name in sorted(files):
            if not name.startswith(".") and not name.endswith((".pyc", ".pyo")):
                path = Path(folder) / name
                yield path.relative_to(root).as_posix(), path.read_bytes()


def _site_dirs(environ: dict[str, str]) -> list[str]:
    folders = [*site.getsitepackages(), *([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])]
    folders += [entry for entry in environ.get("PYTHONPATH", "").split(os.pathsep) if entry]
    return list(dict.fromkeys(os.path.abspath(folder) for folder in folders))


# --- processes ---------------------------------------------------------------------------------


def _stat_fields(pid: int | str) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2:].split()  # fields 3 onwards (the name may hold spaces)


def start_ticks(pid: int | str = "self") -> int:
    """When a process started, in clock ticks since boot: with the pid, names one process."""
    return int(_stat_fields(pid)[19])


def process_start_time(pid: int | str = "self") -> float:
    """When a process started, in ``time.time()`` seconds (10 ms resolution)."""
    import time

    uptime = float(Path("/proc/uptime").read_text().split()[0])
    age = uptime - start_ticks(pid) / os.sysconf("SC_CLK_TCK")
    return time.time() - age


def is_running(pid: int, ticks: int) -> bool:
    """Whether the process that had ``pid`` and started at ``ticks`` still runs (not a zombie)."""
    try:
        fields = _stat_fields(pid)
    except (OSError, ValueError):
        return False
    return int(fields[19]) == ticks and fields[0] not in ("Z", "X")


@dataclass(frozen=True)
class Workflow:
    """The ``snakemake`` process a job belongs to: the nearest ancestor running Snakemake."""

    pid: int
    ticks: int  # its start, so that a recycled pid is not taken for it
    argv: tuple[str, ...]

    @property
    def mode(self) -> str:
        """Snakemake's ``--mode``: ``default`` for a workflow run, ``remote`` for a cluster job."""
        for option, value in zip(self.argv, self.argv[1:]):
            if option == "--mode":
                return value
        return next((arg.split("=", 1)[1] for arg in self.argv if arg.startswith("--mode=")), "default")


def workflow_process() -> Workflow | None:
    """The ``snakemake`` process this job belongs to (the server exits once every workflow it
    served has ended), or None if no ancestor runs Snakemake."""
    pid = os.getppid()
    while pid > 1:
        try:
            argv = [arg.decode(errors="replace") for arg in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")]
            fields = _stat_fields(pid)
        except OSError:
            return None
        if _runs_snakemake(argv):
            return Workflow(pid, int(fields[19]), tuple(argv))
        pid = int(fields[1])
    return None


def _runs_snakemake(argv: list[str]) -> bool:
    if any(os.path.basename(arg) == "snakemake" for arg in argv[:2]):
        return True
    return any(arg == "-m" and following == "snakemake" for arg, following in zip(argv, argv[1:]))
