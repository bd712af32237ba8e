"""Reaching this user's job server for the working directory: connect and verify, or start one.

Nothing is sent to a server before it is verified: the process at the other end of the socket
(``SO_PEERCRED``) runs as this user and is the process the server's pid record names. Every wait
has a deadline: connecting and each answer (``CLIPDRIFT_WARM_REPLY_TIMEOUT``, 30 s), the start
lock and a new server's imports (``CLIPDRIFT_WARM_START_TIMEOUT``, 300 s); past one, the job runs
cold and says which. A new server starts with a minimal environment (no job's secrets) and the
server folder the client checked, handed over as a descriptor. Stdlib only.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from clipdrift.pipeline.jobs.warm.freshness import import_environment
from clipdrift.pipeline.jobs.warm.state import LOG_FILE, PID_FILE, SOCKET, START_LOCK, StateFolder
from clipdrift.pipeline.jobs.warm.wire import IDLE_ENV, is_running, parent_pid, peer, start_ticks

START_TIMEOUT_ENV = "CLIPDRIFT_WARM_START_TIMEOUT"  # seconds a job waits for a new server (default 300)
REPLY_TIMEOUT_ENV = "CLIPDRIFT_WARM_REPLY_TIMEOUT"  # seconds a job waits for a connection or an answer (30)
# What a server's process keeps of the starting job's environment, besides the variables the
# fingerprint holds (the same in every job it serves): never a job's own settings or secrets.
SERVER_ENV = frozenset({"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "XDG_RUNTIME_DIR",
                        IDLE_ENV})
STATE_FD = 3  # where a new server finds its folder
RECORD_WAIT_S = 1.0  # a server writes its pid record right after it takes the socket


class WarmUnavailable(Exception):
    """The job server cannot run this job; the message says why, and the job runs cold."""


@dataclass(frozen=True)
class Process:
    """A process named by its pid and start (a recycled pid is another process)."""

    pid: int
    ticks: int

    def running(self) -> bool:
        return is_running(self.pid, self.ticks)


def deadline(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def connect(folder: StateFolder, job: dict) -> tuple[socket.socket, Process] | None:
    """A verified connection to the server, started first if there is none; None if a server went
    away between being seen and being reached."""
    try:
        return try_connect(folder) or _start_server(folder, job)
    except ConnectionError:
        return None
    except OSError as error:
        raise WarmUnavailable(f"the job server cannot be reached: {error}") from None


def try_connect(folder: StateFolder) -> tuple[socket.socket, Process] | None:
    """A connection to the server listening in ``folder``, verified; None if none listens."""
    timeout = deadline(REPLY_TIMEOUT_ENV, 30)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(folder.at(SOCKET))
        return sock, verify(sock, folder)
    except (FileNotFoundError, ConnectionRefusedError):  # none, or a stale socket of a dead one
        sock.close()
        return None
    except TimeoutError:
        sock.close()
        raise WarmUnavailable(f"the job server did not take the connection within {timeout:g} s "
                              f"({REPLY_TIMEOUT_ENV})") from None
    except BaseException:
        sock.close()
        raise


def verify(sock: socket.socket, folder: StateFolder) -> Process:
    """The server at the other end of ``sock``, if it runs as this user and is the one the
    folder's pid record names; otherwise nothing has been sent, and the job runs cold."""
    other = peer(sock)
    if other.uid != os.getuid():
        raise WarmUnavailable(f"the socket {folder.shown(SOCKET)} is served by uid {other.uid}, not by this user; "
                              "nothing was sent to it")
    waited = time.monotonic()
    while (recorded := _recorded_pid(folder)) != other.pid and time.monotonic() - waited < RECORD_WAIT_S:
        time.sleep(0.01)
    if recorded != other.pid:
        raise WarmUnavailable(f"the job server on {folder.shown(SOCKET)} is pid {other.pid}, but its record "
                              f"{folder.shown(PID_FILE)} names {recorded}; nothing was sent to it")
    try:
        return Process(other.pid, start_ticks(other.pid))
    except (OSError, ValueError, IndexError):
        raise ConnectionError("the job server ended while being reached") from None


def _recorded_pid(folder: StateFolder) -> int | None:
    try:
        return int(json.loads(folder.read_text(PID_FILE) or "{}").get("pid"))
    except (ValueError, TypeError, AttributeError):
        return None


