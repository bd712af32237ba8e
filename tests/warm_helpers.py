"""Running job scripts through the warm job server from tests: a working directory, job scripts
that report how they started, and the server's folder."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from clipdrift.pipeline.jobs.warm.state import LOG_FILE, PID_FILE, location

from workflow_helpers import default_sigint, server_pids, wait_until

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "clipdrift"
# A server left by a failed test exits on its own soon; tests stop theirs at the end anyway.
TEST_ENV = {"CLIPDRIFT_WARM_IDLE": "60", "PYTHONUNBUFFERED": "1"}

JOB = """\
import json, os, sys, time
from types import SimpleNamespace

snakemake = globals().get("snakemake") or SimpleNamespace(config={config}, rule={rule!r})

from clipdrift.pipeline.jobs.warm.client import hand_over, job_start

hand_over(snakemake)

"""


def write_job(folder: Path, name: str, body: str, config: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.py"
    path.write_text(JOB.format(config=config or {}, rule=name) + textwrap.dedent(body))
    return path


def report(fields: str = "") -> str:
    """Job body: print how it started, where it runs and what it was given, as one JSON line."""
    return ("start = job_start()\n"
            "umask = os.umask(0); os.umask(umask)\n"
            "print(json.dumps({'mode': start.mode, 'detail': start.detail, 'pid': os.getpid(), 'ppid': os.getppid(),"
            " 'cwd': os.getcwd(), 'umask': umask, 'argv': sys.argv, 'env': os.environ.get('PROBE'),"
            f" 'pgid': os.getpgid(0){fields}}}), flush=True)\n")


class Workdir:
    """A working directory, its job scripts and the servers started there (stopped at the end)."""

    def __init__(self, root: Path, env: dict | None = None):
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.scripts = root / "scripts"
        self.env = {**os.environ, **TEST_ENV, **(env or {})}
        self.state = location(root, self.env)  # the server's folder

    def job(self, name: str, body: str, config: dict | None = None) -> Path:
        return write_job(self.scripts, name, body, config)

    def run(self, script: Path, env: dict | None = None, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(script)], cwd=self.root, env={**self.env, **(env or {})},
                              capture_output=True, text=True, timeout=timeout, **kwargs)

    def start(self, script: Path, env: dict | None = None) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(script)], cwd=self.root, env={**self.env, **(env or {})},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)

    def server(self) -> dict | None:
        try:
            return json.loads((self.state / PID_FILE).read_text())
        except (OSError, ValueError):
            return None

    def log(self) -> str:
        path = self.state / LOG_FILE
        return path.read_text() if path.exists() else ""

    def stop_servers(self) -> None:
        for pid in server_pids(self.root):
            os.kill(pid, signal.SIGTERM)
        assert wait_until(lambda: not server_pids(self.root), 15), self.log()


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def reported(result) -> dict:
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert lines, result.stdout + result.stderr
    return json.loads(lines[-1])
