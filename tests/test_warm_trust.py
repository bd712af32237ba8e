"""The warm job server where studies really live: lab folders shared with a group, sticky scratch
folders, other users on the same machine.

A second local user (created here when the tests run as root, as CI does; skipped otherwise)
plays the attacker. It runs in a process forked from the tests (the interpreter's own folder
may be closed to it: nothing is exec'd), plants links, folders and a fake job server that
records every byte and descriptor that reaches it, writes into every descriptor it gets and
answers ``forked`` with the pid of an unrelated process of the victim. Each test ends with the
victim's job run correctly (warm or cold), nothing delivered to the attacker, no file outside
the server's folder touched and no foreign process signalled.
"""

import contextlib
import fcntl
import grp
import json
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from clipdrift.pipeline.jobs.warm import connect, wire
from clipdrift.pipeline.jobs.warm.connect import REPLY_TIMEOUT_ENV, START_TIMEOUT_ENV, WarmUnavailable
from clipdrift.pipeline.jobs.warm.state import PID_FILE, SOCKET, StateFolder, open_state_folder

from warm_helpers import REPO, Workdir, alive, report, reported
from workflow_helpers import snakemake, wait_until

ATTACKER, LAB = "clipdrift-attacker", "clipdrift-lab"
SECRET = "hf_victims_own_token_5f3c"
ATTACKERS_MARK = b"written by the attacker\n"
JOB = report(", 'secret': os.environ.get('SECRET')")
ELSEWHERE = {"XDG_RUNTIME_DIR": ""}  # with TMPDIR: the server folder goes where the test says


# --- the second user -------------------------------------------------------------------------


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int


@pytest.fixture(scope="module")
def attacker():
    """A second local user in a lab group, created for these tests (and removed after them)."""
    if os.getuid() != 0:
        _skip_outside_ci("needs root to create and act as a second local user")
    if not (shutil.which("useradd") and shutil.which("groupadd")):
        _skip_outside_ci("needs useradd and groupadd (Debian's passwd package) to create a second local user")
    undo = []
    if not _exists(grp.getgrnam, LAB):
        subprocess.run(["groupadd", LAB], check=True)
        undo.append(["groupdel", LAB])
    if not _exists(pwd.getpwnam, ATTACKER):
        subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "--gid", LAB, ATTACKER],
                       check=True)
        undo.insert(0, ["userdel", ATTACKER])
    yield User(ATTACKER, pwd.getpwnam(ATTACKER).pw_uid, grp.getgrnam(LAB).gr_gid)
    for command in undo:
        subprocess.run(command, check=False)


def _skip_outside_ci(reason: str) -> None:
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"CI is set, and it must play the second user: {reason}")
    pytest.skip(f"{reason} (allowed only outside CI)")


def _exists(lookup, name) -> bool:
    try:
        lookup(name)
    except KeyError:
        return False
    return True


def _become(user: User) -> None:
    os.setgroups([user.gid])
    os.setgid(user.gid)
    os.setuid(user.uid)
    os.umask(0o002)


def as_user(user: User, action, *args) -> dict:
    """``action(*args)`` in a process forked as ``user``: ``{"ok": result}`` or ``{"error": repr}``."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        outcome = {"error": "did not finish"}
        try:
            os.close(read_end)
            _become(user)
            outcome = {"ok": action(*args)}
        except BaseException as error:  # noqa: BLE001 - reported to the test
            outcome = {"error": repr(error)}
        finally:
            os.write(write_end, json.dumps(outcome, default=str).encode())
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as answer:
        data = answer.read()
    os.waitpid(pid, 0)
    return json.loads(data)


def start_as(user: User | None, action, *args) -> int:
    """``action(*args)`` in a process forked as ``user`` (None: this user), left running; its pid."""
    pid = os.fork()
    if pid == 0:
        try:
            if user is not None:
                _become(user)
            action(*args)
        finally:
            os._exit(0)
    return pid


def stop(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


# --- what the attacker runs ------------------------------------------------------------------


def fake_server(folder: str, record: str, answer_pid: int, silent_after_s: float = 2.0) -> None:
    """Listen on ``folder/server.sock`` with a pid record, as a job server would; record what
    arrives, write into every descriptor that arrives, answer ``forked`` with ``answer_pid``, then
    record whatever else the client sends (signals) until it has been quiet for a while."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, SOCKET)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    os.chmod(path, 0o777)
    listener.listen(16)
    Path(folder, PID_FILE).write_text(json.dumps({"pid": os.getpid()}))
    Path(record).touch()
    while True:
        conn, _ = listener.accept()
        data, fds, _, _ = socket.recv_fds(conn, 1 << 22, 8)
        _record(record, data, fds)
        for fd in fds:
            with contextlib.suppress(OSError):
                os.write(fd, ATTACKERS_MARK)
        if data:
            with contextlib.suppress(OSError):
                wire.send(conn, {"status": "forked", "pid": answer_pid})
        conn.settimeout(silent_after_s)
        with contextlib.suppress(OSError):
            while more := conn.recv(1 << 16):
                _record(record, more, [])
        conn.close()


