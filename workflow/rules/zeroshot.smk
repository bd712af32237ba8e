# Adapter-aware zero-shot transfer on the held-out suite: the fine-tuned image tower (adapters
# active, its own projection) of the checkpoint zeroshot.checkpoint names (the best epoch in the
# paper), against each task's text classifier of the frozen pretrained text tower, built once per
# study and task (zeroshot_classifier, which also scores the pretrained model on that task).

ZEROSHOT_TEST = f"{STUDY}/data/{{task}}/test.safetensors"
ZEROSHOT_MANIFEST = f"{STUDY}/data/{{task}}/manifest.json"
ZEROSHOT_CLASSIFIER = f"{STUDY}/references/zeroshot/{{task}}.safetensors"
PRETRAINED_ZEROSHOT = f"{STUDY}/zeroshot/pretrained/{{task}}.json"
# Every task of the suite, in the config's order (scripts zip these with params.tasks).
SUITE = {
    "zeroshot": expand(ZEROSHOT_TEST, task=HELDOUT),
    "manifests": expand(ZEROSHOT_MANIFEST, task=HELDOUT),
    "classifiers": expand(ZEROSHOT_CLASSIFIER, task=HELDOUT),
}


rule zeroshot_classifier:
    input:
        images=ZEROSHOT_TEST,
        manifest=ZEROSHOT_MANIFEST,
        backbone=BACKBONE,
    output:
        classifier=ZEROSHOT_CLASSIFIER,
        pretrained=PRETRAINED_ZEROSHOT,
    params:
        run={"dataset": None, "method": "pretrained", "lr": None, "seed": None},
        task=lambda wc: wc.task,
        settings=lambda wc: inputs.zeroshot_settings(config, wc.task),
        code=code("zeroshot_classifier"),
    threads: 1
    conda:
        CONDA_ENV_FILE
    log:
        **job_log("zeroshot/classifier/{task}"),
    benchmark:
        f"{BENCH}/zeroshot/classifier/{{task}}.tsv"
    script:
        "../scripts/zeroshot_classifier.py"


rule zeroshot:
    input:
        checkpoint=run_checkpoint(config["zeroshot"]["checkpoint"]),
        **SUITE,
        backbone=BACKBONE,
    output:
        scores=f"{STUDY}/zeroshot/{RUN}.json",
    params:
        run=run_params,
        tasks=HELDOUT,
        settings=inputs.suite_settings(config),
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
        manifest=f"{STUDY}/data/{{dataset}}/manifest.json",
        backbone=BACKBONE,
    output:
        scores=f"{STUDY}/zeroshot/pretrained-indomain/{{dataset}}.json",
    wildcard_constraints:
        dataset="|".join(re.escape(d) for d in DATASETS),
    params:
        run=lambda wc: {"dataset": wc.dataset, "method": "pretrained", "lr": None, "seed": None},
        tasks=lambda wc: [wc.dataset],
        settings=lambda wc: {wc.dataset: inputs.zeroshot_settings(config, wc.dataset, indomain=True)},
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
            **SUITE,
            pretrained_zeroshot=expand(PRETRAINED_ZEROSHOT, task=HELDOUT),
            backbone=BACKBONE,
            **({"epochs": f"{RUN_DIR}/epochs"} if TRAJECTORIES else {}),
        output:
            table=f"{STUDY}/curves/{RUN}.parquet",
        params:
            run=run_params,
            tasks=HELDOUT,
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


# Does removing a run's intruder dimensions give its transfer back (weights.intervention)? Each share
# of its intruders kept and the uniform control, scored like curve points.
INTERVENTION = f"{STUDY}/metrics/intervention/{RUN}.parquet"

if INTERVENED:

    rule intervention:
        input:
            checkpoint=run_checkpoint(config["metrics"]["checkpoint"]),
            test=f"{STUDY}/data/{{dataset}}/test.safetensors",
            probe=PROBE,
            reference=REFERENCE,
            bases=rules.weight_reference.output.bases,
            **SUITE,
            pretrained_zeroshot=expand(PRETRAINED_ZEROSHOT, task=HELDOUT),
            backbone=BACKBONE,
        output:
            table=INTERVENTION,
        params:
            run=run_params,
            tasks=HELDOUT,
            settings=plan.intervention_settings(config),
            code=code("intervention"),
        threads: 1
        resources:
            runtime=config["resources"]["metrics_runtime"],
            mem_mb=config["resources"]["metrics_mem_mb"],
        conda:
            CONDA_ENV_FILE
        log:
            **job_log(f"intervention/{RUN}"),
        benchmark:
            f"{BENCH}/intervention/{RUN}.tsv"
        script:
            "../scripts/intervention.py"