def child_of(server: Process, pid) -> Process | None:
    """The server's child ``pid`` as it runs now (None if it is not, or no longer, the server's
    child): the only process the client ever signals itself, when the server has gone away."""
    if not isinstance(pid, int) or parent_pid(pid) != server.pid:
        return None
    try:
        return Process(pid, start_ticks(pid))
    except (OSError, ValueError, IndexError):
        return None


# --- starting a server -----------------------------------------------------------------------


def _start_server(folder: StateFolder, job: dict) -> tuple[socket.socket, Process]:
    """Start a server (one client at a time: the others wait on the lock, then connect to it)."""
    lock = folder.open_file(START_LOCK, os.O_RDWR)
    try:
        _lock(lock, deadline(START_TIMEOUT_ENV, 300))
        found = try_connect(folder)
        if found is not None:
            return found  # another job started one meanwhile
        return _wait_until_ready(folder, _spawn_server(folder, job["fingerprint"], str(Path(job["script"]).parent)))
    finally:
        os.close(lock)  # and with it the lock


def _lock(fd: int, timeout: float) -> None:
    started = time.monotonic()
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() - started > timeout:
                raise WarmUnavailable(f"another job held the job server's start lock for {timeout:g} s "
                                      f"({START_TIMEOUT_ENV})") from None
            time.sleep(0.05)


def server_environment(environ) -> dict[str, str]:
    """A new server's environment: what its imports read (the fingerprint's variables) and the
    basics of a login environment, nothing else of the job that starts it."""
    keep = set(import_environment(environ)) | SERVER_ENV
    return {name: value for name, value in environ.items() if name in keep or name.startswith("LC_")}


def _spawn_server(folder: StateFolder, expected_fingerprint: str, scripts_dir: str) -> Process:
    """Start the server as a grandchild in its own session, so that it is never in this job's
    process tree (Snakemake's benchmark of this job would count it), holds no terminal and no
    descriptor of this process but its folder and log."""
    argv = [sys.executable, "-P", "-m", "clipdrift.pipeline.jobs.warm.server", "--fingerprint", expected_fingerprint,
            "--scripts", scripts_dir, "--state-fd", str(STATE_FD), "--state-dir", str(folder.path)]
    environment = server_environment(os.environ)
    log = folder.open_file(LOG_FILE, os.O_WRONLY | os.O_APPEND)
    read_end, write_end = os.pipe()
    intermediate = os.fork()
    if intermediate == 0:
        status = 1
        try:
            os.close(read_end)
            os.setsid()
            server = os.fork()
            if server == 0:
                status = 127
                _descriptors_for_server(folder.fd, log)
                os.execve(sys.executable, argv, environment)
            os.write(write_end, f"{server} {start_ticks(server)}".encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    os.close(log)
    try:
        reported = os.read(read_end, 64).decode().split()
    finally:
        os.close(read_end)
    os.waitpid(intermediate, 0)
    if len(reported) != 2:
        raise WarmUnavailable("the job server could not be started (fork failed)")
    return Process(int(reported[0]), int(reported[1]))


def _descriptors_for_server(folder_fd: int, log: int) -> None:
    """/dev/null in, the log out, the folder at STATE_FD, and nothing else (moved out of the way
    first: with a standard descriptor closed, the folder or the log may sit at 0, 1 or 2)."""
    folder_fd, log = (fcntl.fcntl(fd, fcntl.F_DUPFD, STATE_FD + 1) for fd in (folder_fd, log))
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.dup2(folder_fd, STATE_FD)
    os.closerange(STATE_FD + 1, os.sysconf("SC_OPEN_MAX"))


def _wait_until_ready(folder: StateFolder, server: Process) -> tuple[socket.socket, Process]:
    timeout = deadline(START_TIMEOUT_ENV, 300)
    started, delay = time.monotonic(), 0.01
    while time.monotonic() - started < timeout:
        found = try_connect(folder)
        if found is not None:
            return found
        if not server.running():
            raise WarmUnavailable(f"the job server exited while starting: {last_line(folder)} "
                                  f"(see {folder.shown(LOG_FILE)})")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.1)
    raise WarmUnavailable(f"the job server did not start within {timeout:g} s ({START_TIMEOUT_ENV}); "
                          f"see {folder.shown(LOG_FILE)}")


def last_line(folder: StateFolder) -> str:
    lines = [line for line in (folder.read_text(LOG_FILE) or "").splitlines() if line.strip()]
    return lines[-1] if lines else "no log"
