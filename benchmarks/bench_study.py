"""Time a whole study through Snakemake, warm and cold, and print where the time went and what it found.

Runs ``snakemake --cores N`` on a study config (the default synthetic study unless told) in a
scratch directory, once with the warm job server (``<workdir>/warm``) and once with every job
a fresh process (``CLIPDRIFT_WARM=0``, ``<workdir>/cold``), then reads the account every job
keeps of itself (``benchmarks/**/*.usage.json``: start-up from its process start to the first
line of ``main``, Snakemake's preamble included; compute; CPU; peak memory) and the study's
tables. Prints:

- per rule, warm and cold side by side: jobs, mean start-up and compute, summed job time;
- the job count, the wall-clock time of each study, its summed job time and the share of it
  spent starting up (the importing a job does before its ``main``), with the targets;
- the effect the synthetic world was built to show.

    python benchmarks/bench_study.py                           # default study, warm then cold, all cores
    python benchmarks/bench_study.py --modes warm               # the warm study only
    python benchmarks/bench_study.py --summarize /tmp/study     # studies that already ran there
    python benchmarks/bench_study.py --configfile configs/test.yaml --cores 2

Timings on a shared machine are inflated by whatever else runs: compare the printed CPU load.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
# The default study on 2 cores: 15 min wall, at most 5% of the summed job time starting up.
TARGETS = {"study_s": 900, "startup_share": 0.05, "pretrain_s": 180, "finetune_s": 10, "pretrained_zs": 0.60,
           "full_eurosat_acc": 0.90}
MODES = {"warm": {}, "cold": {"CLIPDRIFT_WARM": "0"}}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/clipdrift-bench-study"))
    parser.add_argument("--configfile", type=Path, help="a study preset layered over config.yaml")
    parser.add_argument("--cores", default="all")
    parser.add_argument("--modes", default="warm,cold", help="which studies to run: warm, cold or both (default)")
    parser.add_argument("--summarize", type=Path, metavar="WORKDIR", help="only summarize studies that already ran")
    return parser.parse_args()


def run_study(workdir: Path, mode: str, args) -> None:
    if workdir.exists() and any(workdir.iterdir()):
        sys.exit(f"{workdir} is not empty: pass an empty --workdir, or --summarize it")
    workdir.mkdir(parents=True, exist_ok=True)
    command = ["snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
               "--cores", str(args.cores), "--quiet", "rules"]
    if args.configfile:
        command += ["--configfile", str(args.configfile.resolve())]
    start = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, **MODES[mode]})
    wall_s = time.perf_counter() - start
    (workdir / "bench-study.json").write_text(json.dumps({"wall_s": wall_s, "load": os.getloadavg(),
                                                         "cores": args.cores}))


def study_dir(workdir: Path, configfile: Path | None) -> Path:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    if configfile:
        config.update(yaml.safe_load(configfile.read_text()))
    return workdir / config.get("results_dir", "results") / config["study"]


def job_usage(study: Path) -> pd.DataFrame:
    """One row per job: the account it wrote of itself (clipdrift.pipeline.jobs.runner.usage_record)."""
    rows = [json.loads(path.read_text()) for path in sorted((study / "benchmarks").rglob("*.usage.json"))]
    if not rows:
        sys.exit(f"no job accounts under {study / 'benchmarks'}: did the study run there?")
    return pd.DataFrame(rows)


def per_rule(jobs: pd.DataFrame) -> pd.DataFrame:
    return jobs.groupby("rule").agg(jobs=("s", "size"), startup_s=("startup_s", "mean"), compute_s=("compute_s", "mean"),
                                    total_s=("s", "sum"), max_rss_mb=("max_rss_mb", "max"))


def print_costs(usage: dict[str, pd.DataFrame], walls: dict[str, dict]) -> None:
    table = pd.concat({mode: per_rule(jobs) for mode, jobs in usage.items()}, axis=1)
    first = next(iter(usage))
    print(table.sort_values((first, "total_s"), ascending=False).round(2).to_string())
    print()
    for mode, jobs in usage.items():
        startup, total = jobs["startup_s"].sum(), jobs["s"].sum()
        share, target = startup / total, TARGETS["startup_share"]
        line = (f"{mode}: {len(jobs)} jobs ({', '.join(f'{m} {n}' for m, n in jobs['mode'].value_counts().items())}), "
                f"summed job time {total:.0f} s, of which starting up {startup:.0f} s ({share:.1%}; "
                f"target <= {target:.0%}: {'met' if share <= target else 'NOT met'})")
        if mode in walls:
            wall = walls[mode]
            line += (f"; whole study {wall['wall_s']:.0f} s wall on {wall['cores']} cores, load after "
                     f"{' '.join(f'{x:.1f}' for x in wall['load'])} (target <= {TARGETS['study_s']} s: "
                     f"{'met' if wall['wall_s'] <= TARGETS['study_s'] else 'NOT met'})")
        print(line)
        warm = jobs[jobs["mode"] == "warm"]
        if len(warm):
            parts = warm[["startup_s", "preamble_s", "hand_over_s", "script_imports_s"]].median()
            print(f"  warm start-up, median of {len(warm)} jobs: {parts['startup_s']:.2f} s = Snakemake's preamble "
                  f"{parts['preamble_s']:.2f} + hand-over {parts['hand_over_s']:.2f} + the script's imports "
                  f"{parts['script_imports_s']:.2f} (under load from the study's other jobs)")


def print_study(study: Path, jobs: pd.DataFrame) -> None:
    pretrain = study / "backbone/pretrain.json"  # only the synthetic world pretrains its backbone
    if pretrain.exists():
        print(f"pretraining: {json.loads(pretrain.read_text())['time_s']:.0f} s (target <= {TARGETS['pretrain_s']} s)")
    finetune = jobs.loc[jobs["rule"] == "finetune", "s"]
    print(f"fine-tune job: mean {finetune.mean():.1f} s, max {finetune.max():.1f} s (start-up included; "
          f"training alone: see train_time_s below; target <= {TARGETS['finetune_s']} s)")


def print_effect(study: Path) -> None:
    runs = pd.read_parquet(study / "tables/runs.parquet")
    primary = runs["zs_task"].iloc[0]  # the held-out task the run table's zs_* columns score
    for scored in sorted((study / "zeroshot/pretrained").glob("*.json")):
        top1 = json.loads(scored.read_text())["top1"]
        target = f" (target >= {TARGETS['pretrained_zs']:.0%})" if scored.stem == primary else ""
        print(f"{'' if scored.stem != primary else chr(10)}pretrained zero-shot top-1 on {scored.stem}: {top1:.1%}{target}")
    print(f"training time per run: mean {runs['train_time_s'].mean():.1f} s, max {runs['train_time_s'].max():.1f} s")
    cells = runs.groupby(["dataset", "method", "lr"])[["best_select_acc", "final_test_acc", "zs_top1",
                                                       "drift_entropy_pct"]].mean()
    cells = cells.sort_index(key=lambda level: level.map(float) if level.name == "lr" else level)
    print(cells.round(3).to_string())
    for dataset, table in cells.groupby(level="dataset"):
        lrs = sorted(table.index.get_level_values("lr").unique(), key=float)
        low, high = lrs[0], lrs[-1]
        gap = table.loc[(dataset, "lora", high), "zs_top1"] - table.loc[(dataset, "full", high), "zs_top1"]
        drift_low = table.loc[(dataset, "full", low), "drift_entropy_pct"]
        drift_high = table.loc[(dataset, "full", high), "drift_entropy_pct"]
        best_full = table.xs("full", level="method")["final_test_acc"].max()
        print(f"{dataset}: at lr {high} LoRA keeps {gap:+.1%} zero-shot vs Full FT; Full FT entropy drift "
              f"{drift_high:+.1f}% at {high} vs {drift_low:+.1f}% at {low} "
              f"({'below' if drift_high < drift_low else 'NOT below'}); best Full FT test accuracy {best_full:.1%}")
    for finding in json.loads((study / "tables/findings.json").read_text()):
        if finding["kind"] == "headline":
            print(f"\nreport headline: {finding['sentence']}")


def main() -> None:
    args = parse_args()
    modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    unknown = set(modes) - set(MODES)
    if unknown:
        sys.exit(f"--modes: {sorted(unknown)} unknown; use warm, cold or both")
    root = args.summarize or args.workdir
    if not args.summarize:
        for mode in modes:
            run_study(root / mode, mode, args)
    found = [mode for mode in modes if (root / mode).is_dir()]
    usage = {mode: job_usage(study_dir(root / mode, args.configfile)) for mode in found}
    walls = {mode: json.loads((root / mode / "bench-study.json").read_text())
             for mode in found if (root / mode / "bench-study.json").exists()}
    print_costs(usage, walls)
    study = study_dir(root / found[0], args.configfile)
    print_study(study, usage[found[0]])
    print_effect(study)


if __name__ == "__main__":
    main()
