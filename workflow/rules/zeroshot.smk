# Adapter-aware zero-shot transfer on the held-out task: the fine-tuned image tower (adapters
# active, its own projection) against text features from the frozen pretrained text tower, on
# the checkpoint zeroshot.checkpoint names (the best epoch in the paper).

ZEROSHOT_TEST = f"{STUDY}/data/{ZEROSHOT_DATASET}/test.safetensors"


rule zeroshot:
    input:
        checkpoint=run_checkpoint(config["zeroshot"]["checkpoint"]),
        images=ZEROSHOT_TEST,
        backbone=BACKBONE,
    output:
        scores=f"{STUDY}/zeroshot/{RUN}.json",
    params:
        run=run_params,
        task=ZEROSHOT_DATASET,
        settings=plan.zeroshot_settings(config),
        checkpoint=config["zeroshot"]["checkpoint"],
        code=code("zeroshot"),
    threads: 1
    resources:
        runtime=config["resources"]["metrics_runtime"],
        mem_mb=config["resources"]["metrics_mem_mb"],
    log:
        f"{LOGS}/zeroshot/{RUN}.log",
    benchmark:
        f"{BENCH}/zeroshot/{RUN}.tsv"
    script:
        "../scripts/zeroshot.py"


rule zeroshot_pretrained:
    input:
        images=ZEROSHOT_TEST,
        backbone=BACKBONE,
    output:
        scores=f"{STUDY}/zeroshot/pretrained.json",
    params:
        run={"dataset": None, "method": "pretrained", "lr": None, "seed": None},
        task=ZEROSHOT_DATASET,
        settings=plan.zeroshot_settings(config),
        checkpoint=None,
        code=code("zeroshot"),
    threads: 1
    log:
        f"{LOGS}/zeroshot/pretrained.log",
    benchmark:
        f"{BENCH}/zeroshot/pretrained.tsv"
    script:
        "../scripts/zeroshot.py"
