# Aggregation into tidy tables, then the one summary report (a self-contained HTML page, plus
# figures registered with report() for `snakemake --report`).

PRETRAIN_HISTORY = [f"{STUDY}/backbone/pretrain.json"] if config["backbone"]["source"] == "world" else []


rule aggregate:
    input:
        histories=expand_runs(f"{RUN_DIR}/history.json"),
        attention=expand_runs(f"{STUDY}/metrics/attention/{RUN}.parquet"),
        cka=expand_runs(f"{STUDY}/metrics/cka/{RUN}.parquet"),
        zeroshot=expand_runs(f"{STUDY}/zeroshot/{RUN}.json"),
        pretrained_zeroshot=f"{STUDY}/zeroshot/pretrained.json",
        pretrain=PRETRAIN_HISTORY,
    output:
        runs=f"{STUDY}/tables/runs.csv",
        runs_parquet=f"{STUDY}/tables/runs.parquet",
        cells=f"{STUDY}/tables/cells.csv",
        methods=f"{STUDY}/tables/methods.csv",
        layers=f"{STUDY}/tables/layers.csv",
        stats=f"{STUDY}/tables/stats.csv",
    params:
        code=code_digest(*ANALYSIS_CODE),
    log:
        f"{LOGS}/aggregate.log",
    script:
        "../scripts/aggregate.py"


rule report:
    input:
        runs=rules.aggregate.output.runs_parquet,
        attention=expand_runs(f"{STUDY}/metrics/attention/{RUN}.parquet"),
        cka=expand_runs(f"{STUDY}/metrics/cka/{RUN}.parquet"),
        pretrained_zeroshot=f"{STUDY}/zeroshot/pretrained.json",
    output:
        html=report(
            f"{STUDY}/report/index.html",
            caption="../report/index.rst",
            category="Report",
        ),
    params:
        study={"name": config["study"], "preset": config["preset"], "config": config},
        code=code_digest(*ANALYSIS_CODE),
    log:
        f"{LOGS}/report.log",
    script:
        "../scripts/report.py"
