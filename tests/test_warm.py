"""The warm job server: jobs forked from a server that holds the imports, with the same streams,
status, signals and environment as a cold job; never old code; a server that cleans up after
itself; and cold jobs whenever it cannot or must not run.

Each test runs job scripts as Snakemake would (``python script.py`` in a working directory) on a
tiny preload (the scripts import only the standard library), except the last ones, which preload
the workflow's real stack.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clipdrift.pipeline.codedigest import script_closure
from clipdrift.pipeline.jobs.warm import client, freshness, stack, wire
from clipdrift.pipeline.jobs.warm.state import LOG_FILE, PID_FILE, SOCKET

from warm_helpers import PACKAGE, REPO, Workdir, alive, report, reported
from workflow_helpers import default_sigint, server_pids, wait_until


@pytest.fixture
def workdir(tmp_path):
    place = Workdir(tmp_path)
    yield place
    place.stop_servers()


# --- a job in a child -----------------------------------------------------------------------


def test_a_job_runs_in_a_child_of_the_server_with_the_clients_streams_and_status(workdir):
    script = workdir.job("probe", report() + "print('to stderr', file=sys.stderr)\nsys.exit(3)\n")
    result = workdir.run(script, env={"PROBE": "from the client"}, preexec_fn=lambda: os.umask(0o027))
    assert result.returncode == 3, result.stderr
    seen = reported(result)
    assert seen["mode"] == "warm" and seen["ppid"] == workdir.server()["pid"]
    assert seen["cwd"] == str(workdir.root) and seen["umask"] == 0o027 and seen["env"] == "from the client"
    assert seen["argv"] == [str(script)] and seen["pgid"] == seen["pid"]  # its own group: signals reach its tree
    assert "to stderr" in result.stderr
    second = reported(workdir.run(script))
    assert second["mode"] == "warm" and second["ppid"] == seen["ppid"] and second["pid"] != seen["pid"]


def test_an_uncaught_exception_fails_the_job_as_python_reports_it(workdir):
    result = workdir.run(workdir.job("boom", "raise ValueError('boom')\n"))
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr and "ValueError: boom" in result.stderr
    assert "warm" in reported(workdir.run(workdir.job("after", report())))["mode"]


@pytest.mark.parametrize(("setting", "config", "expected"), [
    ({"CLIPDRIFT_WARM": "0"}, {}, "CLIPDRIFT_WARM=0"),
    ({"CLIPDRIFT_WARM": "off"}, {}, "CLIPDRIFT_WARM=off"),
    ({}, {"warm": False}, "warm: false"),
    ({"SLURM_JOB_ID": "4242"}, {}, "SLURM job 4242"),
])
def test_cold_when_switched_off_or_under_slurm_with_the_reason(workdir, setting, config, expected):
    result = workdir.run(workdir.job("cold", report(), config=config), env=setting)
    seen = reported(result)
    assert seen["mode"] == "cold" and expected in seen["detail"]
    assert not (workdir.state / SOCKET).exists() and not server_pids(workdir.root)


class Job:
    config = {}


def test_cold_off_linux_in_a_container_for_a_cluster_job_and_for_a_script_that_is_not_a_local_file(monkeypatch):
    monkeypatch.setattr(client, "_script_path", lambda: __file__)
    assert client.cold_reason(Job(), {}, "linux") is None
    assert "Linux only" in client.cold_reason(Job(), {}, "darwin")
    assert "container (/img.sif)" in client.cold_reason(Job(), {"APPTAINER_CONTAINER": "/img.sif"}, "linux")
    remote = wire.Workflow(1, 1, ("python", "-m", "snakemake", "--mode", "remote", "--target-jobs", "x"))
    monkeypatch.setattr(client, "workflow_process", lambda: remote)
    assert "cluster job (snakemake --mode remote)" in client.cold_reason(Job(), {}, "linux")
    monkeypatch.setattr(client, "workflow_process", lambda: None)
    monkeypatch.setattr(client, "_script_path", lambda: "https://example.org/script.py")
    assert "not a local file" in client.cold_reason(Job(), {}, "linux")


def test_the_workflow_mode_is_read_from_snakemakes_arguments():
    assert wire.Workflow(1, 1, ("snakemake", "--cores", "2")).mode == "default"
    assert wire.Workflow(1, 1, ("snakemake", "--mode=remote")).mode == "remote"
    assert wire._runs_snakemake(["/usr/bin/python3", "/venv/bin/snakemake", "--cores", "2"])
    assert wire._runs_snakemake(["python3", "-m", "snakemake"]) and not wire._runs_snakemake(["bash", "-c", "x"])


# --- never old code -------------------------------------------------------------------------


def test_an_edited_package_starts_a_fresh_server_and_the_job_sees_the_new_code(workdir, tmp_path):
    source = tmp_path / "src"
    shutil.copytree(PACKAGE, source / "clipdrift", ignore=shutil.ignore_patterns("__pycache__"))
    errors = source / "clipdrift" / "core/errors.py"
    errors.write_text(errors.read_text() + "\n\ndef probe():\n    return 'first'\n")
    env = {"PYTHONPATH": str(source)}
    script = workdir.job("edited", report(", 'probe': __import__('clipdrift.core.errors').core.errors.probe(),"
                                          " 'package': __import__('clipdrift').__file__"))
    first = reported(workdir.run(script, env=env))
    assert first["mode"] == "warm" and first["probe"] == "first" and first["package"].startswith(str(source))
    errors.write_text(errors.read_text().replace("'first'", "'second'"))
    second = reported(workdir.run(script, env=env))
    assert second["mode"] == "warm" and second["probe"] == "second"
    assert second["ppid"] != first["ppid"]  # a fresh server for the new fingerprint
    assert wait_until(lambda: not alive(first["ppid"]), 10), "the old server must exit"


def user_site(userbase: Path) -> Path:
    """Where ``pip install --user`` puts packages with PYTHONUSERBASE=userbase."""
    return userbase / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


def test_edited_code_outside_the_package_reaches_the_next_job(workdir, tmp_path):
    # a module on PYTHONPATH and a package installed in the user's site folder, both imported by
    # the job's script (so preloaded by the server), each edited in place between two jobs
    modules, userbase = tmp_path / "modules", tmp_path / "userbase"
    modules.mkdir()
    helper = modules / "helper.py"
    helper.write_text("VALUE = 'first'\n")
    installed = user_site(userbase) / "installedpkg"
    installed.mkdir(parents=True)
    (installed / "__init__.py").write_text("VALUE = 'first'\n")
    (user_site(userbase) / "installedpkg-1.0.dist-info").mkdir()
    env = {"PYTHONPATH": str(modules), "PYTHONUSERBASE": str(userbase)}
    script = workdir.job("outside", "import helper, installedpkg\n"
                         + report(", 'helper': helper.VALUE, 'installed': installedpkg.VALUE"))
    first = reported(workdir.run(script, env=env))
    assert (first["mode"], first["helper"], first["installed"]) == ("warm", "first", "first"), first
    for edited, key in ((helper, "helper"), (installed / "__init__.py", "installed")):
        edited.write_text(edited.read_text().replace("first", "second"))
        seen = reported(workdir.run(script, env=env))
        assert seen["mode"] == "warm" and seen[key] == "second", (key, seen)
    assert workdir.log().count("imported files changed since the imports") == 2
    assert reported(workdir.run(script, env=env))["ppid"] == seen["ppid"]  # unchanged: the same server


FINGERPRINT = "from clipdrift.pipeline.jobs.warm.freshness import fingerprint; print(fingerprint())"


def test_the_fingerprint_holds_the_files_python_runs_at_start_up(tmp_path):
    site_dir = user_site(tmp_path)
    site_dir.mkdir(parents=True)

    def fingerprint() -> str:
        return subprocess.run([sys.executable, "-c", FINGERPRINT], env={**os.environ, "PYTHONUSERBASE": str(tmp_path)},
                              capture_output=True, text=True, check=True).stdout.strip()

    seen = [fingerprint()]
    for name, contents in (("extra.pth", ("import os\n", "import sys\n")),
                           ("usercustomize.py", ("X = 1\n", "X = 2\n"))):
        for content in contents:  # a new file, then the same file edited in place
            (site_dir / name).write_text(content)
            seen.append(fingerprint())
    assert len(set(seen)) == len(seen), seen


def test_a_warm_child_holds_its_own_environment_and_no_other_jobs(workdir):
    script = workdir.job("secret", report(", 'secret': os.environ.get('SECRET'),"
                                          " 'proc': open('/proc/self/environ', 'rb').read().decode(errors='replace')"))
    first = reported(workdir.run(script, env={"SECRET": "the first job's token"}))  # this job starts the server
    second = reported(workdir.run(script, env={"SECRET": "the second job's token"}))
    assert first["mode"] == second["mode"] == "warm" and second["ppid"] == first["ppid"]
    assert second["secret"] == "the second job's token"
    # the kernel's copy of the environment is the server's: minimal, holding no job's own settings
    server_environ = Path(f"/proc/{second['ppid']}/environ").read_bytes().decode(errors="replace")
    for shown in (second["proc"], server_environ):
        assert "SECRET" not in shown and "PATH=" in shown


def test_the_fingerprint_follows_the_environment_not_the_jobs_thread_count(monkeypatch):
    base = freshness.fingerprint({"PATH": "/bin"})
    assert freshness.fingerprint({"PATH": "/bin", "OMP_NUM_THREADS": "4", "MKL_NUM_THREADS": "4"}) == base
    assert freshness.fingerprint({"PATH": "/bin", "HF_HUB_OFFLINE": "1"}) != base
    assert freshness.fingerprint({"PATH": "/bin", "PYTHONHASHSEED": "0"}) != base


def test_the_readme_command_shows_where_the_server_keeps_its_files_and_its_pid(workdir):
    command = re.search(r"`(python -m clipdrift\.pipeline\.jobs\.warm)`", (REPO / "README.md").read_text()).group(1)

    def shown() -> str:
        path = f"{Path(sys.executable).parent}{os.pathsep}{workdir.env['PATH']}"  # `python` is this interpreter
        result = subprocess.run(["bash", "-c", command], cwd=workdir.root, env={**workdir.env, "PATH": path},
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert f"server folder: {workdir.state}\n" in shown() and "no server has run" in shown()
    server = reported(workdir.run(workdir.job("probe", report())))["ppid"]
    assert f"log: {workdir.state / LOG_FILE}\nrunning: pid {server} (fingerprint " in shown()
    workdir.stop_servers()
    assert "no server running" in shown()


# --- signals and crashes --------------------------------------------------------------------

SLEEPER = report() + "time.sleep(120)\n"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_client_ends_exactly_its_job_as_failed(workdir, signum):
    job = workdir.start(workdir.job("sleeper", SLEEPER))
    seen = json.loads(job.stdout.readline())
    assert seen["mode"] == "warm"
    job.send_signal(signum)
    job.wait(timeout=20)
    assert job.returncode == -signum  # as a cold Python process ends on that signal
    if signum == signal.SIGINT:
        assert "KeyboardInterrupt" in job.stderr.read()
    assert wait_until(lambda: not alive(seen["pid"]), 5)
    assert alive(seen["ppid"]) and reported(workdir.run(workdir.job("next", report())))["ppid"] == seen["ppid"]


BEFORE_THE_CHILD = """\
import os, signal, sys, time
from clipdrift.pipeline.jobs.warm.client import _Forwarding
signal.signal(signal.SIGUSR1, signal.SIG_IGN)
with _Forwarding():  # the job is being handed over; no child yet
    os.kill(os.getpid(), signal.SIGUSR1)  # ignored before: ignored now
    print("alive", flush=True)
    os.kill(os.getpid(), getattr(signal, sys.argv[1]))
    time.sleep(30)
