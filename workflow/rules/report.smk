# Aggregation into tidy tables, then the one summary report: a self-contained HTML page, with
# its tables and figures also registered through report() for `snakemake --report`.
rule aggregate:
    input:
        histories=expand_runs(f"{RUN_DIR}/history.json"),
        attention=expand_runs(DRIFT_TABLES["attention"]),
        cka=expand_runs(DRIFT_TABLES["cka"]),
        zeroshot=expand_runs(f"{STUDY}/zeroshot/{RUN}.json"),
        pretrained_zeroshot=expand(f"{STUDY}/zeroshot/pretrained/{{task}}.json", task=HELDOUT),
        **({"sensitivity": expand_runs(DRIFT_TABLES["sensitivity"])} if PROBE_SENSITIVITY else {}),
        **({"curves": expand_runs(f"{STUDY}/curves/{RUN}.parquet")} if CURVES else {}),
        **({"weights": expand_runs(WEIGHT_TABLES["drift"]), "intruder_sweep": expand_runs(WEIGHT_TABLES["sweep"]),
            "weight_overlap": WEIGHT_OVERLAP} if WEIGHTS else {}),
        **({"intervention": expand_runs(INTERVENTION)} if INTERVENED else {}),
    output:
        **{f"{name}_csv": table_output(name, "csv") for name in STUDY_TABLES},
        **{f"{name}_parquet": table_output(name, "parquet") for name in STUDY_TABLES},
        findings=report(f"{STUDY}/tables/findings.json", caption="../report/findings.rst", category="Tables"),
    params:
        compare_with_paper=config["preset"] == "paper",
        variants=plan.method_entries(config),
        code=code("aggregate"),
    conda:
        CONDA_ENV_FILE
    log:
        **job_log("aggregate"),
    benchmark:
        f"{BENCH}/aggregate.tsv"
    script:
        "../scripts/aggregate.py"


rule report:
    input:
        **{name: f"{STUDY}/tables/{name}.parquet" for name in STUDY_TABLES},
        findings=f"{STUDY}/tables/findings.json",
        pretrained_zeroshot=expand(f"{STUDY}/zeroshot/pretrained/{{task}}.json", task=HELDOUT),
        pretrained_indomain=expand(f"{STUDY}/zeroshot/pretrained-indomain/{{dataset}}.json", dataset=DATASETS),
    output:
        html=report(f"{STUDY}/report/index.html", caption="../report/index.rst", category="Report"),
        # a figure's caption, written beside it from clipdrift.report.names (the page shows the same words)
        **{f"{name}_png": report(f"{STUDY}/report/{name}.png", caption=figure_caption(name), category="Figures")
           for name in STUDY_FIGURES},
        **{f"{name}_svg": f"{STUDY}/report/{name}.svg" for name in STUDY_FIGURES},
        **{f"{name}_caption": f"{STUDY}/report/captions/{name}.rst" for name in STUDY_FIGURES},
    params:
        tables=STUDY_TABLES,
        figures=STUDY_FIGURES,
        study={
            "name": config["study"], "preset": config["preset"], "backbone": config["backbone"]["name"],
            "datasets": DATASETS, "methods": METHODS, "learning_rates": LRS, "seeds": SEEDS,
            "zeroshot": inputs.suite_description(config),
            "zeroshot_class_names": inputs.suite_class_names(config),
            "zeroshot_checkpoint": config["zeroshot"]["checkpoint"],
            "drift_checkpoint": config["metrics"]["checkpoint"],
            "training_amp": config["training"]["amp"],
            "selection_split": config["training"]["selection_split"],
            "curves": config["curves"] if CURVES else "off",
            # what each variant sets, for the glossary
            "variants": {name: {"method": plan.base_method(config, name), "changes": plan.variant_changes(config, name)}
                         for name in METHODS if plan.base_method(config, name) != name},
        },
        code=code("report"),
    conda:
        CONDA_ENV_FILE
    log:
        **job_log("report"),
    benchmark:
        f"{BENCH}/report.tsv"
    script:
        "../scripts/report.py"
