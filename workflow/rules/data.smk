# Dataset preparation: deterministic preprocessing once into the uint8 tensor cache, the split
# manifest, and the fixed class-balanced probe subset.


rule prepare_task:
    output:
        train=f"{STUDY}/data/{{dataset}}/train.safetensors",
        val=f"{STUDY}/data/{{dataset}}/val.safetensors",
        test=f"{STUDY}/data/{{dataset}}/test.safetensors",
        probe=f"{STUDY}/data/{{dataset}}/probe.safetensors",
        manifest=f"{STUDY}/data/{{dataset}}/manifest.json",
    wildcard_constraints:
        dataset="|".join(re.escape(d) for d in DATASETS),
    params:
        dataset=lambda wc: DATASET_CONFIG[wc.dataset],
        settings=lambda wc: plan.data_settings(config, wc.dataset),
        code=code("prepare_data"),
    conda:
        CONDA_ENV_FILE
    log:
        **job_log(f"data/{{dataset}}"),
    benchmark:
        f"{BENCH}/data/{{dataset}}.tsv"
    script:
        "../scripts/prepare_data.py"


rule prepare_zeroshot_task:
    output:
        test=f"{STUDY}/data/{ZEROSHOT_DATASET}/test.safetensors",
        manifest=f"{STUDY}/data/{ZEROSHOT_DATASET}/manifest.json",
    params:
        dataset={"name": ZEROSHOT_DATASET, "sizes": config["zeroshot"].get("sizes") or {}},
        settings=plan.data_settings(config, ZEROSHOT_DATASET),
        code=code("prepare_data"),
    conda:
        CONDA_ENV_FILE
    log:
        **job_log(f"data/{ZEROSHOT_DATASET}"),
    benchmark:
        f"{BENCH}/data/{ZEROSHOT_DATASET}.tsv"
    script:
        "../scripts/prepare_data.py"