print("not reached")
"""


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_a_signal_before_the_child_exists_does_what_it_would_do_without_a_server(name):
    result = subprocess.run([sys.executable, "-c", BEFORE_THE_CHILD, name], capture_output=True, text=True, timeout=30,
                            preexec_fn=default_sigint)
    assert result.returncode == -getattr(signal, name) and result.stdout == "alive\n", result.stderr
    assert ("KeyboardInterrupt" in result.stderr) == (name == "SIGINT")


def test_a_killed_client_takes_its_job_with_it_and_the_server_survives(workdir):
    job = workdir.start(workdir.job("sleeper", SLEEPER))
    seen = json.loads(job.stdout.readline())
    job.kill()
    job.wait(timeout=10)
    assert wait_until(lambda: not alive(seen["pid"]), 10), workdir.log()
    assert "its client is gone" in workdir.log()
    assert reported(workdir.run(workdir.job("next", report())))["ppid"] == seen["ppid"]


def test_a_child_killed_like_the_oom_killer_does_fails_its_job_and_the_server_survives(workdir):
    result = workdir.run(workdir.job("oom", report() + "os.kill(os.getpid(), 9)\n"))
    assert result.returncode == -signal.SIGKILL
    server_pid = reported(result)["ppid"]
    assert alive(server_pid) and reported(workdir.run(workdir.job("next", report())))["ppid"] == server_pid


# --- the server's lifetime and footprint ----------------------------------------------------


def test_a_stale_socket_and_pid_file_from_a_killed_server_are_replaced(workdir):
    workdir.state.mkdir(parents=True, mode=0o700)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(workdir.state / SOCKET))
    stale.close()  # the file stays, nothing listens: connecting is refused
    (workdir.state / PID_FILE).write_text(json.dumps({"pid": 999999, "ticks": 1, "fingerprint": "0" * 16}))
    seen = reported(workdir.run(workdir.job("fresh", report())))
    assert seen["mode"] == "warm" and workdir.server()["pid"] == seen["ppid"]


def test_the_server_is_detached_and_holds_no_descriptor_of_its_clients(workdir):
    started = time.monotonic()
    result = workdir.run(workdir.job("probe", report()))  # capture_output: a pipe the server must not hold
    assert time.monotonic() - started < 60 and reported(result)["mode"] == "warm"
    server_pid = reported(result)["ppid"]
    tty = int(Path(f"/proc/{server_pid}/stat").read_text().rsplit(")", 1)[1].split()[4])
    assert os.getsid(server_pid) != os.getsid(0) and tty == 0  # a session of its own, no controlling terminal
    targets = [os.readlink(f"/proc/{server_pid}/fd/{fd}") for fd in os.listdir(f"/proc/{server_pid}/fd")]
    assert not [target for target in targets if target.startswith("pipe:")], targets
    assert os.readlink(f"/proc/{server_pid}/fd/0") == os.devnull
    assert Path(os.readlink(f"/proc/{server_pid}/fd/2")) == (workdir.state / LOG_FILE).resolve()


def test_the_state_folder_is_private_to_its_user(workdir):
    reported(workdir.run(workdir.job("probe", report())))
    for folder in (workdir.state, workdir.state.parent):
        assert folder.stat().st_mode & 0o777 == 0o700 and folder.stat().st_uid == os.getuid()
    assert not (workdir.root / ".snakemake").exists()  # nothing of the server under the working directory


def test_the_server_exits_when_idle(workdir):
    seen = reported(workdir.run(workdir.job("probe", report()), env={"CLIPDRIFT_WARM_IDLE": "1"}))
    assert wait_until(lambda: not alive(seen["ppid"]), 10) and "idle for 1 s" in workdir.log()
    assert not (workdir.state / SOCKET).exists() and not (workdir.state / PID_FILE).exists()


def test_the_server_exits_once_the_workflow_it_served_has_ended(workdir):
    # the job's nearest ancestor running a program named "snakemake" is its workflow
    launcher = workdir.root / "bin" / "snakemake"
    launcher.parent.mkdir()
    job = workdir.job("probe", report())
    launcher.write_text(f"import subprocess, sys\nsubprocess.run([sys.executable, {str(job)!r}])\n")
    result = subprocess.run([sys.executable, str(launcher)], cwd=workdir.root, env=workdir.env, capture_output=True,
                            text=True, timeout=120)
    seen = reported(result)
    assert seen["mode"] == "warm"
    assert wait_until(lambda: not alive(seen["ppid"]), 10), workdir.log()
    assert "every workflow it served has ended" in workdir.log()


def test_concurrent_first_jobs_share_one_server(workdir):
    script = workdir.job("probe", report())
    jobs = [workdir.start(script) for _ in range(4)]
    seen = [json.loads(job.stdout.readline()) for job in jobs]
    for job in jobs:
        job.wait(timeout=60)
    assert {s["mode"] for s in seen} == {"warm"} and len({s["ppid"] for s in seen}) == 1


def test_a_server_that_cannot_start_leaves_the_job_cold_with_the_reason(workdir, tmp_path):
    source = tmp_path / "src"
    shutil.copytree(PACKAGE, source / "clipdrift", ignore=shutil.ignore_patterns("__pycache__"))
    broken = source / "clipdrift" / "pipeline" / "jobs" / "warm" / "server.py"
    future = "from __future__ import annotations\n"
    broken.write_text(broken.read_text().replace(future, future + "raise SystemExit('broken on purpose')\n"))
    seen = reported(workdir.run(workdir.job("probe", report()), env={"PYTHONPATH": str(source)}))
    assert seen["mode"] == "cold" and "exited while starting: broken on purpose" in seen["detail"]


def test_a_server_with_other_threads_refuses_to_fork_and_jobs_run_cold(workdir, tmp_path):
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "starts_a_thread.py").write_text(
        "import threading, time\nthreading.Thread(target=time.sleep, args=(600,), daemon=True).start()\n")
    script = workdir.job("threaded", report() + "import starts_a_thread\n")  # preloaded by the server
    seen = reported(workdir.run(script, env={"PYTHONPATH": str(modules)}))
    assert seen["mode"] == "cold" and "unsafe to fork" in seen["detail"] and "1 threads" in seen["detail"]
    assert "refusing every job" in workdir.log()


def test_a_server_that_refuses_every_job_exits_once_the_workflow_that_asked_has_ended(workdir, tmp_path):
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "starts_a_thread.py").write_text(
        "import threading, time\nthreading.Thread(target=time.sleep, args=(600,), daemon=True).start()\n")
    launcher = workdir.root / "bin" / "snakemake"  # the job's workflow, as in the test above
    launcher.parent.mkdir()
    job = workdir.job("threaded", report() + "import starts_a_thread\n")
    launcher.write_text(f"import subprocess, sys\nsubprocess.run([sys.executable, {str(job)!r}])\n")
    result = subprocess.run([sys.executable, str(launcher)], cwd=workdir.root, capture_output=True, text=True,
                            env={**workdir.env, "PYTHONPATH": str(modules)}, timeout=120)
    assert reported(result)["mode"] == "cold"
    assert wait_until(lambda: not server_pids(workdir.root), 10), workdir.log()  # long before idle (60 s)
    assert "refusing every job" in workdir.log() and "every workflow it served has ended" in workdir.log()


def test_fork_hazards_name_threads_and_cuda():
    code = ("import threading, time; from clipdrift.pipeline.jobs.warm.stack import fork_hazards;"
            "print(fork_hazards()); threading.Thread(target=time.sleep, args=(5,), name='extra', daemon=True).start();"
            "time.sleep(0.1); print(fork_hazards())")
    lines = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "OMP_NUM_THREADS": "1"}).stdout.splitlines()
    assert lines[0] == "[]" and "1 threads besides the main one" in lines[1] and "'extra'" in lines[1]


def test_fork_hazards_include_an_initialised_cuda(monkeypatch):
    class Cuda:
        @staticmethod
        def is_initialized():
            return True

    class Torch:
        cuda = Cuda

    monkeypatch.setitem(sys.modules, "torch", Torch)
    assert "CUDA is initialised" in stack.fork_hazards()


# --- the real stack -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_stack(tmp_path_factory):
    """A working directory whose scripts folder holds the workflow's scripts (so the server
    preloads the real stack) and a probe job."""
    place = Workdir(tmp_path_factory.mktemp("real"))
    place.scripts.mkdir()
    for script in (REPO / "workflow" / "scripts").glob("*.py"):
        shutil.copy(script, place.scripts)
    yield place
    place.stop_servers()


CHILD_STATE = """\
import threading
from pathlib import Path
tasks = sorted(Path(f'/proc/self/task/{t}/comm').read_text().strip() for t in os.listdir('/proc/self/task'))
loaded = sorted(name for name in sys.modules if name == 'clipdrift' or name.startswith('clipdrift.'))
torch = sys.modules.get('torch')
state = {'threads': len(tasks), 'timm': 'timm' in sys.modules, 'clipdrift': loaded, 'torch': torch is not None,
         'cuda_initialized': torch.cuda.is_initialized() if torch else None}
