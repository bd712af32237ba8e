# Study plan derived from the validated config: canonical learning rates, the run grid, output
# paths, wildcard constraints, and code digests that tie rules to the package code they run.
import os
import re
from pathlib import Path

from clipdrift.pipeline import inputs, plan
from clipdrift.pipeline.codedigest import script_digest
from clipdrift.analysis.names import PAPER_TABLES, TABLES
from clipdrift.report.names import study_figures

STUDY = f"{config['results_dir']}/{config['study']}"
DATASETS = [d["name"] for d in config["datasets"]]
DATASET_CONFIG = {d["name"]: d for d in config["datasets"]}
METHODS = plan.method_names(config)
LRS = [plan.canonical_lr(lr) for lr in config["learning_rates"]]
SEEDS = [int(s) for s in config["seeds"]]
HELDOUT = plan.heldout_names(config)  # the held-out zero-shot suite, in the config's order
RUN = "{dataset}/{method}/lr{lr}/seed{seed}"
RUN_DIR = f"{STUDY}/runs/{RUN}"
BACKBONE = f"{STUDY}/{plan.BACKBONE_DESCRIPTOR}"
LOGS = f"{STUDY}/logs"
BENCH = f"{STUDY}/benchmarks"
SCRATCH = f"{STUDY}/.resume"
SCRIPTS = Path(workflow.basedir) / "workflow" / "scripts"
PROBE = f"{STUDY}/data/{{dataset}}/probe.safetensors"  # every drift metric, the trace and the entropy floor read it
PROBE_SENSITIVITY = plan.probe_sensitivity_settings(config)
CURVES = config["curves"]["enabled"]
TRAJECTORIES = CURVES and bool(config["curves"]["epochs"])
WEIGHTS = config["weights"]["enabled"]
INTERVENED = WEIGHTS and config["weights"]["intervention"]["enabled"]  # check_settings refuses it without WEIGHTS
STUDY_TABLES = [*TABLES, *(PAPER_TABLES if config["preset"] == "paper" else ())]
TRACED = plan.traces(config)
STUDY_FIGURES = study_figures(CURVES, TRAJECTORIES, TRACED, WEIGHTS, INTERVENED, len(METHODS) * len(LRS) * len(SEEDS))
# With --use-conda (--software-deployment-method conda) every job runs in an environment built from
# this file; the jobs import clipdrift from the workflow's own src/ (see the Snakefile).
CONDA_ENV_FILE = "../../envs/clipdrift.yaml"


wildcard_constraints:
    dataset="|".join(re.escape(d) for d in DATASETS + HELDOUT),
    task="|".join(re.escape(t) for t in HELDOUT),
    method="|".join(re.escape(m) for m in METHODS),
    lr="|".join(re.escape(lr) for lr in LRS),
    seed=r"\d+",


def expand_runs(pattern):
    """``pattern`` formatted for every (dataset, method, lr, seed) of the grid."""
    return expand(pattern, dataset=DATASETS, method=METHODS, lr=LRS, seed=SEEDS)


def job_log(name):
    """A job's log (logs/<name>.log) and its own account of its start-up, compute, CPU time and
    peak memory (benchmarks/<name>.usage.json, clipdrift.pipeline.jobs.runner.usage_record): for a job run by
    the warm job server, Snakemake's benchmark file measures only the client waiting for it."""
    return {"job": f"{LOGS}/{name}.log", "usage": f"{BENCH}/{name}.usage.json"}


def run_params(wildcards):
    """The run a job belongs to, as its tables' leading columns (``params.run``)."""
    return {"dataset": wildcards.dataset, "method": wildcards.method, "lr": wildcards.lr, "seed": int(wildcards.seed)}


def code(script):
    """Digest of the package code and data ``workflow/scripts/<script>.py`` reaches (its import
    closure, read statically; comments and docstrings do not count). Snakemake tracks the
    script itself; this ``params`` entry reruns the rule when the code it imports changes."""
    return script_digest(SCRIPTS / f"{script}.py")


def run_checkpoint(which):
    """Input function: the run's ``which`` checkpoint (``best`` or ``final``)."""
    return lambda wildcards: f"{RUN_DIR}/{which}.safetensors".format(**wildcards)


def figure_caption(name):
    """The caption file Snakemake's report() shows under a figure: written by the report job beside
    the figure (report() resolves a relative caption against this rule file, so the path is absolute)."""
    return os.path.abspath(f"{STUDY}/report/captions/{name}.rst")


def table_output(name, suffix):
    """A table of the aggregate rule; the CSV is registered for `snakemake --report`."""
    path = f"{STUDY}/tables/{name}.{suffix}"
    caption_name = "paper" if name.startswith("paper_") else name
    return report(path, caption=f"../report/{caption_name}.rst", category="Tables") if suffix == "csv" else path
