"""Time a whole study through Snakemake and print where the time went and what it found.

Runs ``snakemake --cores N`` on a study config (the default synthetic study unless told) in a
scratch directory, then reads the per-job benchmark files every rule writes and the study's
tables. Prints:

- the job count, the wall-clock time of the whole study and the summed per-job time by stage;
- per rule, how long a fresh Python takes to import what that rule's script imports (measured:
  the script's own top-level imports in a new interpreter), and the share of all job time that
  is importing (the part of the study no science code can make faster);
- the effect the synthetic world was built to show, with the targets met or not.

    python benchmarks/bench_study.py                          # default study, all cores
    python benchmarks/bench_study.py --summarize /tmp/study    # a study that already ran there
    python benchmarks/bench_study.py --configfile configs/test.yaml --cores 2

Timings on a shared machine are inflated by whatever else runs: compare the printed CPU load.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

from clipdrift.plan import rule_scripts

REPO = Path(__file__).resolve().parents[1]
# The default study on 2 cores: 15 min wall (the per-job start-up floor makes 10 min unreachable).
TARGETS = {"study_s": 900, "pretrain_s": 180, "finetune_s": 10, "pretrained_zs": 0.60, "full_eurosat_acc": 0.90}
# benchmark file (relative to the study's benchmarks/) -> the rule that wrote it
BENCHMARK_RULES = (("backbone.tsv", "pretrain_backbone"), ("data/", "prepare_task"), ("finetune/", "finetune"),
                   ("references/", "probe_reference"), ("extract/", "extract"), ("curves/", "curves"),
                   ("zeroshot/classifier.tsv", "zeroshot_classifier"),
                   ("zeroshot/pretrained-indomain/", "zeroshot_pretrained_indomain"), ("zeroshot/", "zeroshot"),
                   ("aggregate.tsv", "aggregate"), ("report.tsv", "report"))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/clipdrift-bench-study"))
    parser.add_argument("--configfile", type=Path, help="a study preset layered over config.yaml")
    parser.add_argument("--cores", default="all")
    parser.add_argument("--summarize", type=Path, metavar="WORKDIR", help="only summarize a study that already ran")
    return parser.parse_args()


def run_study(args) -> float:
    if args.workdir.exists() and any(args.workdir.iterdir()):
        sys.exit(f"{args.workdir} is not empty: pass an empty --workdir, or --summarize it")
    args.workdir.mkdir(parents=True, exist_ok=True)
    command = ["snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(args.workdir),
               "--cores", str(args.cores), "--quiet", "rules"]
    if args.configfile:
        command += ["--configfile", str(args.configfile.resolve())]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - start


def study_dir(workdir: Path, configfile: Path | None) -> Path:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    if configfile:
        config.update(yaml.safe_load(configfile.read_text()))
    return workdir / config.get("results_dir", "results") / config["study"]


def _rule_of(benchmark: Path) -> str:
    """The rule that wrote a benchmark file, from the layout of the rules' ``benchmark:`` paths."""
    name = benchmark.as_posix()
    return next(rule for prefix, rule in BENCHMARK_RULES if name == prefix or name.startswith(prefix))


def job_times(study: Path) -> pd.DataFrame:
    """One row per job from Snakemake's ``benchmark:`` files (``benchmarks/<rule>/...tsv``)."""
    rows = []
    for path in sorted((study / "benchmarks").rglob("*.tsv")):
        frame = pd.read_csv(path, sep="\t")
        rows.append({"rule": _rule_of(path.relative_to(study / "benchmarks")), "s": float(frame["s"].iloc[0]),
                     "cpu_s": float(frame["cpu_time"].iloc[0]), "max_rss_mb": float(frame["max_rss"].iloc[0])})
    if not rows:
        sys.exit(f"no benchmark files under {study / 'benchmarks'}: did the study run there?")
    return pd.DataFrame(rows)


def script_imports(script: Path) -> str:
    """The top-level import statements of a workflow script, as one line of Python."""
    tree = ast.parse(script.read_text())
    return "; ".join(ast.unparse(node) for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom)))


def import_seconds(rules: list[str], repeats: int = 2) -> dict[str, float]:
    """Per rule: the fastest of ``repeats`` fresh interpreters importing what its script imports."""
    scripts = rule_scripts(REPO / "workflow")
    seconds = {}
    for script in sorted({scripts[rule] for rule in rules}):
        code = script_imports(REPO / "workflow/scripts" / script)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True)
            times.append(time.perf_counter() - start)
        seconds[script] = min(times)
    return {rule: seconds[scripts[rule]] for rule in rules}


def print_costs(jobs: pd.DataFrame, wall_s: float | None, study: Path) -> None:
    imports = import_seconds(sorted(jobs["rule"].unique()))
    jobs = jobs.assign(import_s=jobs["rule"].map(imports))
    by_rule = jobs.groupby("rule").agg(jobs=("s", "size"), mean_s=("s", "mean"), max_s=("s", "max"),
                                       total_s=("s", "sum"), import_s=("import_s", "first"),
                                       max_rss_mb=("max_rss_mb", "max"))
    print(by_rule.sort_values("total_s", ascending=False).round(1).to_string())
    importing = jobs["import_s"].sum()
    print(f"\n{len(jobs)} jobs, summed job time {jobs['s'].sum():.0f} s, of which importing {importing:.0f} s "
          f"({importing / jobs['s'].sum():.0%}; {importing / os.cpu_count():.0f} s of wall time on {os.cpu_count()} cores)")
    pretrain = study / "backbone/pretrain.json"  # only the synthetic world pretrains its backbone
    if pretrain.exists():
        print(f"pretraining: {json.loads(pretrain.read_text())['time_s']:.0f} s (target <= {TARGETS['pretrain_s']} s)")
    finetune = jobs.loc[jobs["rule"] == "finetune", "s"]
    print(f"fine-tune job: mean {finetune.mean():.1f} s, max {finetune.max():.1f} s (incl. imports; "
          f"training alone: see train_time_s below; target <= {TARGETS['finetune_s']} s)")
    if wall_s is not None:
        print(f"whole study: {wall_s:.0f} s wall, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} "
              f"(target <= {TARGETS['study_s']} s: {'met' if wall_s <= TARGETS['study_s'] else 'NOT met'})")


def print_effect(study: Path) -> None:
    runs = pd.read_parquet(study / "tables/runs.parquet")
    pretrained = json.loads((study / "zeroshot/pretrained.json").read_text())["top1"]
    print(f"\npretrained zero-shot top-1: {pretrained:.1%} (target >= {TARGETS['pretrained_zs']:.0%})")
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
    workdir = args.summarize or args.workdir
    wall_s = None if args.summarize else run_study(args)
    study = study_dir(workdir, args.configfile)
    print_costs(job_times(study), wall_s, study)
    print_effect(study)


if __name__ == "__main__":
    main()
