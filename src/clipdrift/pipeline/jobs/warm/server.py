"""The warm job server: imports the workflow's heavy stack once, then forks one child per job.

Started by the first job of a working directory (``python -P -m clipdrift.pipeline.jobs.warm.server``, in its
own session, with no terminal and no inherited descriptor but its log), it:

1. writes ``server.pid`` and checks that its own fingerprint is the one the client expected
   (else it exits, and the client runs its job cold, naming the reason);
2. imports what Snakemake's job preamble needs, every module outside the package that the
   workflow scripts' code imports and every package module the scripts reach (all derived from
   their import closures, :mod:`clipdrift.pipeline.digest`). The package's import-time code makes no
   tensor (tested); third-party imports make a few constant tensors (peft) and ask torchvision
   for its CUDA version. With one thread for every threading library (``OMP_NUM_THREADS=1`` and
   the like: peft's import otherwise leaves an OpenMP worker behind), ``JE_ARROW_MALLOC_CONF=
   background_thread:false`` (pyarrow's jemalloc background thread) and
   ``PYTORCH_NVML_BASED_CUDA_CHECK=1`` (a CUDA check that does not initialise CUDA) the process
   then has one thread and no CUDA context. These settings are the server's own: every child
   takes the job's environment;
3. listens on ``server.sock`` and, for each job: checks the peer's user id, reads the job, and
   forks if it is safe to: the fingerprints match, the process has exactly one thread (a fork
   copies only the calling thread: a child of a process that ran a libgomp pool hangs at its
   first parallel region, measured) and CUDA is not initialised. Otherwise it answers
   ``stale`` (the client starts a fresh server; this one retires) or ``refused`` with the
   reason (the job runs cold);
4. reports each child's exit status to its client, and kills the child's process group if the
   client dies; a child's crash is only that job's failure;
5. exits when every workflow it served has ended and no job runs, after
   ``CLIPDRIFT_WARM_IDLE`` seconds without a job (default 120), when a newer server has taken its
   socket, or on SIGTERM/SIGINT/SIGHUP once its running jobs have ended.

It runs no tensor computation, sets no thread count and never initialises CUDA: each child
does all of that for its own job (:mod:`clipdrift.pipeline.jobs.warm.child`). Its log is
``.snakemake/clipdrift-warm/server.log``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import select
import selectors
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from clipdrift.pipeline.jobs.warm import child
from clipdrift.pipeline.jobs.warm.protocol import (
    PER_JOB_THREADS,
    PID_FILE,
    PROTOCOL,
    SOCKET,
    STATE_DIR,
    ProtocolError,
    fingerprint,
    is_running,
    peer_uid,
    receive,
    send,
    start_ticks,
    state_dir,
)

IDLE_ENV = "CLIPDRIFT_WARM_IDLE"
TICK_S = 0.5  # how often lifetime rules are checked
RECEIVE_TIMEOUT_S = 10.0  # a client sends its whole job at once
# The server's own settings for its imports (children take the job's environment instead).
# Without them, measured on this stack, the imports leave idle native threads behind: torch's
# import one OpenMP worker, peft's one more (its import-time tensor code runs an OpenMP region),
# OpenBLAS threads-1 workers when Snakemake set OPENBLAS_NUM_THREADS to the first job's thread
# count, and pyarrow (through pandas) jemalloc's background thread "jemalloc_bg_thd". With one
# thread per threading library and no jemalloc background thread there are none; the CUDA
# availability check goes through NVML, which does not initialise CUDA.
IMPORT_SETTINGS = {**dict.fromkeys(sorted(PER_JOB_THREADS), "1"), "JE_ARROW_MALLOC_CONF": "background_thread:false",
                   "PYTORCH_NVML_BASED_CUDA_CHECK": "1"}
# What Snakemake's script preamble imports, and the job's pickled ``snakemake`` object needs.
JOB_PREAMBLE = ("snakemake.iocontainers", "snakemake.logging")


def say(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} [{os.getpid()}] {message}", file=sys.stderr, flush=True)


# --- what it imports and when it may fork ------------------------------------------------------


def preload_names(scripts_dir: Path) -> list[str]:
    """The modules to import, derived from the workflow scripts' import closures: what Snakemake's
    job preamble needs, every module outside the package that the scripts' code imports, then
    every package module the scripts reach."""
    from clipdrift.pipeline.digest import external_imports, script_closure

    scripts = sorted(scripts_dir.glob("*.py"))
    external = {name for script in scripts for name in external_imports(script)}
    package = {_module_name(path) for script in scripts for path in script_closure(script) if path.endswith(".py")}
    return [*JOB_PREAMBLE, *sorted(external - set(JOB_PREAMBLE)), *sorted(package)]


def _module_name(relative: str) -> str:
    """``metrics/cka.py`` -> ``clipdrift.measure.cka``; ``metrics/__init__.py`` -> ``clipdrift.measure``."""
    parts = relative.removesuffix(".py").split("/")
    return ".".join(["clipdrift", *parts[:-1], *([] if parts[-1] == "__init__" else parts[-1:])])


def preload(names: list[str]) -> list[str]:
    """Import ``names``, open_clip first through clipdrift.model.openclip (without timm, as in a job);
    the failures."""
    failed = []
    for name in (["clipdrift.model.openclip"] if "open_clip" in names else []) + names:
        try:
            importlib.import_module(name)
        except Exception as error:  # noqa: BLE001 - a job that needs it imports it itself, and fails there
            failed.append(f"{name} ({type(error).__name__}: {error})")
    return failed


def native_threads() -> list[str]:
    """Names of this process's threads other than the main one (from ``/proc/self/task``)."""
    names = []
    for task in sorted(os.listdir("/proc/self/task"), key=int):
        if int(task) != os.getpid():
            try:
                names.append(Path(f"/proc/self/task/{task}/comm").read_text().strip())
            except OSError:
                continue  # it ended meanwhile
    return names


