# Drift measurements against the pretrained model on the fixed probe subset. The pretrained side
# is computed once per dataset (probe_reference); each run's checkpoint (metrics.checkpoint: the
# final-epoch weights in the paper) then gets one extraction pass that writes its attention, CKA
# and (with metrics.probe_sensitivity on) probe-subset sensitivity tables. The weight-space drift
# (weights.enabled) has its own jobs: the pretrained tower's singular vectors once per study, one
# job per run, and one comparing the runs' changes.

DRIFT_SETTINGS = {"attention": plan.attention_settings(config), "cka": plan.cka_settings(config)}
SENSITIVITY_INPUT = {"probe_source": f"{STUDY}/data/{{dataset}}/{inputs.PROBE_SOURCE_SPLIT}.safetensors"} if PROBE_SENSITIVITY else {}
REFERENCE = f"{STUDY}/references/{{dataset}}/probe.safetensors"
DRIFT_TABLES = {"attention": f"{STUDY}/metrics/attention/{RUN}.parquet", "cka": f"{STUDY}/metrics/cka/{RUN}.parquet",
                **({"sensitivity": f"{STUDY}/metrics/probe_sensitivity/{RUN}.parquet"} if PROBE_SENSITIVITY else {})}


rule probe_reference:
    input:
        probe=PROBE,
        backbone=BACKBONE,
        **SENSITIVITY_INPUT,
    output:
        reference=REFERENCE,
    wildcard_constraints:
        dataset="|".join(re.escape(d) for d in DATASETS),
    params:
        settings=DRIFT_SETTINGS,
        sensitivity=PROBE_SENSITIVITY,
        code=code("probe_reference"),
    threads: 1
    resources:
        runtime=config["resources"]["metrics_runtime"],
        mem_mb=config["resources"]["metrics_mem_mb"],
    conda:
        CONDA_ENV_FILE
    log:
        **job_log(f"references/{{dataset}}"),
    benchmark:
        f"{BENCH}/references/{{dataset}}.tsv"
    script:
        "../scripts/probe_reference.py"


rule extract:
    input:
        checkpoint=run_checkpoint(config["metrics"]["checkpoint"]),
        probe=PROBE,
        reference=REFERENCE,
        backbone=BACKBONE,
        **SENSITIVITY_INPUT,
    output:
        **DRIFT_TABLES,
    params:
        run=run_params,
        settings=DRIFT_SETTINGS,
        sensitivity=PROBE_SENSITIVITY,
        code=code("extract"),
    threads: 1
    resources:
        runtime=config["resources"]["metrics_runtime"],
        mem_mb=config["resources"]["metrics_mem_mb"],
    conda:
        CONDA_ENV_FILE
    log:
        **job_log(f"extract/{RUN}"),
    benchmark:
        f"{BENCH}/extract/{RUN}.tsv"
    script:
        "../scripts/extract.py"


WEIGHT_TABLES = {"drift": f"{STUDY}/metrics/weights/{RUN}.parquet", "sweep": f"{STUDY}/metrics/intruder_sweep/{RUN}.parquet",
                 "subspaces": f"{STUDY}/metrics/weight_subspaces/{RUN}.safetensors"}
WEIGHT_OVERLAP = f"{STUDY}/metrics/weight_overlap.parquet"

if WEIGHTS:

    rule weight_reference:
        input:
            backbone=BACKBONE,
        output:
            bases=f"{STUDY}/references/weights.safetensors",
        params:
            code=code("weight_reference"),
        threads: 1
        resources:
            runtime=config["resources"]["metrics_runtime"],
            mem_mb=config["resources"]["metrics_mem_mb"],
        conda:
            CONDA_ENV_FILE
        log:
            **job_log("references/weights"),
        benchmark:
            f"{BENCH}/references/weights.tsv"
        script:
            "../scripts/weight_reference.py"

    rule weights:
        input:
            checkpoint=run_checkpoint(config["metrics"]["checkpoint"]),
            history=f"{RUN_DIR}/history.json",
            bases=rules.weight_reference.output.bases,
            backbone=BACKBONE,
            **({"epochs": f"{RUN_DIR}/epochs"} if TRAJECTORIES else {}),
        output:
            **WEIGHT_TABLES,
        params:
            run=run_params,
            checkpoint=config["metrics"]["checkpoint"],
            settings=lambda wc: plan.weight_settings(config, wc.dataset),
            code=code("weights"),
        threads: 1
        resources:
            runtime=config["resources"]["metrics_runtime"],
            mem_mb=config["resources"]["metrics_mem_mb"],
        conda:
            CONDA_ENV_FILE
        log:
            **job_log(f"weights/{RUN}"),
        benchmark:
            f"{BENCH}/weights/{RUN}.tsv"
        script:
            "../scripts/weights.py"

    rule weight_overlap:
        input:
            subspaces=expand_runs(WEIGHT_TABLES["subspaces"]),
        output:
            table=WEIGHT_OVERLAP,
        params:
            code=code("weight_overlap"),
        threads: 1
        resources:
            runtime=config["resources"]["metrics_runtime"],
            mem_mb=config["resources"]["metrics_mem_mb"],
        conda:
            CONDA_ENV_FILE
        log:
            **job_log("weight_overlap"),
        benchmark:
            f"{BENCH}/weight_overlap.tsv"
        script:
            "../scripts/weight_overlap.py"
