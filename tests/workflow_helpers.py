"""Running the real workflow from tests: snakemake as a subprocess in a scratch directory."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def default_sigint() -> None:
    """``preexec_fn`` for a process a test interrupts: SIGINT back to its default. A suite started
    with SIGINT ignored (``nohup``, or ``&`` in a non-interactive shell) passes that to every
    process it starts (exec keeps an ignored signal), and Ctrl-C would then do nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def snakemake(workdir: Path, *args: str, env: dict | None = None, timeout: int = 1800) -> subprocess.CompletedProcess:
    """Run ``snakemake`` on the repository's Snakefile with ``workdir`` as working directory."""
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
               "--directory", str(workdir), *args]
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=full_env)


def planned_jobs(result: subprocess.CompletedProcess) -> dict[str, int]:
    """Jobs per rule from a dry run's "Job stats" table ({} when nothing is to be done)."""
    assert result.returncode == 0, result.stderr + result.stdout
    text = result.stdout + result.stderr
    if "Nothing to be done" in text:
        return {}
    table = text.split("Job stats:", 1)[1]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)\s*$", table, flags=re.MULTILINE))
    counts.pop("total", None)
    return {rule: int(n) for rule, n in counts.items()}


def server_pids(under: Path) -> list[int]:
    """Pids of running warm job servers whose working directory is ``under`` or below it."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            cwd = Path(os.readlink(entry / "cwd"))
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if b"clipdrift.pipeline.jobs.warm.server" in argv and state != "Z" and cwd.is_relative_to(under.resolve()):
            found.append(int(entry.name))
    return found


def wait_until(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return bool(condition())


def require_slurm() -> None:
    """Skip without a SLURM cluster that answers; on CI, fail instead (.ci/run starts one)."""
    import shutil

    import pytest

    if shutil.which("sinfo") is None or subprocess.run(["sinfo", "-h"], capture_output=True).returncode:
        if os.environ.get("CI"):
            pytest.fail("CI must provide a SLURM cluster (.ci/run starts one)")
        pytest.skip("no SLURM cluster here (.ci/start-slurm.sh starts one)")