def fork_hazards() -> list[str]:
    """What makes a fork unsafe right now (empty: safe)."""
    hazards = []
    others = native_threads()
    if others:
        hazards.append(f"{len(others)} threads besides the main one ({', '.join(others)})")
    if threading.active_count() != 1:
        hazards.append(f"Python threads {[thread.name for thread in threading.enumerate()]}")
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        hazards.append("CUDA is initialised")
    return hazards


# --- the server --------------------------------------------------------------------------------


@dataclass(eq=False)
class RunningJob:
    pid: int
    rule: str
    conn: socket.socket | None
    pidfd: int | None
    started: float = field(default_factory=time.monotonic)


class Server:
    def __init__(self, expected_fingerprint: str, scripts_dir: Path, idle_s: float):
        self.fingerprint = expected_fingerprint
        self.scripts_dir = scripts_dir
        self.idle_s = idle_s
        self.selector = selectors.DefaultSelector()
        self.listener: socket.socket | None = None
        self.socket_inode: int | None = None
        self.jobs: dict[int, RunningJob] = {}
        self.workflows: set[tuple[int, int]] = set()
        self.last_activity = time.monotonic()
        self.retiring = False
        self.refusal: str | None = None
        self.served = 0
        self.ticks = start_ticks()

    # lifetime

    def run(self) -> int:
        state_dir()
        self._write_pid_file()
        own = fingerprint()
        if own != self.fingerprint:
            say(f"exiting: this environment's fingerprint is {own}, the client expected {self.fingerprint}")
            return 1
        self._import_stack()
        self._listen()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_stop_signal)
        try:
            while not self._should_exit():
                self._serve_once()
        finally:
            self._close()
        return 0

    def _import_stack(self) -> None:
        os.environ.update(IMPORT_SETTINGS)
        started = time.perf_counter()
        names = preload_names(self.scripts_dir)
        failed = preload(names)
        say(f"imported {len(names)} modules in {time.perf_counter() - started:.1f} s"
            + (f"; failed: {'; '.join(failed)}" if failed else ""))
        hazards = fork_hazards()
        if hazards:
            self.refusal = "unsafe to fork after the imports: " + "; ".join(hazards)
            say(f"refusing every job: {self.refusal}")

    def _listen(self) -> None:
        temporary = STATE_DIR / f"server.{os.getpid()}.sock"
        temporary.unlink(missing_ok=True)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(temporary))
        self.listener.listen(64)
        os.replace(temporary, SOCKET)  # atomic: a client sees the old socket or this one, never none
        self.socket_inode = SOCKET.stat().st_ino
        self.selector.register(self.listener, selectors.EVENT_READ, ("accept", None))
        self.last_activity = time.monotonic()
        say(f"serving {Path.cwd()} (fingerprint {self.fingerprint})")

    def _should_exit(self) -> bool:
        if self.jobs:
            return False
        if self.retiring or not self._owns_socket():
            return True
        if self.workflows and not any(is_running(pid, ticks) for pid, ticks in self.workflows):
            say("every workflow it served has ended")
            return True
        if time.monotonic() - self.last_activity > self.idle_s and not self._connection_waiting():
            say(f"idle for {self.idle_s:g} s")
            return True
        return False

    def _connection_waiting(self) -> bool:
        return self.listener is not None and bool(select.select([self.listener], [], [], 0)[0])

    def _owns_socket(self) -> bool:
        try:
            return SOCKET.stat().st_ino == self.socket_inode
        except FileNotFoundError:
            return False

    def _on_stop_signal(self, signum, _frame) -> None:
        say(f"signal {signal.Signals(signum).name}: no new jobs; exiting once {len(self.jobs)} running jobs end")
        self._retire()

    def _retire(self) -> None:
        """Take no more jobs: free the socket for a fresh server; exit once the running jobs end."""
        self.retiring = True
        if self.listener is not None:
            if self._owns_socket():
                SOCKET.unlink(missing_ok=True)
            self.selector.unregister(self.listener)
            self.listener.close()
            self.listener = None

    def _close(self) -> None:
        self._retire()
        try:
            if json.loads(PID_FILE.read_text()).get("pid") == os.getpid():
                PID_FILE.unlink()
        except (OSError, ValueError):
            pass
        say("exit")

    def _write_pid_file(self) -> None:
        temporary = PID_FILE.with_name(f"server.pid.{os.getpid()}")
        temporary.write_text(json.dumps({"pid": os.getpid(), "ticks": self.ticks, "fingerprint": self.fingerprint}))
        os.replace(temporary, PID_FILE)

    # events

    def _serve_once(self) -> None:
        polling = any(job.pidfd is None for job in self.jobs.values())
        for key, _ in self.selector.select(0.05 if polling else TICK_S):
            kind, job = key.data
            if kind == "accept":
                self._accept()
            elif kind == "exit":
                self._reap(job)
            else:
                self._client_event(job)
        if polling:
            self._reap_finished()

    def _accept(self) -> None:
        if self.listener is None:
            return
        conn, _ = self.listener.accept()
        self.last_activity = time.monotonic()
        conn.settimeout(RECEIVE_TIMEOUT_S)
        try:
            uid = peer_uid(conn)
            if uid != os.getuid():
                say(f"refused a connection from uid {uid}")
                conn.close()
                return
            job, fds = receive(conn, max_fds=3)
        except (OSError, ProtocolError) as error:
            say(f"dropped a connection: {error}")
            conn.close()
            return
        if job is None:
            conn.close()
            return
        self._start(job, fds, conn)

    def _start(self, job: dict, fds: list[int], conn: socket.socket) -> None:
        try:
            answer = self._answer(job)
            if answer is not None:
                if answer["status"] == "stale":
                    self._retire()  # first: the client's next connection must not reach this server
                self._send(conn, answer)
                conn.close()
                return
            self.served += 1
            job["served"] = self.served  # the child says which job of this server it is
            pid = os.fork()
            if pid == 0:
                child.run(job, fds, lambda: self._release_in_child(conn))  # never returns
            self._register(job, pid, conn)
            self._send(conn, {"status": "forked", "pid": pid})
        finally:
            for fd in fds:  # the client's terminal or pipes: never held by the server
                os.close(fd)

    def _answer(self, job: dict) -> dict | None:
        """Why not to fork for this job (a reply), or None."""
        if job.get("fingerprint") != self.fingerprint or job.get("protocol") != PROTOCOL:
            say(f"a job expects fingerprint {job.get('fingerprint')}: retiring for a fresh server")
            return {"status": "stale", "reason": f"this server's fingerprint is {self.fingerprint}"}
        if self.retiring:
            return {"status": "stale", "reason": "this server is retiring"}
        hazards = fork_hazards() if self.refusal is None else [self.refusal]
        if hazards:
            self.refusal = self.refusal or "unsafe to fork: " + "; ".join(hazards)
            return {"status": "refused", "reason": self.refusal}
        return None

    def _release_in_child(self, conn: socket.socket) -> None:
        """In a new child: close everything the server opened (sockets, pidfds, the selector)."""
        conn.close()
        for job in self.jobs.values():
            if job.conn is not None:
                job.conn.close()
            if job.pidfd is not None:
                os.close(job.pidfd)
        if self.listener is not None:
            self.listener.close()
        self.selector.close()

    def _register(self, job: dict, pid: int, conn: socket.socket) -> None:
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):  # before Linux 5.3: polled with waitpid instead
            pidfd = None
        running = RunningJob(pid, str(job.get("rule", "?")), conn, pidfd)
        self.jobs[pid] = running
        if pidfd is not None:
            self.selector.register(pidfd, selectors.EVENT_READ, ("exit", running))
        self.selector.register(conn, selectors.EVENT_READ, ("client", running))
        if job.get("workflow"):
            self.workflows.add(tuple(job["workflow"]))
        say(f"job {pid}: rule {running.rule}, client {job.get('client', {}).get('pid')}")

    def _client_event(self, job: RunningJob) -> None:
        try:
            data = job.conn.recv(4096)
        except OSError:
            data = b""
        if data:
            return  # a client sends nothing after its job; ignore
        say(f"job {job.pid}: its client is gone; killing the job")
        self._drop_connection(job)
        try:
            os.killpg(job.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _reap_finished(self) -> None:
        for job in [job for job in self.jobs.values() if job.pidfd is None]:
            self._reap(job, block=False)

    def _reap(self, job: RunningJob, block: bool = True) -> None:
        pid, status, usage = os.wait4(job.pid, 0 if block else os.WNOHANG)
        if pid == 0:
            return
        del self.jobs[job.pid]
        if job.pidfd is not None:
            self.selector.unregister(job.pidfd)
            os.close(job.pidfd)
        signum = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        returncode = os.waitstatus_to_exitcode(status)
        ending = {"status": "exited", "returncode": returncode, "signal": signum,
                  "wall_s": round(time.monotonic() - job.started, 3), "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
                  "max_rss_mb": round(usage.ru_maxrss / 1024, 1)}
        say(f"job {job.pid}: rule {job.rule} ended: {json.dumps(ending)}")
        if job.conn is not None:
            self._send(job.conn, ending)
            self._drop_connection(job)
        self.last_activity = time.monotonic()

    def _drop_connection(self, job: RunningJob) -> None:
        if job.conn is not None:
            self.selector.unregister(job.conn)
            job.conn.close()
            job.conn = None

    def _send(self, conn: socket.socket, message: dict) -> None:
        try:
            send(conn, message)
        except OSError as error:
            say(f"could not answer a client: {error}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="clipdrift's warm job server (started by the jobs themselves)")
    parser.add_argument("--fingerprint", required=True, help="the fingerprint the starting client computed")
    parser.add_argument("--scripts", type=Path, required=True, help="the workflow's scripts folder")
    args = parser.parse_args(argv)
    idle_s = float(os.environ.get(IDLE_ENV, "120"))
    say(f"starting in {Path.cwd()} with {sys.executable}")
    return Server(args.fingerprint, args.scripts, idle_s).run()


if __name__ == "__main__":
    sys.exit(main())
