# Checkpoint-level drift measurements against the pretrained model on the fixed probe subset
# (metrics.checkpoint: the final-epoch weights in the paper). With metrics.probe_sensitivity on,
# the attention job also measures the same statistics on probe subsets drawn with other seeds.

DRIFT_CHECKPOINT = run_checkpoint(config["metrics"]["checkpoint"])
SENSITIVITY_TABLE = f"{STUDY}/metrics/probe_sensitivity/{RUN}.parquet"


rule attention:
    input:
        checkpoint=DRIFT_CHECKPOINT,
        probe=f"{STUDY}/data/{{dataset}}/probe.safetensors",
        backbone=BACKBONE,
        **({"probe_source": f"{STUDY}/data/{{dataset}}/{plan.PROBE_SOURCE_SPLIT}.safetensors"} if PROBE_SENSITIVITY else {}),
    output:
        table=f"{STUDY}/metrics/attention/{RUN}.parquet",
        **({"sensitivity": SENSITIVITY_TABLE} if PROBE_SENSITIVITY else {}),
    params:
        run=run_params,
        settings=plan.attention_settings(config),
        sensitivity=PROBE_SENSITIVITY,
        code=code("drift"),
    threads: 1
    resources:
        runtime=config["resources"]["metrics_runtime"],
        mem_mb=config["resources"]["metrics_mem_mb"],
    log:
        f"{LOGS}/attention/{RUN}.log",
    benchmark:
        f"{BENCH}/attention/{RUN}.tsv"
    script:
        "../scripts/drift.py"


rule cka:
    input:
        checkpoint=DRIFT_CHECKPOINT,
        probe=f"{STUDY}/data/{{dataset}}/probe.safetensors",
        backbone=BACKBONE,
    output:
        table=f"{STUDY}/metrics/cka/{RUN}.parquet",
    params:
        run=run_params,
        settings=plan.cka_settings(config),
        code=code("drift"),
    threads: 1
    resources:
        runtime=config["resources"]["metrics_runtime"],
        mem_mb=config["resources"]["metrics_mem_mb"],
    log:
        f"{LOGS}/cka/{RUN}.log",
    benchmark:
        f"{BENCH}/cka/{RUN}.tsv"
    script:
        "../scripts/drift.py"