def _record(record: str, data: bytes, fds: list[int]) -> None:
    with open(record, "a") as file:
        file.write(json.dumps({"bytes": len(data), "fds": len(fds), "text": data.decode(errors="replace")}) + "\n")


def received(record: Path) -> list[dict]:
    """What reached a fake server: one entry per chunk it read (a connection with nothing sent
    shows as 0 bytes)."""
    return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []


def nothing_delivered(record: Path) -> bool:
    return all(chunk["bytes"] == 0 and chunk["fds"] == 0 for chunk in received(record))


def listening(folder: Path) -> bool:
    return (folder / SOCKET).exists() and (folder / PID_FILE).exists()


# --- places ----------------------------------------------------------------------------------


@pytest.fixture
def lab(attacker):
    """A lab folder the group shares (setgid, 2775), in /tmp: pytest's own folders are closed to
    other users."""
    folder = Path(tempfile.mkdtemp(prefix="clipdrift-lab-", dir="/tmp"))
    os.chown(folder, 0, attacker.gid)
    os.chmod(folder, 0o2775)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def scratch(lab):
    """A sticky scratch folder anyone can write to (1777), like /tmp, to serve as TMPDIR."""
    folder = lab / "scratch"
    folder.mkdir()
    os.chmod(folder, 0o1777)
    return folder


@pytest.fixture
def home(tmp_path):
    """The victim's own files, which planted links point at."""
    folder = tmp_path / "home"
    folder.mkdir(mode=0o700)
    for name in ("notes.txt", "pid.txt", "lock.txt"):
        (folder / name).write_text(f"the victim's {name}\n")
    return folder


