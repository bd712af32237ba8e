"""The forked child: becomes the job, then runs its script as the process Snakemake started would.

Before the script runs, the child takes everything a job's process gets from how it was
started, from the client's job message: its own process group (so the client's signals reach
any process the job starts), the default signal dispositions of a new Python process, the
client's standard input, output and error (received as descriptors: output goes exactly where
a cold job's would), working directory, environment, umask, ``sys.argv`` and ``sys.path``, and
fresh random seeds where a new process would have them (Python's ``random`` reseeds itself after
a fork; numpy's global generator is reseeded here). It closes every descriptor the server opened.

Then it runs the script file from disk with ``runpy`` as ``__main__``, the job's unpickled
``snakemake`` object in its globals: the script's ``hand_over`` returns at once, its imports
find the preloaded libraries, and :func:`clipdrift.pipeline.jobs.runner.run_script` sets the job's threads,
device, seeds and log file as in a cold job. The child's exit status is the job's: the
script's ``sys.exit`` code, 1 after an uncaught exception (printed as Python prints it), or
death by SIGINT after a KeyboardInterrupt, as a cold Python process ends. Exit handlers
registered in the child run before it exits; nothing of the server runs after the fork.
"""

from __future__ import annotations

import atexit
import base64
import io
import os
import pickle
import runpy
import signal
import sys
import time
import traceback
from collections.abc import Callable
from typing import NoReturn

from clipdrift.pipeline.jobs.warm.client import JobStart, enter_warm_child

_DEFAULT_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGCHLD,
                    signal.SIGALRM)


def run(job: dict, stdio: list[int], release_server: Callable[[], None]) -> NoReturn:
    """Become the job described by ``job`` and run it; exit with its status. Never returns.

    ``stdio``: the client's standard descriptors, in the order of ``job["stdio"]``;
    ``release_server``: closes what the server opened."""
    forked = time.time()
    try:
        release_server()
        _take_on(job, stdio)
        status = _run_script(job, forked)
    except BaseException:  # noqa: BLE001 - setting up the job failed: that is the job's failure
        traceback.print_exc()
        status = 1
    _exit(status)


def _take_on(job: dict, stdio: list[int]) -> None:
    os.setpgid(0, 0)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # as Python sets it in every new process
    for signum in _DEFAULT_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
    targets = job["stdio"]
    for target in (0, 1, 2):
        received = stdio[targets.index(target)] if target in targets else None
        os.dup2(received if received is not None else os.open(os.devnull, os.O_RDWR), target)
    for fd in stdio:
        if fd not in (0, 1, 2):
            os.close(fd)
    os.chdir(job["cwd"])
    os.umask(job["umask"])
    os.environ.clear()
    os.environ.update(job["env"])
    sys.argv[:] = job["argv"]
    sys.path[:] = job["path"]
    _standard_streams(*job["encoding"], unbuffered=bool(job["env"].get("PYTHONUNBUFFERED")))
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()  # from the OS, as in a new process (the server's state is every child's)


def _standard_streams(encoding: str, errors: str, unbuffered: bool) -> None:
    """sys.stdin/stdout/stderr on descriptors 0-2 as CPython opens them in a new process."""

    def writer(fd: int, errors: str, line_buffering: bool):
        return io.TextIOWrapper(io.BufferedWriter(io.FileIO(fd, "w", closefd=False)), encoding=encoding,
                                errors=errors, line_buffering=line_buffering, write_through=unbuffered)

    sys.stdin = sys.__stdin__ = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)),
                                                 encoding=encoding, errors=errors)
    sys.stdout = sys.__stdout__ = writer(1, errors, line_buffering=unbuffered or os.isatty(1))
    sys.stderr = sys.__stderr__ = writer(2, "backslashreplace", line_buffering=True)


def _run_script(job: dict, forked: float) -> int:
    snakemake = pickle.loads(base64.b64decode(job["snakemake"]))
    client = job["client"]
    server = f"pid {os.getppid()}, its job {job.get('served', '?')}"
    enter_warm_child(JobStart("warm", f"forked by the job server ({server})", client["start"],
                              client["handed_over"], forked))
    try:
        runpy.run_path(job["script"], init_globals={"snakemake": snakemake}, run_name="__main__")
    except SystemExit as exit:
        return _exit_code(exit.code)
    except KeyboardInterrupt:
        traceback.print_exc()
        return -signal.SIGINT
    except BaseException:  # noqa: BLE001 - reported as Python reports an uncaught exception
        sys.excepthook(*sys.exc_info())
        return 1
    return 0


def _exit_code(code) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _exit(status: int) -> NoReturn:
    try:
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
    except BaseException:  # noqa: BLE001 - the job's status stands
        pass
    if status < 0:
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    os._exit(status & 0xFF)
