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
        settings=lambda wc: inputs.data_settings(config, wc.dataset),
        code=code("prepare_data"),
    conda:
        CONDA_ENV_FILE
    log:
        **job_log(f"data/{{dataset}}"),
    benchmark:
        f"{BENCH}/data/{{dataset}}.tsv"
    script:
        "../scripts/prepare_data.py"


# A held-out task: its test split alone (no probe: nothing is fine-tuned on it).
rule prepare_zeroshot_task:
    output:
        test=f"{STUDY}/data/{{task}}/test.safetensors",
        manifest=f"{STUDY}/data/{{task}}/manifest.json",
    params:
        dataset=lambda wc: inputs.heldout_data_entry(config, wc.task),
        settings=lambda wc: inputs.data_settings(config, wc.task),
        code=code("prepare_data"),
    conda:
        CONDA_ENV_FILE
    log:
        **job_log("data/{task}"),
    benchmark:
        f"{BENCH}/data/{{task}}.tsv"
    script:
        "../scripts/prepare_data.py"
