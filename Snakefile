# clipdrift: Full Fine-Tuning vs LoRA on CLIP at matched learning rates.
# Default study: the offline synthetic world (config.yaml). The published 80-run matrix:
#   snakemake --cores all --configfile configs/paper.yaml
import sys
from pathlib import Path

from snakemake.utils import min_version

from clipdrift.core.errors import UserFacingError
from clipdrift.pipeline.config_errors import prepare_config
from clipdrift.pipeline.inputs import check_tasks_on_disk
from clipdrift.pipeline.jobs.signals import let_jobs_take_the_warning
from clipdrift.pipeline.jobs.warm.client import run_notice
from clipdrift.pipeline.plan import jobs_import_from

min_version("9.0")

# Jobs import the clipdrift of this workflow's own source tree (after any PYTHONPATH already set),
# so they find it in an environment where it is not installed (--use-conda) and never run a
# different version of the package than the one whose code digests planned them.
jobs_import_from(Path(workflow.basedir) / "src")

# SLURM's warning signal before a time limit (profiles/slurm) reaches this Snakemake too when it runs
# a job in a job step, and the shell it runs a script through: ignored by both, so that they wait
# while a fine-tune saves its state instead of dying and taking the step down.
let_jobs_take_the_warning()


# The default study sits beside this Snakefile, so `--directory elsewhere` still finds it;
# `--configfile` presets are merged over it.
configfile: str(Path(workflow.basedir) / "config.yaml")


# Schema defaults filled in, cross-key checks; a mistake stops here with one short message.
try:
    prepare_config(config, Path(workflow.basedir) / "workflow/schemas/config.schema.yaml", ".snakemake/log")
except UserFacingError as error:
    sys.exit(f"Config error: {error}")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/backbone.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/metrics.smk"
include: "workflow/rules/zeroshot.smk"
include: "workflow/rules/report.smk"


# Every dataset a job is about to prepare is checked on disk before any job starts (not in a dry
# run: `snakemake -n` plans a study whose data is not there yet). A local run in a folder others
# can write to says once that its jobs run cold.
onstart:
    try:
        check_tasks_on_disk(config, pending=lambda task: not Path(f"{STUDY}/data/{task}/manifest.json").exists())
    except UserFacingError as error:
        sys.exit(f"Data error: {error}")
    if workflow.local_exec and (notice := run_notice(config)):
        print(notice, file=sys.stderr)


rule all:
    input:
        f"{STUDY}/report/index.html",
    default_target: True
