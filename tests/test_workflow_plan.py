"""The workflow's plan: presets, config validation, and the front door's errors (dry runs)."""

import re

import pytest

from workflow_helpers import REPO, planned_jobs, snakemake


def test_paper_preset_plans_the_published_80_run_matrix(tmp_path):
    plan = planned_jobs(snakemake(tmp_path, "-n", "--configfile", str(REPO / "configs/paper.yaml")))
    assert plan["finetune"] == 80  # 2 datasets x 2 methods x 4 lrs x 5 seeds
    assert plan["extract"] == plan["zeroshot"] == plan["curves"] == plan["weights"] == 80 and plan["probe_reference"] == 2
    assert plan["weight_reference"] == plan["weight_overlap"] == 1  # the pretrained SVDs once per study
    assert plan["prepare_task"] == 2 and plan["prepare_zeroshot_task"] == 1
    assert plan["check_backbone"] == 1 and "pretrain_backbone" not in plan
    assert plan["aggregate"] == plan["report"] == 1


def test_paper_preset_does_not_inherit_the_synthetic_study(tmp_path):
    result = snakemake(tmp_path, "-n", "-p", "--configfile", str(REPO / "configs/paper.yaml"))
    text = result.stdout
    assert "world-" not in text
    for dataset in ("eurosat", "pets"):
        for lr in ("1e-06", "5e-06", "1e-05", "5e-05"):
            assert f"runs/{dataset}/lora/lr{lr}/seed123/history.json" in text


def test_default_study_is_the_synthetic_world(tmp_path):
    plan = planned_jobs(snakemake(tmp_path, "-n"))
    assert plan["pretrain_backbone"] == 1 and "check_backbone" not in plan
    assert plan["finetune"] == 2 * 2 * 4 * 3


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("learning_rate=[1.0e-4]", "config key 'learning_rate' is not a setting of this workflow: did you mean "
                                   "'learning_rates'?"),
        ("methods=[full,prefix-tuning]", "config key methods[1] is 'prefix-tuning', which is not allowed: use one of "
                                         "full, lora"),
        ("seeds=seven", "config key seeds is 'seven' (a string) but must be a list"),
        ("learning_rates=[1.0e-5,0.00001]", "lists the same rate twice (['1e-05', '1e-05'])"),
    ],
)
def test_a_wrong_config_stops_before_any_job_with_one_short_message(tmp_path, override, named):
    result = snakemake(tmp_path, "-n", "--config", override)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert named in output and "Traceback" not in output
    assert len(output.strip().splitlines()) <= 10, output
    assert not (tmp_path / "results").exists()


def test_image_size_that_does_not_fit_the_backbone_is_refused_with_the_fix(tmp_path):
    override = tmp_path / "override.yaml"
    override.write_text("world:\n  image_size: 64\n")
    result = snakemake(tmp_path, "-n", "--configfile", str(override))
    assert result.returncode != 0
    assert "world.image_size is 64 but backbone clipdrift-tiny expects 32-pixel images: set world.image_size: 32" in (
        result.stdout + result.stderr
    )


def test_paper_preset_scores_zero_shot_on_the_best_checkpoint_and_drift_on_the_final_one(tmp_path):
    result = snakemake(tmp_path, "-n", "--configfile", str(REPO / "configs/paper.yaml"))
    jobs = result.stdout.split("\nrule ")[1:]
    zeroshot = [job for job in jobs if job.startswith("zeroshot:")]
    drift = [job for job in jobs if job.startswith("extract:")]
    assert len(zeroshot) == 80 and len(drift) == 80
    assert all("/best.safetensors" in b.split("output:")[0] and "/final.safetensors" not in b for b in zeroshot)
    assert all("/final.safetensors" in b.split("output:")[0] and "/best.safetensors" not in b for b in drift)


def test_every_table_has_a_report_caption_and_every_figure_its_own_in_the_registry():
    from clipdrift.analysis.names import PAPER_TABLES, TABLES
    from clipdrift.report.names import FIGURES

    captions = {path.stem for path in (REPO / "workflow/report").glob("*.rst")}
    names = {*TABLES} | {"paper" for _ in PAPER_TABLES}
    assert names <= captions, sorted(names - captions)
    assert not set(FIGURES) & captions  # a figure's caption is written beside it from the registry, not kept here
    assert all(figure.caption for figure in FIGURES.values())


def test_the_documented_tables_and_figures_are_the_ones_the_report_declares():
    from artifact_docs import documented_names

    from clipdrift.analysis.names import TABLES
    from clipdrift.report.names import FIGURES

    assert documented_names("<!-- tables -->") == list(TABLES)
    assert documented_names("<!-- figures -->") == list(FIGURES)


