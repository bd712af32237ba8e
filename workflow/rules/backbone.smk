# The pretrained backbone every run starts from, described by backbone.json. On the synthetic
# world a tiny CLIP is pretrained here; otherwise the open_clip weights are checked up front so
# that an offline run without cached weights stops at this first job with a clear message.

if config["backbone"]["source"] == "world":

    rule pretrain_backbone:
        output:
            descriptor=BACKBONE,
            weights=f"{STUDY}/backbone/backbone.safetensors",
            history=f"{STUDY}/backbone/pretrain.json",
        params:
            name=config["backbone"]["name"],
            world=config["world"],
            code=code("pretrain_backbone"),
        threads: 4  # capped at --cores locally; profiles/slurm sets the cluster's value
        priority: 100
        conda:
            CONDA_ENV_FILE
        log:
            **job_log("backbone"),
        benchmark:
            f"{BENCH}/backbone.tsv"
        script:
            "../scripts/pretrain_backbone.py"

else:

    rule check_backbone:
        output:
            descriptor=BACKBONE,
        params:
            backbone=config["backbone"],
            code=code("check_backbone"),
        priority: 100  # first job: missing weights stop the study before any data work
        conda:
            CONDA_ENV_FILE
        log:
            **job_log("backbone"),
        script:
            "../scripts/check_backbone.py"
