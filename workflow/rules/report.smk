# Aggregation into tidy tables, then the one summary report: a self-contained HTML page, with
# its tables and figures also registered through report() for `snakemake --report`.
from clipdrift.outputs import FIGURES, PAPER_TABLES, TABLES

STUDY_TABLES = [*TABLES, *(PAPER_TABLES if config["preset"] == "paper" else ())]


def table_output(name, suffix):
    path = f"{STUDY}/tables/{name}.{suffix}"
    caption_name = "paper" if name.startswith("paper_") else name
    return report(path, caption=f"../report/{caption_name}.rst", category="Tables") if suffix == "csv" else path


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
    log:
        f"{LOGS}/zeroshot/pretrained-indomain/{{dataset}}.log",
    benchmark:
        f"{BENCH}/zeroshot/pretrained-indomain/{{dataset}}.tsv"
    script:
        "../scripts/zeroshot.py"


rule aggregate:
    input:
        histories=expand_runs(f"{RUN_DIR}/history.json"),
        attention=expand_runs(DRIFT_TABLES["attention"]),
        cka=expand_runs(DRIFT_TABLES["cka"]),
        zeroshot=expand_runs(f"{STUDY}/zeroshot/{RUN}.json"),
        pretrained_zeroshot=f"{STUDY}/zeroshot/pretrained.json",
        **({"sensitivity": expand_runs(DRIFT_TABLES["sensitivity"])} if PROBE_SENSITIVITY else {}),
    output:
        **{f"{name}_csv": table_output(name, "csv") for name in STUDY_TABLES},
        **{f"{name}_parquet": table_output(name, "parquet") for name in STUDY_TABLES},
        findings=report(f"{STUDY}/tables/findings.json", caption="../report/findings.rst", category="Tables"),
    params:
        compare_with_paper=config["preset"] == "paper",
        code=code("aggregate"),
    log:
        f"{LOGS}/aggregate.log",
    benchmark:
        f"{BENCH}/aggregate.tsv"
    script:
        "../scripts/aggregate.py"


rule report:
    input:
        **{name: f"{STUDY}/tables/{name}.parquet" for name in STUDY_TABLES},
        findings=f"{STUDY}/tables/findings.json",
        pretrained_zeroshot=f"{STUDY}/zeroshot/pretrained.json",
        pretrained_indomain=expand(f"{STUDY}/zeroshot/pretrained-indomain/{{dataset}}.json", dataset=DATASETS),
    output:
        html=report(f"{STUDY}/report/index.html", caption="../report/index.rst", category="Report"),
        **{f"{name}_png": report(f"{STUDY}/report/{name}.png", caption=f"../report/{name}.rst", category="Figures")
           for name in FIGURES},
        **{f"{name}_svg": f"{STUDY}/report/{name}.svg" for name in FIGURES},
    params:
        tables=STUDY_TABLES,
        figures=list(FIGURES),
        study={
            "name": config["study"], "preset": config["preset"], "backbone": config["backbone"]["name"],
            "datasets": DATASETS, "methods": METHODS, "learning_rates": LRS, "seeds": SEEDS,
            "zeroshot": f"{ZEROSHOT_DATASET} ({config['zeroshot']['templates']} templates)",
            "zeroshot_class_names": config["zeroshot"]["class_names"],
            "zeroshot_checkpoint": config["zeroshot"]["checkpoint"],
            "drift_checkpoint": config["metrics"]["checkpoint"],
            "training_amp": config["training"]["amp"],
            "selection_split": config["training"]["selection_split"],
        },
        code=code("report"),
    log:
        f"{LOGS}/report.log",
    benchmark:
        f"{BENCH}/report.tsv"
    script:
        "../scripts/report.py"