def test_variants_are_grid_entries_named_in_the_runs_paths(tmp_path):
    override = tmp_path / "variants.yaml"
    override.write_text("methods:\n  - full\n  - {name: lora-r4, method: lora, lora: {r: 4}}\n"
                        "  - {name: full-wd0.1, method: full, training: {weight_decay: 0.1}, freeze_blocks: 1}\n")
    result = snakemake(tmp_path, "-n", "-p", "--configfile", str(REPO / "configs/test.yaml"), str(override))
    plan = planned_jobs(result)
    assert plan["finetune"] == 2 * 3 * 2 * 1  # datasets x (full + 2 variants) x lrs x seeds
    runs = set(re.findall(r"runs/([\w.-]+)/([\w.-]+)/lr([\w.+-]+)/seed(\d+)/history\.json", result.stdout))
    assert {method for _, method, _, _ in runs} == {"full", "lora-r4", "full-wd0.1"} and len(runs) == plan["finetune"]


def test_the_ablation_presets_plan_the_published_ablations_on_the_matched_grid(tmp_path):
    ablations = planned_jobs(snakemake(tmp_path, "-n", "--configfile", str(REPO / "configs/ablations.yaml")))
    assert ablations["finetune"] == 14 * 2 * 3 and ablations["prepare_task"] == 1
    paper = planned_jobs(snakemake(tmp_path, "-n", "--configfile", str(REPO / "configs/paper-ablations.yaml")))
    assert paper["finetune"] == 15 * 2 * 4 * 5 and paper["zeroshot"] == paper["extract"] == 600


def test_the_paper_ablations_preset_is_the_paper_preset_but_for_its_methods_and_trace():
    import yaml

    paper = yaml.safe_load((REPO / "configs/paper.yaml").read_text())
    ablations = yaml.safe_load((REPO / "configs/paper-ablations.yaml").read_text())
    assert ablations["methods"][:2] == paper["methods"] == ["full", "lora"]
    assert len(ablations["methods"]) == 15 and ablations["training"].pop("entropy_trace_per_epoch") == 5
    for key in ("study", "methods"):
        paper.pop(key), ablations.pop(key)
    assert ablations == paper


def test_the_intruders_preset_plans_the_intervention_beside_the_weight_space_drift(tmp_path):
    plan = planned_jobs(snakemake(tmp_path, "-n", "--configfile", str(REPO / "configs/intruders.yaml")))
    assert plan["finetune"] == plan["weights"] == plan["intervention"] == 2 * 2 * 3  # methods x lrs x seeds
    assert plan["weight_reference"] == plan["weight_overlap"] == 1
    assert "intervention" not in planned_jobs(snakemake(tmp_path, "-n"))  # off by default


def test_the_intervention_without_the_weight_space_drift_is_refused(tmp_path):
    override = tmp_path / "override.yaml"
    override.write_text("weights:\n  enabled: false\n  intervention: {enabled: true}\n")
    result = snakemake(tmp_path, "-n", "--configfile", str(override))
    assert result.returncode != 0
    assert "weights.intervention.enabled is true but weights.enabled is false" in result.stderr + result.stdout


def test_the_peft_methods_presets_plan_every_method_of_the_registry_on_the_matched_grid(tmp_path):
    import yaml

    from clipdrift.model.methods import METHODS

    preset = yaml.safe_load((REPO / "configs/peft-methods.yaml").read_text())
    assert set(preset["methods"]) == {name for name, entry in METHODS.items() if not entry.probe_phase}
    plan = planned_jobs(snakemake(tmp_path, "-n", "--configfile", str(REPO / "configs/peft-methods.yaml")))
    assert plan["finetune"] == plan["curves"] == plan["weights"] == 15 * 2 * 3
    paper = planned_jobs(snakemake(tmp_path, "-n", "--configfile", str(REPO / "configs/paper-methods.yaml")))
    assert paper["finetune"] == paper["zeroshot"] == 15 * 2 * 4 * 5


def test_the_paper_methods_preset_is_the_paper_preset_but_for_its_methods():
    import yaml

    paper = yaml.safe_load((REPO / "configs/paper.yaml").read_text())
    methods = yaml.safe_load((REPO / "configs/paper-methods.yaml").read_text())
    synthetic = yaml.safe_load((REPO / "configs/peft-methods.yaml").read_text())
    assert methods["methods"] == synthetic["methods"] and methods.pop("peft") == synthetic["peft"]
    for key in ("study", "methods"):
        paper.pop(key), methods.pop(key)
    assert methods == paper
