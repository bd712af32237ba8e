"""How fast a job starts, warm and cold, through Snakemake on an otherwise idle machine.

Runs the test study once in a scratch directory (for its inputs), then reruns its zero-shot
scoring jobs (``--force`` on their outputs, ``--cores 1``: one job at a time, nothing else
running) with the warm job server and with every job a fresh process (``CLIPDRIFT_WARM=0``),
and prints each job's start-up from the account it keeps of itself: from the start of the
process Snakemake started (Snakemake's script preamble included) to the first line of the
script's ``main``, split into the preamble, the hand-over to the server (to its child's first
line) and the script's own imports. The first warm job of a run starts the server and waits
for its imports; it is shown apart. Targets: a warm job starts in <= 0.2 s (median) and <= 0.5 s
(max). The server's own account of what its check of the imported files costs per job is
printed from its log.

    python benchmarks/bench_warm.py                    # scratch study in /tmp/clipdrift-bench-warm
    python benchmarks/bench_warm.py --repeats 3        # three runs per mode
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from clipdrift.pipeline.jobs.warm.state import LOG_FILE, location

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "test.yaml"
STUDY = Path("results/test")
TARGET_MEDIAN_S, TARGET_S = 0.2, 0.5
PARTS = ["startup_s", "preamble_s", "hand_over_s", "script_imports_s"]


def snakemake(workdir: Path, *args: str, env: dict | None = None) -> None:
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
               "--configfile", str(CONFIG), "--quiet", "all", *args]
    subprocess.run(command, check=True, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL)


def scoring_jobs(workdir: Path) -> list[Path]:
    """The per-run zero-shot outputs (relative to the working directory)."""
    return sorted(path.relative_to(workdir) for path in (workdir / STUDY / "zeroshot").glob("*/*/*/*.json"))


def starts(workdir: Path, outputs: list[Path], mode: str) -> pd.DataFrame:
    snakemake(workdir, "--cores", "1", "--force", *map(str, outputs), env={"CLIPDRIFT_WARM": "0"} if mode == "cold" else {})
    rows = []
    for output in outputs:
        usage = workdir / STUDY / "benchmarks" / output.relative_to(STUDY).with_suffix(".usage.json")
        rows.append(json.loads(usage.read_text()))
    frame = pd.DataFrame(rows)
    frame["first"] = frame["detail"].str.endswith("its job 1)")  # this job waited for the server to start
    return frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/clipdrift-bench-warm"))
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    if not (args.workdir / STUDY / "report/index.html").exists():
        snakemake(args.workdir, "--cores", "2")
    outputs = scoring_jobs(args.workdir)
    runs = {mode: pd.concat([starts(args.workdir, outputs, mode) for _ in range(args.repeats)], ignore_index=True)
            for mode in ("warm", "cold")}
    warm, cold = runs["warm"], runs["cold"]
    steady = warm[(warm["mode"] == "warm") & ~warm["first"]]
    print(f"{len(outputs)} zero-shot scoring jobs x {args.repeats} runs per mode, one job at a time, load "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    summary = pd.DataFrame({
        "warm (server running)": steady[PARTS].median(),
        "warm, max": steady[PARTS].max(),
        "warm (first job: starts the server)": warm[warm["first"]][PARTS].median(),
        "cold": cold[PARTS].median(),
    }).T.round(3)
    print(summary.to_string())
    warm_median, cold_median = steady["startup_s"].median(), cold["startup_s"].median()
    met = warm_median <= TARGET_MEDIAN_S and steady["startup_s"].max() <= TARGET_S
    print(f"\nwarm start-up: median {warm_median:.3f} s, max {steady['startup_s'].max():.3f} s over {len(steady)} jobs "
          f"(target: median <= {TARGET_MEDIAN_S} s, max <= {TARGET_S} s: {'met' if met else 'NOT met'}); "
          f"cold: median {cold_median:.2f} s ({cold_median / warm_median:.0f}x)")
    print(f"compute of the same jobs: warm median {steady['compute_s'].median():.2f} s, "
          f"cold {cold['compute_s'].median():.2f} s")
    checks = [line for line in (location(args.workdir) / LOG_FILE).read_text().splitlines() if "imported files" in line]
    print(f"the server's check of its imported files, as it measured it: {checks[-1].split('; ')[-1] if checks else '?'}")


if __name__ == "__main__":
    main()
