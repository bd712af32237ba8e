# Checkpoint-level drift measurements against the pretrained model on the fixed probe subset.


def measured_checkpoint(wildcards):
    return f"{RUN_DIR}/{config['metrics']['checkpoint']}.safetensors".format(**wildcards)


rule attention:
    input:
        checkpoint=measured_checkpoint,
        probe=f"{STUDY}/data/{{dataset}}/probe.safetensors",
        backbone=f"{STUDY}/backbone/backbone.json",
    output:
        table=f"{STUDY}/metrics/attention/{RUN}.parquet",
    params:
        run=lambda wc: {"dataset": wc.dataset, "method": wc.method, "lr": wc.lr, "seed": int(wc.seed)},
        settings=attention_settings(),
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
        checkpoint=measured_checkpoint,
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
