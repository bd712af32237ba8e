# clipdrift: Full Fine-Tuning vs LoRA on CLIP at matched learning rates.
# Default study: the offline synthetic world (config.yaml). The published 80-run matrix:
#   snakemake --cores all --configfile configs/paper.yaml
from pathlib import Path

from snakemake.utils import min_version, validate

min_version("9.0")


# The default study sits beside this Snakefile, so `--directory elsewhere` still finds it;
# `--configfile` presets are merged over it.
configfile: str(Path(workflow.basedir) / "config.yaml")


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/backbone.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/metrics.smk"
include: "workflow/rules/zeroshot.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        f"{STUDY}/report/index.html",
    default_target: True
