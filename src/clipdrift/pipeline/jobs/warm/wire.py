"""What the warm client and server share: how they talk, who is at the other end, and the process
facts both read from ``/proc``. Stdlib only.

**Messages.** A message is a 4-byte big-endian length and that many bytes of UTF-8 JSON,
descriptors (``SCM_RIGHTS``) riding on its first bytes. The first key of every job message is
``fingerprint``, which every version of the server reads; a server that does not recognise it
answers ``stale``, one that will not fork ``refused``, one ready to fork ``ready``: only then
does the client send its standard input, output and error as descriptors (a server that stops
answering never holds them), and the server answers ``forked`` with its child's pid. While the
job runs, the client sends ``{"signal": N}`` for each signal it forwards, and the server signals
its own child's process group (the client never signals a pid it was told); the server's last
message is ``exited``.

**Who.** Each side checks the other's user id (``SO_PEERCRED``) before it trusts a byte: the
server before it reads a job, the client before it sends one.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

PROTOCOL = 2
# What a client forwards to its job (through the server, which signals its own child's group).
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
IDLE_ENV = "CLIPDRIFT_WARM_IDLE"  # seconds a server waits without a job before it exits (default 120)
MAX_MESSAGE = 64 * 1024 * 1024  # a job message holds the pickled job, its config and environment


class ProtocolError(Exception):
    """The other side sent something that is not a message of this protocol."""


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


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int


def peer(sock: socket.socket) -> Peer:
    """The process at the other end of a Unix socket (``SO_PEERCRED``): for a listening server,
    the process that bound it."""
    pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return Peer(pid, uid)


# --- processes ---------------------------------------------------------------------------------


def _stat_fields(pid: int | str) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2:].split()  # fields 3 onwards (the name may hold spaces)


def parent_pid(pid: int) -> int | None:
    """The parent of process ``pid``; None if there is no such process."""
    try:
        return int(_stat_fields(pid)[1])
    except (OSError, ValueError, IndexError):
        return None


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
