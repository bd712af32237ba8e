"""The thin client: the first call of every workflow script hands the job to the warm server.

A workflow script starts with::

    from clipdrift.pipeline.jobs.warm.client import hand_over

    hand_over(snakemake)  # the warm server ran this job: this process exits here with its status

and only then imports what its job needs. :func:`hand_over` either runs the job through the
job server of this working directory (starting one if there is none, or if the one there has an
older fingerprint) and exits this process with the job's status, or returns, and the script
runs cold in this process exactly as without a server. :func:`job_start` says which, and why
(the job's log says it too).

Jobs run cold when ``CLIPDRIFT_WARM`` is ``0``/``false``/``off``, when the study config says
``warm: false``, on a host that is not Linux, under SLURM (each job is its own allocation
there), or when the server cannot start or refuses to fork (see :mod:`clipdrift.pipeline.jobs.warm.server`).

While the child runs, this process forwards SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and
SIGUSR2 to the child's process group, and when the child ends it exits the same way: with the
child's exit status, or killed by the child's signal. If this process dies, the server kills the
child. Stdlib only: everything here runs before the job imports anything heavy.
"""

from __future__ import annotations

import base64
import fcntl
import os
import pickle
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from clipdrift.pipeline.jobs.warm.protocol import (
    LOG_FILE,
    PROTOCOL,
    SOCKET,
    START_LOCK,
    ProtocolError,
    fingerprint,
    is_running,
    process_start_time,
    receive,
    send,
    start_ticks,
    state_dir,
    workflow_process,
)

SWITCH_ENV = "CLIPDRIFT_WARM"  # 0 / false / off / no: every job runs cold
START_TIMEOUT_ENV = "CLIPDRIFT_WARM_START_TIMEOUT"  # seconds a job waits for a new server (default 300)
CONTAINER_ENV = ("APPTAINER_CONTAINER", "SINGULARITY_CONTAINER")  # set inside Apptainer/Singularity
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
_OFF = ("0", "false", "off", "no")


@dataclass(frozen=True)
class JobStart:
    """How this job's process came to run it."""

    mode: str  # "warm": a child forked by the job server; "cold": the process Snakemake started
    detail: str  # which server, or why cold
    process_start: float  # time.time() at which the process Snakemake started for this job began
    handed_over: float | None = None  # when the script called hand_over (after Snakemake's preamble)
    forked: float | None = None  # when the server's child began to take on the job (warm only)

    def describe(self) -> str:
        return f"{self.mode} job: {self.detail}"


class WarmUnavailable(Exception):
    """The job server cannot run this job; the message says why, and the job runs cold."""


@dataclass(frozen=True)
class _Ending:
    returncode: int
    signal: int | None = None


_current: JobStart | None = None


def job_start() -> JobStart:
    """How this job started (cold in this process if the script never called :func:`hand_over`)."""
    if _current is not None:
        return _current
    return JobStart("cold", "the script did not call hand_over", _own_start())


def enter_warm_child(start: JobStart) -> None:
    """Called by the forked child before it runs the script: its ``hand_over`` returns at once."""
    global _current
    _current = start


def hand_over(snakemake) -> None:
    """Run this job in the warm server and exit with its status, or return to run it cold here."""
    global _current
    if _current is not None and _current.mode == "warm":
        return  # this is the server's child running the job
    handed_over, process_start = time.time(), _own_start()
    reason = cold_reason(snakemake, os.environ, sys.platform)
    if reason is None:
        try:
            ending = _run_warm(snakemake, process_start, handed_over)
        except WarmUnavailable as error:
            reason = str(error)
        else:
            _exit_as(ending)
    _current = JobStart("cold", reason, process_start, handed_over)