torch.set_num_threads(2)  # a 2-thread parallel region right after the fork
a = torch.randn(512, 512)
state['matmul'] = float((a @ a).sum()) == float((a @ a).sum())
print(json.dumps({'mode': job_start().mode, **state}), flush=True)
"""


def test_a_child_of_the_real_stack_starts_clean_and_runs_parallel_torch(real_stack):
    result = real_stack.run(real_stack.job("child_state", CHILD_STATE), timeout=300)
    seen = reported(result)
    assert seen["mode"] == "warm" and seen["torch"] and seen["matmul"], real_stack.log()
    assert seen["threads"] == 1 and not seen["cuda_initialized"] and not seen["timm"]
    # of the package, a child holds what the scripts reach (preloaded: the fingerprint covers
    # every byte of it) and the fork machinery; each job still runs what its script imports
    reached = set().union(*(script_closure(script) for script in (REPO / "workflow" / "scripts").glob("*.py")))
    held = {module_file(name) for name in seen["clipdrift"]}
    # beyond them: how the job runs (outside every digest by rule) and the digest code the
    # server derived its imports with; the server itself runs as __main__
    assert "pipeline/jobs/warm/child.py" in held - reached
    assert all(path.startswith("pipeline/jobs/") or path == "pipeline/codedigest.py" for path in held - reached), held
    assert {path for path in reached if path.endswith(".py")} <= held


IMPORT_TIME_OPS = """import importlib, json, sys
from pathlib import Path
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from clipdrift.pipeline.jobs.warm.stack import preload, preload_names

