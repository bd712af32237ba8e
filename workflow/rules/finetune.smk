# One fine-tune per (dataset, method, lr, seed). Resume state lives in SCRATCH, outside the
# declared outputs (Snakemake deletes those when a job fails), so a killed run continues from
# its last completed epoch. With trajectories on (curves.epochs), the weights of the kept epochs
# (curves.keep_epochs) are collected in SCRATCH during training and moved to runs/<run>/epochs/.


rule finetune:
    input:
        train=f"{STUDY}/data/{{dataset}}/train.safetensors",
        val=f"{STUDY}/data/{{dataset}}/val.safetensors",
        test=f"{STUDY}/data/{{dataset}}/test.safetensors",
        # what the entropy trace and the entropy floor's baseline measure (unread otherwise)
        probe=PROBE,
        backbone=BACKBONE,
    output:
        best=f"{RUN_DIR}/best.safetensors",
        final=f"{RUN_DIR}/final.safetensors",
        history=f"{RUN_DIR}/history.json",
        **({"epochs": directory(f"{RUN_DIR}/epochs")} if TRAJECTORIES else {}),
    params:
        run=run_params,
        snapshots=lambda wc: plan.snapshot_settings(config, wc.dataset, wc.method),
        method=lambda wc: plan.method_settings(config, wc.method),
        training=lambda wc: plan.training_settings(config, wc.dataset, wc.lr, int(wc.seed), wc.method),
        resume_dir=lambda wc: f"{SCRATCH}/{RUN.format(**wc)}",
        code=code("finetune"),
    threads: 1
    resources:
        runtime=lambda wc, attempt: config["resources"]["finetune_runtime"] * attempt,
        mem_mb=config["resources"]["finetune_mem_mb"],
    conda:
        CONDA_ENV_FILE
    log:
        **job_log(f"finetune/{RUN}"),
    benchmark:
        f"{BENCH}/finetune/{RUN}.tsv"
    script:
        "../scripts/finetune.py"