def cold_reason(snakemake, environ, platform: str) -> str | None:
    """Why this job must run cold, or None."""
    switch = environ.get(SWITCH_ENV, "").strip().lower()
    if switch in _OFF:
        return f"the job server is switched off ({SWITCH_ENV}={environ[SWITCH_ENV]})"
    if (getattr(snakemake, "config", None) or {}).get("warm", True) is False:
        return "the job server is switched off (warm: false in the study config)"
    if platform != "linux":
        return f"the job server runs on Linux only, not on {platform}"
    if environ.get("SLURM_JOB_ID"):
        return f"this is SLURM job {environ['SLURM_JOB_ID']}: each job is its own allocation"
    container = next((environ[name] for name in CONTAINER_ENV if environ.get(name)), None)
    if container:
        return f"the job runs in a container ({container}) that ends with it"
    workflow = workflow_process()
    if workflow is not None and workflow.mode == "remote":
        return "this is a cluster job (snakemake --mode remote): each job is its own allocation"
    script = _script_path()
    if script is None or not Path(script).is_file():
        return f"the script is not a local file ({script})"
    return None


def _own_start() -> float:
    try:
        return process_start_time()
    except (OSError, ValueError, IndexError):  # no /proc: the first moment this module knows of
        return time.time()


def _script_path() -> str | None:
    # Snakemake's preamble sets __file__ to the real script (its temporary copy is __real_file__)
    return getattr(sys.modules.get("__main__"), "__file__", None)


# --- the warm path -----------------------------------------------------------------------------


def _run_warm(snakemake, process_start: float, handed_over: float) -> _Ending:
    try:
        state_dir()
    except OSError as error:
        raise WarmUnavailable(f"the job server's folder cannot be used: {error}") from None
    job = _job_message(snakemake, process_start, handed_over)
    with _Forwarding() as forwarding:
        for _ in range(2):
            with _connect(job) as sock:
                if sock is None:
                    continue
                try:
                    send(sock, job, fds=job["stdio"])
                    reply, _ = receive(sock)
                except (OSError, ProtocolError):
                    reply = None
                if reply is None or reply.get("status") == "stale":
                    continue  # the server went away or is older than this code: a fresh one next
                if reply.get("status") != "forked":
                    raise WarmUnavailable(f"the job server refused this job: {reply.get('reason', reply)}")
                forwarding.child = int(reply["pid"])
                return _wait_for_child(sock, forwarding)
    raise WarmUnavailable("the job server went away twice before starting this job")


class _Forwarding:
    """While the job is handed over, signals to this process go to the child's process group.

    Installed before the job is sent, so no signal falls between the child's start and this
    process learning its pid. One that comes before the child exists does what it would have
    done without a server (the previous disposition, re-raised here: a KeyboardInterrupt, or the
    end of this process, whose connection closing tells the server to drop the job). A signal
    this process ignored is not forwarded: a cold job would have ignored it too.
    """

    def __init__(self):
        self.child: int | None = None
        self.previous: dict[int, object] = {}

    def __enter__(self) -> _Forwarding:
        for signum in FORWARDED_SIGNALS:
            self.previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, *exc) -> None:
        for signum, disposition in self.previous.items():
            signal.signal(signum, disposition)

    def _on_signal(self, signum, _frame) -> None:
        if self.previous[signum] == signal.SIG_IGN:
            return
        if self.child is None:
            signal.signal(signum, self.previous[signum])
            os.kill(os.getpid(), signum)
            return
        self.send(signum)

    def send(self, signum: int) -> None:
        try:
            os.killpg(self.child, signum)
        except ProcessLookupError:  # it has ended already
            pass


def _job_message(snakemake, process_start: float, handed_over: float) -> dict:
    umask = os.umask(0)
    os.umask(umask)
    return {
        "fingerprint": fingerprint(),
        "protocol": PROTOCOL,
        "rule": getattr(snakemake, "rule", "?"),
        "script": _script_path(),
        "snakemake": base64.b64encode(pickle.dumps(snakemake, protocol=4)).decode(),
        "cwd": os.getcwd(),
        "env": dict(os.environ),
        "argv": list(sys.argv),
        "path": list(sys.path),
        "umask": umask,
        "stdio": _open_stdio(),
        "encoding": [sys.stdout.encoding, sys.stdout.errors] if sys.stdout else ["utf-8", "strict"],
        "client": {"pid": os.getpid(), "start": process_start, "handed_over": handed_over},
        "workflow": _workflow_identity(),
    }