names = preload_names(Path(sys.argv[1]))
external = [name for name in names if not name.startswith("clipdrift")]
ops = {}

class Record(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        ops.setdefault(current, []).append(str(func))
        return func(*args, **(kwargs or {}))

with Record():
    for current in names:
        importlib.import_module(current)
print(json.dumps(ops))
"""


def test_the_packages_own_import_time_code_runs_no_tensor_operation(real_stack):
    # third-party imports make a few constant tensors (peft) and ask torchvision its CUDA version;
    # the package's modules, imported in the server before it forks, run none
    result = subprocess.run([sys.executable, "-c", IMPORT_TIME_OPS, str(real_stack.scripts)], capture_output=True,
                            text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    ops = json.loads(result.stdout.strip().splitlines()[-1])
    assert not {module: found for module, found in ops.items() if module.startswith("clipdrift")}, ops
    assert all("lift_fresh" in op or "_cuda_version" in op for found in ops.values() for op in found), ops


def module_file(name: str) -> str:
    """The package-relative file of a clipdrift module: clipdrift.core.io -> core/io.py."""
    parts = name.split(".")[1:]
    return "/".join([*parts, "__init__.py"]) if PACKAGE.joinpath(*parts).is_dir() else "/".join(parts) + ".py"


def test_the_server_preloads_what_the_scripts_import(real_stack):
    names = stack.preload_names(real_stack.scripts)
    assert {"torch", "pandas", "open_clip", "peft", "safetensors.torch", "snakemake.iocontainers"} <= set(names)
    assert {"clipdrift.train.engine", "clipdrift.measure.extract", "clipdrift.report.figures"} <= set(names)
    assert "timm" not in names and "clipdrift.pipeline.jobs.warm.server" not in names
