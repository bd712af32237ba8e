# Adapter-aware zero-shot transfer on the held-out task: the fine-tuned image tower (adapters
# active, its own projection) of the checkpoint zeroshot.checkpoint names (the best epoch in the
# paper), against the text classifier of the frozen pretrained text tower, built once per study
# (zeroshot_classifier, which also scores the pretrained model).

ZEROSHOT_TEST = f"{STUDY}/data/{ZEROSHOT_DATASET}/test.safetensors"
ZEROSHOT_CLASSIFIER = f"{STUDY}/references/zeroshot_classifier.safetensors"


rule zeroshot_classifier:
    input:
        images=ZEROSHOT_TEST,
        backbone=BACKBONE,
    output:
        classifier=ZEROSHOT_CLASSIFIER,
        pretrained=f"{STUDY}/zeroshot/pretrained.json",
    params:
        run={"dataset": None, "method": "pretrained", "lr": None, "seed": None},
        task=ZEROSHOT_DATASET,
        settings=plan.zeroshot_settings(config),
        code=code("zeroshot_classifier"),
    threads: 1
    conda:
        CONDA_ENV_FILE
    log:
        **job_log("zeroshot/classifier"),
    benchmark:
        f"{BENCH}/zeroshot/classifier.tsv"
    script:
        "../scripts/zeroshot_classifier.py"


rule zeroshot:
    input:
        checkpoint=run_checkpoint(config["zeroshot"]["checkpoint"]),
        images=ZEROSHOT_TEST,
        classifier=ZEROSHOT_CLASSIFIER,
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
    conda:
        CONDA_ENV_FILE
    log:
        **job_log(f"zeroshot/{RUN}"),
    benchmark:
        f"{BENCH}/zeroshot/{RUN}.tsv"
    script:
        "../scripts/zeroshot.py"


# The pretrained model on each fine-tuning task's own test set (readable class names): where
# in-domain accuracy starts from.
rule zeroshot_pretrained_indomain:
    input:
        images=f"{STUDY}/data/{{dataset}}/test.safetensors",
        backbone=BACKBONE,
    output:
        scores=f"{STUDY}/zeroshot/pretrained-indomain/{{dataset}}.json",
    wildcard_constraints:
        dataset="|".join(re.escape(d) for d in DATASETS),
    params:
        run=lambda wc: {"dataset": wc.dataset, "method": "pretrained", "lr": None, "seed": None},
        task=lambda wc: wc.dataset,
        settings=plan.zeroshot_settings(config, indomain=True),
        checkpoint=None,
        code=code("zeroshot"),
    conda:
        CONDA_ENV_FILE
    log:
        **job_log(f"zeroshot/pretrained-indomain/{{dataset}}"),
    benchmark:
        f"{BENCH}/zeroshot/pretrained-indomain/{{dataset}}.tsv"
    script:
        "../scripts/zeroshot.py"


# The curves of each run: weight interpolation of its final weights and its kept epochs, measured
# against the same references as the run's own drift and zero-shot jobs.
if CURVES:

    rule curves:
        input:
            final=f"{RUN_DIR}/final.safetensors",
            history=f"{RUN_DIR}/history.json",
            test=f"{STUDY}/data/{{dataset}}/test.safetensors",
            probe=PROBE,
            reference=REFERENCE,
            zeroshot=ZEROSHOT_TEST,
            classifier=ZEROSHOT_CLASSIFIER,
            pretrained_zeroshot=f"{STUDY}/zeroshot/pretrained.json",
            backbone=BACKBONE,
            **({"epochs": f"{RUN_DIR}/epochs"} if TRAJECTORIES else {}),
        output:
            table=f"{STUDY}/curves/{RUN}.parquet",
        params:
            run=run_params,
            task=ZEROSHOT_DATASET,
            settings=lambda wc: plan.curve_settings(config, wc.dataset),
            code=code("curves"),
        threads: 1
        resources:
            runtime=config["resources"]["metrics_runtime"],
            mem_mb=config["resources"]["metrics_mem_mb"],
        conda:
            CONDA_ENV_FILE
        log:
            **job_log(f"curves/{RUN}"),
        benchmark:
            f"{BENCH}/curves/{RUN}.tsv"
        script:
            "../scripts/curves.py"
