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
there), when the working directory is writable by others than its user, or when the server
cannot be verified, cannot start, misses a deadline or refuses to fork (see
:mod:`clipdrift.pipeline.jobs.warm.connect` and :mod:`clipdrift.pipeline.jobs.warm.server`).

While the child runs, this process forwards SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and
SIGUSR2 to the server, which signals its child's process group; when the child ends this
process exits the same way: with the child's exit status, or killed by the child's signal. If
this process dies, the server kills the child; if the server dies, this process kills the child
it verified as the server's (never a pid it was only told). Stdlib only: everything here runs
before the job imports anything heavy.
"""

from __future__ import annotations

import base64
import os
import pickle
import select
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from clipdrift.pipeline.jobs.warm.connect import (
    REPLY_TIMEOUT_ENV,
    Process,
    WarmUnavailable,
    child_of,
    connect,
    deadline,
)
from clipdrift.pipeline.jobs.warm.freshness import fingerprint
from clipdrift.pipeline.jobs.warm.state import LOG_FILE, StateFolder, StateRefused, open_state_folder, shared_workdir
from clipdrift.pipeline.jobs.warm.wire import (
    FORWARDED_SIGNALS,
    PROTOCOL,
    ProtocolError,
    process_start_time,
    receive,
    send,
    workflow_process,
)

SWITCH_ENV = "CLIPDRIFT_WARM"  # 0 / false / off / no: every job runs cold
CONTAINER_ENV = ("APPTAINER_CONTAINER", "SINGULARITY_CONTAINER")  # set inside Apptainer/Singularity
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
    shared = shared_workdir_reason()
    if shared:
        return shared
    workflow = workflow_process()
    if workflow is not None and workflow.mode == "remote":
        return "this is a cluster job (snakemake --mode remote): each job is its own allocation"
    script = _script_path()
    if script is None or not Path(script).is_file():
        return f"the script is not a local file ({script})"
    return None


def shared_workdir_reason(workdir: str | None = None) -> str | None:
    """Why the job server is off for a working directory others can write to, or None."""
    shared = shared_workdir(workdir or os.getcwd())
    if shared is None:
        return None
    return (f"{shared}: Snakemake runs the code it generates from there, and a job server would too, so the job "
            "server is off; a folder only you can write to (chmod go-w) runs jobs warm")


def run_notice(config: dict, environ=None) -> str | None:
    """The line a local run prints once at its start when the working directory turns the job
    server off (each job's log says it too); None when it does not, or the server is off anyway."""
    environ = os.environ if environ is None else environ
    if environ.get(SWITCH_ENV, "").strip().lower() in _OFF or config.get("warm", True) is False:
        return None
    reason = shared_workdir_reason()
    return f"clipdrift: every job runs cold: {reason}" if reason else None


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
        folder = open_state_folder(os.getcwd())
    except (StateRefused, OSError) as error:
        raise WarmUnavailable(f"the job server's folder cannot be used: {error}") from None
    with folder:
        job = _job_message(snakemake, process_start, handed_over)
        with _Forwarding() as forwarding:
            for _ in range(2):
                connection = connect(folder, job)
                if connection is None:
                    continue
                sock, server = connection
                with sock:
                    reply = _hand_over_job(sock, job)
                    if reply is None or reply.get("status") == "stale":
                        continue  # the server went away or is older than this code: a fresh one next
                    if reply.get("status") != "forked":
                        raise WarmUnavailable(f"the job server refused this job: {reply.get('reason', reply)}")
                    forwarding.attach(sock, server, reply.get("pid"))
                    return _wait_for_child(sock, forwarding, folder)
    raise WarmUnavailable("the job server went away twice before starting this job")


def _hand_over_job(sock, job: dict) -> dict | None:
    """Send the job, then its standard descriptors once the server is ready to fork for it (a
    server that stops answering never holds them); the server's last answer (None if it went
    away)."""
    try:
        send(sock, job)
        reply = receive(sock)[0]
        if reply is not None and reply.get("status") == "ready":
            send(sock, {"stdio": job["stdio"]}, fds=job["stdio"])
            reply = receive(sock)[0]
        return reply
    except TimeoutError:
        raise WarmUnavailable(f"the job server did not answer within {sock.gettimeout():g} s "
                              f"({REPLY_TIMEOUT_ENV})") from None
    except (OSError, ProtocolError):
        return None


class _Forwarding:
    """While the job is handed over, signals to this process go to the child's process group,
    through the server (it signals its own child).

    Installed before the job is sent, so no signal falls between the child's start and this
    process learning of it. One that comes before the child exists does what it would have
    done without a server (the previous disposition, re-raised here: a KeyboardInterrupt, or the
    end of this process, whose connection closing tells the server to drop the job). A signal
    this process ignored is not forwarded: a cold job would have ignored it too.
    """

    def __init__(self):
        self.sock = None
        self.child: Process | None = None  # the server's child, verified as such by this process
        self.child_pid = None  # what the server said
        self.previous: dict[int, object] = {}

    def __enter__(self) -> _Forwarding:
        for signum in FORWARDED_SIGNALS:
            self.previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, *exc) -> None:
        for signum, disposition in self.previous.items():
            signal.signal(signum, disposition)

    def attach(self, sock, server: Process, child_pid) -> None:
        self.child, self.child_pid, self.sock = child_of(server, child_pid), child_pid, sock

    def _on_signal(self, signum, _frame) -> None:
        if self.previous[signum] == signal.SIG_IGN:
            return
        if self.sock is None:
            signal.signal(signum, self.previous[signum])
            os.kill(os.getpid(), signum)
            return
        try:
            send(self.sock, {"signal": int(signum)})
        except OSError:  # the server has gone: waiting for the child says so
            pass

    def kill_child(self) -> None:
        """The server has gone: end the child it left, if this process verified it as its child."""
        if self.child is None or not self.child.running():
            return
        try:
            if os.getpgid(self.child.pid) == self.child.pid:
                os.killpg(self.child.pid, signal.SIGKILL)
            else:
                os.kill(self.child.pid, signal.SIGKILL)
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


def _wait_for_child(sock, forwarding: _Forwarding, folder: StateFolder) -> _Ending:
    """The child's ending, as the server reports it. A server that ends, or stays silent for
    longer than the reply deadline after the child has ended, fails the job (and its child)."""
    reply = None
    if _report_comes(sock, forwarding):
        try:
            reply, _ = receive(sock)
        except (OSError, ProtocolError):
            pass
    if reply is None or reply.get("status") != "exited":
        forwarding.kill_child()
        print(f"clipdrift: the job server went away or stopped answering while job {forwarding.child_pid} ran; "
              f"the job was stopped (see {folder.shown(LOG_FILE)})", file=sys.stderr)
        return _Ending(1)
    return _Ending(int(reply["returncode"]), reply.get("signal"))


def _report_comes(sock, forwarding: _Forwarding) -> bool:
    """Wait until the server says something (or closes); False if it stays silent too long after
    the child it forked has ended."""
    silent_since = None
    while not select.select([sock], [], [], 1.0)[0]:
        if forwarding.child is not None and not forwarding.child.running():
            silent_since = silent_since or time.monotonic()
            if time.monotonic() - silent_since > deadline(REPLY_TIMEOUT_ENV, 30):
                return False
    return True


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
