# Checkpoint-level drift measurements against the pretrained model on the fixed probe subset
# (metrics.checkpoint: the final-epoch weights in the paper). With metrics.probe_sensitivity on,
# the attention job also measures the same statistics on probe subsets drawn with other seeds.

DRIFT_CHECKPOINT = run_checkpoint(config["metrics"]["checkpoint"])
SENSITIVITY_TABLE = f"{STUDY}/metrics/probe_sensitivity/{RUN}.parquet"


rule attention:
    input:
        checkpoint=DRIFT_CHECKPOINT,
        probe=f"{STUDY}/data/{{dataset}}/probe.safetensors",
        backbone=f"{STUDY}/backbone/backbone.json",
        **({"probe_source": f"{STUDY}/data/{{dataset}}/{_study.PROBE_SOURCE_SPLIT}.safetensors"} if PROBE_SENSITIVITY else {}),
    output:
        table=f"{STUDY}/metrics/attention/{RUN}.parquet",
        **({"sensitivity": SENSITIVITY_TABLE} if PROBE_SENSITIVITY else {}),
    params:
        run=lambda wc: {"dataset": wc.dataset, "method": wc.method, "lr": wc.lr, "seed": int(wc.seed)},
        settings=attention_settings(),
        sensitivity=PROBE_SENSITIVITY,
        code=code_digest(*ATTENTION_CODE),
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
        backbone=f"{STUDY}/backbone/backbone.json",
    output:
        table=f"{STUDY}/metrics/cka/{RUN}.parquet",
    params:
        run=lambda wc: {"dataset": wc.dataset, "method": wc.method, "lr": wc.lr, "seed": int(wc.seed)},
        settings=cka_settings(),
        code=code_digest(*CKA_CODE),
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
