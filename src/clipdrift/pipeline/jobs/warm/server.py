"""The warm job server: imports the workflow's heavy stack once, then forks one child per job.

Started by the first job of a working directory (``python -P -m clipdrift.pipeline.jobs.warm.server``, in its
own session, with no terminal and no inherited descriptor but its log), it:

1. checks the folder it was handed (:mod:`clipdrift.pipeline.jobs.warm.state`) and that its own
   fingerprint is the one the client expected (else it exits, and the client runs its job cold,
   naming the reason);
2. imports what Snakemake's job preamble needs, every module outside the package that the
   workflow scripts' code imports and every package module the scripts reach (all derived from
   their import closures, :mod:`clipdrift.pipeline.codedigest`). The package's import-time code makes no
   tensor (tested); third-party imports make a few constant tensors (peft) and ask torchvision
   for its CUDA version. With one thread for every threading library (``OMP_NUM_THREADS=1`` and
   the like: peft's import otherwise leaves an OpenMP worker behind), ``JE_ARROW_MALLOC_CONF=
   background_thread:false`` (pyarrow's jemalloc background thread) and
   ``PYTORCH_NVML_BASED_CUDA_CHECK=1`` (a CUDA check that does not initialise CUDA) the process
   then has one thread and no CUDA context. These settings are the server's own: every child
   takes the job's environment. It notes every file it imported from outside the standard
   library (:class:`~clipdrift.pipeline.jobs.warm.freshness.ImportedCode`);
3. listens on ``server.sock``, writes ``server.pid`` and, for each job: checks the peer's user
   id, reads the job, and forks if it is safe to: the fingerprints match, no file it imported
   has changed, the process has exactly one thread (a fork copies only the calling thread: a
   child of a process that ran a libgomp pool hangs at its first parallel region, measured) and
   CUDA is not initialised. Otherwise it answers ``stale`` (the client starts a fresh server;
   this one retires) or ``refused`` with the reason (the job runs cold);
4. passes each signal a client forwards to its child's process group, reports each child's exit
   status to its client, and kills the child's process group if the client dies; a child's
   crash is only that job's failure;
5. exits when every workflow it served has ended and no job runs, after
   ``CLIPDRIFT_WARM_IDLE`` seconds without a job (default 120), when a newer server has taken its
   socket, or on SIGTERM/SIGINT/SIGHUP once its running jobs have ended.

It runs no tensor computation, sets no thread count and never initialises CUDA: each child
does all of that for its own job (:mod:`clipdrift.pipeline.jobs.warm.child`). Its process starts
with a minimal environment (:func:`clipdrift.pipeline.jobs.warm.connect.server_environment`);
its log is ``server.log`` in its folder.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import select
import selectors
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from clipdrift.pipeline.jobs.warm import child
from clipdrift.pipeline.jobs.warm.freshness import ImportedCode, fingerprint
from clipdrift.pipeline.jobs.warm.stack import IMPORT_SETTINGS, fork_hazards, preload, preload_names
from clipdrift.pipeline.jobs.warm.state import PID_FILE, SOCKET, START_LOCK, StateFolder, StateRefused
from clipdrift.pipeline.jobs.warm.wire import (
    FORWARDED_SIGNALS,
    IDLE_ENV,
    PROTOCOL,
    ProtocolError,
    is_running,
    peer,
    receive,
    send,
    start_ticks,
)

TICK_S = 0.5  # how often lifetime rules are checked
RECEIVE_TIMEOUT_S = 10.0  # a client sends its whole job (or a signal) at once


def say(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} [{os.getpid()}] {message}", file=sys.stderr, flush=True)


# --- the server --------------------------------------------------------------------------------


@dataclass(eq=False)
class RunningJob:
    pid: int
    rule: str
    conn: socket.socket | None
    pidfd: int | None
    started: float = field(default_factory=time.monotonic)


class Server:
    def __init__(self, folder: StateFolder, expected_fingerprint: str, scripts_dir: Path, idle_s: float):
        self.folder = folder
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
        self.code: ImportedCode | None = None

    # lifetime

    def run(self) -> int:
        own = fingerprint()
        if own != self.fingerprint:
            say(f"exiting: this environment's fingerprint is {own}, the client expected {self.fingerprint}")
            return 1
        self._import_stack()
        self._listen()
        self._write_pid_file()
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
        began, started = time.time(), time.perf_counter()
        names = preload_names(self.scripts_dir)
        failed = preload(names)
        imported = time.perf_counter() - started
        self.code = ImportedCode(began)
        checking = time.perf_counter()
        self.code.changed()
        say(f"imported {len(names)} modules in {imported:.1f} s" + (f"; failed: {'; '.join(failed)}" if failed else "")
            + f"; checks {len(self.code.files)} imported files before each fork "
              f"({(time.perf_counter() - checking) * 1000:.1f} ms)")
        hazards = fork_hazards()
        if hazards:
            self.refusal = "unsafe to fork after the imports: " + "; ".join(hazards)
            say(f"refusing every job: {self.refusal}")

    def _listen(self) -> None:
        temporary = f"server.{os.getpid()}.sock"
        self.folder.unlink(temporary)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.folder.at(temporary))
        self.listener.listen(64)
        self.folder.rename(temporary, SOCKET)  # atomic: a client sees the old socket or this one, never none
        self.socket_inode = self.folder.inode(SOCKET)
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
        return self.socket_inode is not None and self.folder.inode(SOCKET) == self.socket_inode

    def _on_stop_signal(self, signum, _frame) -> None:
        say(f"signal {signal.Signals(signum).name}: no new jobs; exiting once {len(self.jobs)} running jobs end")
        self._retire()

    def _retire(self) -> None:
        """Take no more jobs: free the socket for a fresh server; exit once the running jobs end."""
        self.retiring = True
        if self.listener is not None:
            if self._owns_socket():
                self.folder.unlink(SOCKET)
            self.selector.unregister(self.listener)
            self.listener.close()
            self.listener = None

    def _close(self) -> None:
        self._retire()
        self._remove_pid_file()
        say("exit")

    def _remove_pid_file(self) -> None:
        """Remove the pid record if it is still this server's, and no client is starting a new
        server (which writes its own record while its client holds the start lock): a record
        left behind names a dead process, which no client takes for a server."""
        try:
            lock = self.folder.open_file(START_LOCK, os.O_RDWR)
        except OSError:
            return
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if json.loads(self.folder.read_text(PID_FILE) or "{}").get("pid") == os.getpid():
                self.folder.unlink(PID_FILE)
        except (OSError, ValueError, AttributeError):
            pass
        finally:
            os.close(lock)

    def _write_pid_file(self) -> None:
        """The record clients check the socket's owner against (written once the socket is this
        server's): pid, start and fingerprint."""
        record = {"pid": os.getpid(), "ticks": self.ticks, "fingerprint": self.fingerprint}
        self.folder.write_text(PID_FILE, json.dumps(record))

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
            uid = peer(conn).uid
            if uid != os.getuid():
                say(f"refused a connection from uid {uid}")
                conn.close()
                return
            job, _ = receive(conn)
        except (OSError, ProtocolError) as error:
            say(f"dropped a connection: {error}")
            conn.close()
            return
        if job is None:
            conn.close()
            return
        self._start(job, conn)

    def _start(self, job: dict, conn: socket.socket) -> None:
        if job.get("workflow"):  # a refused job's workflow too: a refusing server exits with it
            self.workflows.add(tuple(job["workflow"]))
        answer = self._answer(job)
        if answer is not None:
            if answer["status"] == "stale":
                self._retire()  # first: the client's next connection must not reach this server
            self._send(conn, answer)
            conn.close()
            return
        fds = self._take_stdio(conn)
        if fds is None:  # it gave up waiting (its deadline) and runs the job cold: no second copy
            say(f"dropped a job of rule {job.get('rule')}: its client has gone")
            conn.close()
            return
        try:
            self.served += 1
            job["served"] = self.served  # the child says which job of this server it is
            pid = os.fork()
            if pid == 0:
                child.run(job, fds, lambda: self._release_in_child(conn))  # never returns
            _own_group(pid)
            self._register(job, pid, conn)
            self._send(conn, {"status": "forked", "pid": pid})
        finally:
            for fd in fds:  # the client's terminal or pipes: never held by the server
                os.close(fd)

    def _take_stdio(self, conn: socket.socket) -> list[int] | None:
        """The client's standard descriptors, asked for once the job is accepted (so that a server
        that stops answering never holds a client's output open); None if the client has gone."""
        self._send(conn, {"status": "ready"})
        try:
            message, fds = receive(conn, max_fds=3)
        except (OSError, ProtocolError):
            return None
        if message is None or "stdio" not in message:
            for fd in fds:
                os.close(fd)
            return None
        return fds

    def _answer(self, job: dict) -> dict | None:
        """Why not to fork for this job (a reply), or None."""
        if job.get("fingerprint") != self.fingerprint or job.get("protocol") != PROTOCOL:
            say(f"a job expects fingerprint {job.get('fingerprint')}: retiring for a fresh server")
            return {"status": "stale", "reason": f"this server's fingerprint is {self.fingerprint}"}
        if self.retiring:
            return {"status": "stale", "reason": "this server is retiring"}
        changed = self.code.changed() if self.code is not None else []
        if changed:
            say(f"{len(changed)} imported files changed since the imports ({', '.join(changed[:3])}): retiring")
            self._retire()
            return {"status": "stale", "reason": f"{changed[0]} changed since this server imported it"}
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
        self.folder.close()

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
        say(f"job {pid}: rule {running.rule}, client {job.get('client', {}).get('pid')}")

    def _client_event(self, job: RunningJob) -> None:
        try:
            message, _ = receive(job.conn)
        except (OSError, ProtocolError):
            message = None
        if message is not None:
            self._forward(job, message.get("signal"))
            return
        say(f"job {job.pid}: its client is gone; killing the job")
        self._drop_connection(job)
        try:
            os.killpg(job.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _forward(self, job: RunningJob, signum) -> None:
        """A signal the client received, to its child's process group (its own child only)."""
        if signum not in FORWARDED_SIGNALS:
            say(f"job {job.pid}: ignored a client message asking for signal {signum!r}")
            return
        try:
            os.killpg(job.pid, signum)
        except ProcessLookupError:  # it has ended: its ending is on its way to the client
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


def _own_group(pid: int) -> None:
    """The child's own process group, set from this side too: a signal forwarded before the child
    has run its first line still reaches it (the child sets it as well)."""
    try:
        os.setpgid(pid, pid)
    except OSError:  # the child set it already, or has ended
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="clipdrift's warm job server (started by the jobs themselves)")
    parser.add_argument("--fingerprint", required=True, help="the fingerprint the starting client computed")
    parser.add_argument("--scripts", type=Path, required=True, help="the workflow's scripts folder")
    parser.add_argument("--state-fd", type=int, required=True, help="the descriptor of the checked server folder")
    parser.add_argument("--state-dir", type=Path, required=True, help="where that folder is (for messages)")
    args = parser.parse_args(argv)
    idle_s = float(os.environ.get(IDLE_ENV, "120"))
    say(f"starting in {Path.cwd()} with {sys.executable}")
    try:
        folder = StateFolder.adopt(args.state_fd, args.state_dir)
    except (OSError, StateRefused) as error:
        say(f"exiting: the server folder cannot be used: {error}")
        return 1
    return Server(folder, args.fingerprint, args.scripts, idle_s).run()


if __name__ == "__main__":
    sys.exit(main())