def _workflow_identity() -> list[int] | None:
    workflow = workflow_process()
    return [workflow.pid, workflow.ticks] if workflow is not None else None


def _open_stdio() -> list[int]:
    """Which of the standard descriptors 0, 1, 2 this process has open (they go to the child)."""
    present = []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            continue
        present.append(fd)
    return present


class _connect:
    """A connection to this working directory's server, started first if there is none."""

    def __init__(self, job: dict):
        self.job = job
        self.sock: socket.socket | None = None

    def __enter__(self) -> socket.socket | None:
        try:
            self.sock = _try_connect() or _start_server(self.job)
        except ConnectionError:  # a server that went away between being seen and being reached
            self.sock = None
        except OSError as error:
            raise WarmUnavailable(f"the job server cannot be reached: {error}") from None
        return self.sock

    def __exit__(self, *exc) -> None:
        if self.sock is not None:
            self.sock.close()


def _try_connect() -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(SOCKET))
    except (FileNotFoundError, ConnectionRefusedError):  # none, or a stale socket of a dead one
        sock.close()
        return None
    except OSError:
        sock.close()
        raise
    return sock


def _start_server(job: dict) -> socket.socket:
    """Start a server (one client at a time: the others wait on the lock, then connect to it)."""
    with open(START_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        sock = _try_connect()
        if sock is not None:
            return sock  # another job started one meanwhile
        return _wait_until_ready(_spawn_server(job["fingerprint"], str(Path(job["script"]).parent)))


def _spawn_server(expected_fingerprint: str, scripts_dir: str) -> tuple[int, int]:
    """Start the server as a grandchild in its own session, so that it is never in this job's
    process tree (Snakemake's benchmark of this job would count it), holds no terminal and no
    descriptor of this process but its log; its (pid, start ticks)."""
    argv = [sys.executable, "-P", "-m", "clipdrift.pipeline.jobs.warm.server", "--fingerprint", expected_fingerprint,
            "--scripts", scripts_dir]
    log = os.open(LOG_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
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
                devnull = os.open(os.devnull, os.O_RDONLY)
                os.dup2(devnull, 0)
                os.dup2(log, 1)
                os.dup2(log, 2)
                os.closerange(3, os.sysconf("SC_OPEN_MAX"))
                os.execv(sys.executable, argv)
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
    return int(reported[0]), int(reported[1])


def _wait_until_ready(server: tuple[int, int]) -> socket.socket:
    timeout = float(os.environ.get(START_TIMEOUT_ENV, "300"))
    started, delay = time.monotonic(), 0.01
    while time.monotonic() - started < timeout:
        sock = _try_connect()
        if sock is not None:
            return sock
        if not is_running(*server):
            raise WarmUnavailable(f"the job server exited while starting: {_last_line(LOG_FILE)} (see {LOG_FILE})")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.1)
    raise WarmUnavailable(f"the job server did not start within {timeout:.0f} s ({START_TIMEOUT_ENV}); see {LOG_FILE}")


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1] if lines else "no log"


def _wait_for_child(sock: socket.socket, forwarding: _Forwarding) -> _Ending:
    try:
        reply, _ = receive(sock)
    except (OSError, ProtocolError):
        reply = None
    if reply is None or reply.get("status") != "exited":
        forwarding.send(signal.SIGKILL)
        print(f"clipdrift: the job server went away while job {forwarding.child} ran; the job was stopped "
              f"(see {LOG_FILE})", file=sys.stderr)
        return _Ending(1)
    return _Ending(int(reply["returncode"]), reply.get("signal"))


def _exit_as(ending: _Ending) -> None:
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    if ending.signal:
        if ending.signal not in (signal.SIGKILL, signal.SIGSTOP):  # those two have no handler to reset
            signal.signal(ending.signal, signal.SIG_DFL)
        os.kill(os.getpid(), ending.signal)
        time.sleep(1)  # a signal that does not end a process by default: exit as the shell reports it
        os._exit(128 + ending.signal)
    sys.exit(ending.returncode)