def files_of(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {path.name: (path.read_bytes(), path.stat().st_mtime_ns) for path in sorted(folder.iterdir())}


@pytest.fixture
def bystander():
    """An unrelated process of the victim's, in its own group: nobody may signal it."""
    process = subprocess.Popen(["sleep", "600"], start_new_session=True)
    yield process
    process.kill()
    process.wait()


@pytest.fixture
def servers():
    """Processes a test starts (fake servers, racers), stopped at its end."""
    started: list[int] = []
    yield started
    for pid in started:
        stop(pid)


def run_victims_job(place: Workdir, **env) -> dict:
    result = place.run(place.job("probe", JOB), env={"SECRET": SECRET, **env})
    assert result.returncode == 0, result.stderr
    assert ATTACKERS_MARK.decode() not in result.stdout + result.stderr
    seen = reported(result)
    assert seen["secret"] == SECRET  # the job ran with its own environment
    return seen


# --- a working directory others can write to ---------------------------------------------------


def test_a_study_folder_the_lab_can_write_runs_jobs_cold_and_nothing_planted_there_is_used(
        attacker, lab, home, bystander, servers):
    study = lab / "study"  # as a user with umask 002 makes it in a setgid lab folder
    (study / ".snakemake").mkdir(parents=True)
    for folder in (study, study / ".snakemake"):
        os.chmod(folder, 0o2775)
    theirs, record = lab / "theirs", lab / "record.jsonl"

    def plant():
        theirs.mkdir(mode=0o755)
        os.symlink(home / "notes.txt", theirs / "server.log")
        os.symlink(home / "pid.txt", theirs / "server.pid.4242")
        os.symlink(theirs, study / ".snakemake" / "clipdrift-warm")  # where the server used to live

    assert "ok" in as_user(attacker, plant)
    before, their_mode = files_of(home), theirs.stat().st_mode
    servers.append(start_as(attacker, fake_server, str(theirs), str(record), bystander.pid))
    assert wait_until(lambda: listening(theirs), 10)
    place = Workdir(study)
    seen = run_victims_job(place)
    assert seen["mode"] == "cold" and f"{study} is writable by its group (mode 2775)" in seen["detail"]
    assert "the job server is off" in seen["detail"]
    assert nothing_delivered(record) and not received(record)  # not even a connection
    assert files_of(home) == before and theirs.stat().st_mode == their_mode  # nothing chmod'ed
    assert alive(bystander.pid) and not place.state.exists()


def test_a_snakemake_folder_of_another_user_turns_the_server_off(attacker, lab):
    study = lab / "study"  # the user's own, closed to others; its .snakemake is not
    study.mkdir()
    os.chmod(study, 0o777)
    assert "ok" in as_user(attacker, os.mkdir, str(study / ".snakemake"), 0o777)
    os.chmod(study, 0o755)
    seen = run_victims_job(Workdir(study))
    assert seen["mode"] == "cold" and f"{study / '.snakemake'} belongs to uid {attacker.uid}" in seen["detail"]


# --- the server's folder ---------------------------------------------------------------------


@pytest.mark.parametrize("planted", ["link", "folder"])
def test_a_server_folder_another_user_planted_is_refused_not_used_or_changed(
        attacker, lab, scratch, bystander, servers, tmp_path, planted):
    place = Workdir(tmp_path / "study", env={**ELSEWHERE, "TMPDIR": str(scratch)})
    users_folder = place.state.parent  # scratch/clipdrift-warm-0: the attacker gets there first
    theirs, record = lab / "theirs", lab / "record.jsonl"

    def plant():
        (theirs / place.state.name).mkdir(parents=True, mode=0o777)
        os.chmod(theirs / place.state.name, 0o777)
        if planted == "link":
            os.symlink(theirs, users_folder)
        else:
            os.rename(theirs, users_folder)

    assert "ok" in as_user(attacker, plant)
    served = (theirs if planted == "link" else users_folder) / place.state.name
    servers.append(start_as(attacker, fake_server, str(served), str(record), bystander.pid))
    assert wait_until(lambda: listening(served), 10)
    seen = run_victims_job(place)
    expected = "is a link or a file, not a folder" if planted == "link" else f"belongs to uid {attacker.uid}"
    assert seen["mode"] == "cold" and f"{users_folder} {expected}" in seen["detail"], seen["detail"]
    assert nothing_delivered(record) and not received(record)
    assert stat.S_IMODE(served.stat().st_mode) == 0o777  # refused, never chmod'ed
    assert alive(bystander.pid)


def test_the_client_sends_nothing_to_a_server_of_another_user(attacker, lab, bystander, servers):
    theirs, record = lab / "theirs", lab / "record.jsonl"
    servers.append(start_as(attacker, fake_server, str(theirs), str(record), bystander.pid))
    assert wait_until(lambda: listening(theirs), 10)
    folder = StateFolder(os.open(theirs, os.O_RDONLY | os.O_DIRECTORY), theirs)  # as if it had passed every check
    with folder, pytest.raises(WarmUnavailable, match=f"served by uid {attacker.uid}, not by this user; nothing was"):
        connect.try_connect(folder)
    assert wait_until(lambda: received(record), 5) and nothing_delivered(record)


def test_links_in_the_server_folder_are_never_followed(attacker, lab, home, bystander, servers, tmp_path):
    place = Workdir(tmp_path / "study")
    open_state_folder(place.root, place.env).close()
    outcome = as_user(attacker, os.symlink, str(home / "notes.txt"), str(place.state / "server.log"))
    assert "PermissionError" in outcome["error"]  # another user cannot plant anything there
    # what links there would do, had they come from anywhere: each points into the victim's home,
    # the socket at the attacker's server
    theirs, record = lab / "theirs", lab / "record.jsonl"
    servers.append(start_as(attacker, fake_server, str(theirs), str(record), bystander.pid))
    assert wait_until(lambda: listening(theirs), 10)
    for name, target in {"server.log": "notes.txt", "server.pid": "pid.txt", "start.lock": "lock.txt"}.items():
        os.symlink(home / target, place.state / name)
    os.symlink(theirs / SOCKET, place.state / SOCKET)
    before = files_of(home)
    seen = run_victims_job(place)
    assert seen["mode"] == "cold" and f"served by uid {attacker.uid}" in seen["detail"]
    assert wait_until(lambda: received(record), 5) and nothing_delivered(record)
    (place.state / SOCKET).unlink()  # what the reason tells the user to do
    try:
        assert run_victims_job(place)["mode"] == "warm"
    finally:
        place.stop_servers()
    assert files_of(home) == before and alive(bystander.pid)
    for name in ("server.log", "start.lock"):
        assert stat.S_ISREG((place.state / name).lstat().st_mode)  # the links were replaced by files


def test_files_are_written_beside_a_planted_link_or_fifo_never_through_it(home, tmp_path):
    before = files_of(home)
    with open_state_folder(tmp_path / "study", {**ELSEWHERE, "TMPDIR": str(tmp_path)}) as folder:
        os.symlink(home / "pid.txt", folder.path / f"server.pid.{os.getpid()}")  # the pid record's temporary name
        folder.write_text("server.pid", '{"pid": 1}')
        os.mkfifo(folder.path / "server.log")  # would block a writer that follows it
        os.close(folder.open_file("server.log", os.O_WRONLY | os.O_APPEND))
        assert (folder.path / "server.pid").read_text() == '{"pid": 1}'
        assert stat.S_ISREG((folder.path / "server.log").lstat().st_mode)
        assert sorted(path.name for path in folder.path.iterdir()) == ["server.log", "server.pid"]
    assert files_of(home) == before


def test_a_server_folder_swapped_after_its_check_is_still_the_one_used(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with open_state_folder(tmp_path / "study", {**ELSEWHERE, "TMPDIR": str(tmp_path)}) as folder:
        moved = folder.path.with_name("moved")
        os.rename(folder.path, moved)
        os.symlink(elsewhere, folder.path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(folder.at(SOCKET))
        listener.close()
        folder.write_text(PID_FILE, "{}")
    assert sorted(path.name for path in moved.iterdir()) == [PID_FILE, SOCKET] and not any(elsewhere.iterdir())


def test_another_users_connection_to_the_server_is_dropped_unread(attacker, tmp_path):
    place = Workdir(tmp_path / "study")
    try:
        assert run_victims_job(place)["mode"] == "warm"
        os.chmod(place.state, 0o711)  # let the other user reach the socket at all
        os.chmod(place.state / SOCKET, 0o777)
        folder = os.open(place.state, os.O_RDONLY)  # reached as root: its parents are 0700

        def knock():
            os.fchdir(folder)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(SOCKET)
            wire.send(sock, {"fingerprint": "x"})
            return repr(wire.receive(sock)[0])

        outcome = as_user(attacker, knock)
        os.close(folder)
        assert outcome.get("ok") == "None" or "ConnectionResetError" in outcome.get("error", "") \
        or "BrokenPipeError" in outcome.get("error", ""), outcome  # dropped unread
        assert f"refused a connection from uid {attacker.uid}" in place.log()
    finally:
        place.stop_servers()


# --- deadlines -------------------------------------------------------------------------------


def test_a_held_start_lock_or_a_silent_server_costs_a_job_its_deadline_and_no_more(attacker, tmp_path):
    place = Workdir(tmp_path / "study")
    with open_state_folder(place.root, place.env) as folder:
        lock = folder.open_file("start.lock", os.O_RDWR)
    assert "PermissionError" in as_user(attacker, open, str(place.state / "start.lock"), "a")["error"]
    fcntl.flock(lock, fcntl.LOCK_EX)  # a job of this user stuck while starting a server
    started = time.monotonic()
    seen = run_victims_job(place, **{START_TIMEOUT_ENV: "2"})
    assert seen["mode"] == "cold" and "held the job server's start lock for 2 s" in seen["detail"]
    assert time.monotonic() - started < 30
    os.close(lock)
    try:
        server = run_victims_job(place)["ppid"]
        os.kill(server, signal.SIGSTOP)  # takes connections (the kernel does), answers nothing
        try:
            started = time.monotonic()
            seen = run_victims_job(place, **{REPLY_TIMEOUT_ENV: "2"})
            assert seen["mode"] == "cold" and "did not answer within 2 s" in seen["detail"]
            assert time.monotonic() - started < 30
        finally:
            os.kill(server, signal.SIGCONT)
        # the job it missed is not run a second time: the server drops it, its client gone
        assert wait_until(lambda: "dropped a job of rule probe: its client has gone" in place.log(), 10)
        assert run_victims_job(place)["ppid"] == server
    finally:
        place.stop_servers()


# --- a race ----------------------------------------------------------------------------------


def race_for(target: str, theirs: str, seconds: float) -> None:
    """Put the attacker's folder at ``target`` and take it away, as a link and as itself, as fast
    as it can."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for move in (lambda: os.symlink(theirs, target), lambda: os.unlink(target),
                     lambda: os.rename(theirs, target), lambda: os.rename(target, theirs)):
            with contextlib.suppress(OSError):
                move()


def test_a_race_for_the_server_folder_never_delivers_a_job_to_another_user(
        attacker, lab, scratch, bystander, servers, tmp_path):
    place = Workdir(tmp_path / "study", env={**ELSEWHERE, "TMPDIR": str(scratch)})
    users_folder, theirs, record = place.state.parent, lab / "theirs", lab / "record.jsonl"
    servers.append(start_as(attacker, fake_server, str(theirs / place.state.name), str(record), bystander.pid))
    assert wait_until(lambda: listening(theirs / place.state.name), 10)
    racer = start_as(attacker, race_for, str(users_folder), str(theirs), 60.0)
    servers.append(racer)
    modes = []
    for _ in range(8):  # each job finds the name free: the victim's folder is removed before it
        place.stop_servers()
        with contextlib.suppress(FileNotFoundError):
            info = users_folder.lstat()
            if stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid():
                shutil.rmtree(users_folder)
        modes.append(run_victims_job(place)["mode"])
    place.stop_servers()
    os.kill(racer, signal.SIGKILL)
    assert nothing_delivered(record) and not received(record), received(record)
    assert alive(bystander.pid) and set(modes) <= {"warm", "cold"}
    print(f"jobs while racing: {modes.count('warm')} warm, {modes.count('cold')} cold (the attacker's folder was there)")


# --- what a client is told -------------------------------------------------------------------


def test_the_client_signals_through_its_server_never_a_pid_it_was_told(bystander, servers, tmp_path):
    place = Workdir(tmp_path / "study")
    open_state_folder(place.root, place.env).close()
    record = tmp_path / "record.jsonl"
    # a server of this very user that lies: it names the bystander as the job's process
    servers.append(start_as(None, fake_server, str(place.state), str(record), bystander.pid, 3.0))
    assert wait_until(lambda: listening(place.state), 10)
    job = place.start(place.job("probe", JOB), env={"SECRET": SECRET})
    assert wait_until(lambda: any(chunk["bytes"] for chunk in received(record)), 30)
    job.send_signal(signal.SIGTERM)
    _, stderr = job.communicate(timeout=60)
    assert job.returncode == 1 and "went away or stopped answering" in stderr  # the job failed, nothing else
    assert any('"signal": 15' in chunk["text"] for chunk in received(record))  # the signal went to the server
    assert alive(bystander.pid)


def test_a_run_in_a_folder_the_group_can_write_says_once_that_its_jobs_run_cold(tmp_path):
    study = tmp_path / "study"
    study.mkdir()
    os.chmod(study, 0o2775)
    target = "results/test/data/world-eurosat/manifest.json"
    result = snakemake(study, target, "--cores", "1", f"--configfile={REPO / 'configs/test.yaml'}")
    assert result.returncode == 0, result.stderr[-3000:]
    notice = f"clipdrift: every job runs cold: {study} is writable by its group (mode 2775)"
    assert result.stderr.count(notice) == 1, result.stderr[-3000:]
    log = (study / "results/test/logs/data/world-eurosat.log").read_text()
    assert log.splitlines()[0].endswith(f"cold job: {study} is writable by its group (mode 2775): Snakemake runs the code "
                                        "it generates from there, and a job server would too, so the job server is off; "
                                        "a folder only you can write to (chmod go-w) runs jobs warm")
