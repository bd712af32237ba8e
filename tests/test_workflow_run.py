"""The test study run end to end through Snakemake, the rerun contract, and the SLURM profile."""

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from markupsafe import escape

from clipdrift.pipeline.jobs.warm.state import LOG_FILE, location

from workflow_helpers import REPO, default_sigint, planned_jobs, require_slurm, server_pids, snakemake, wait_until

pytestmark = pytest.mark.slow  # end-to-end workflow runs (minutes)

TEST_CONFIG = str(REPO / "configs/test.yaml")
STUDY = "results/test"
RUNS = 2 * 3 * 2 * 1  # datasets x methods (full, lora, lp-ft) x lrs x seeds in configs/test.yaml
# the cluster has no GPU: the rules that claim one in profiles/slurm claim none here
SLURM_RESOURCES = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())["set-resources"]
GPU_RULES = [rule for rule, claim in SLURM_RESOURCES.items() if claim.get("gpu")]


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    """A working directory in which the whole test study has run once."""
    workdir = tmp_path_factory.mktemp("study")
    result = snakemake(workdir, "--cores", "2", "--configfile", TEST_CONFIG)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    return workdir


COLD_LR = "1e-03"  # the cold study runs the test study's runs at this rate only (half its jobs)


@pytest.fixture(scope="module")
def cold_study_dir(tmp_path_factory):
    """The test study's runs at one learning rate with the warm job server switched off: every
    job its own fresh process. Each run's settings are the full study's, so its files must be too."""
    workdir = tmp_path_factory.mktemp("cold-study")
    (workdir / "one-rate.yaml").write_text(f"learning_rates: [{float(COLD_LR)!r}]\n")
    result = snakemake(workdir, "--cores", "2", "--configfile", TEST_CONFIG, str(workdir / "one-rate.yaml"),
                       env={"CLIPDRIFT_WARM": "0"})
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    return workdir


def _dry_run(workdir, *overrides, env=None):
    # one --configfile option with several files: a second --configfile would replace the first
    return snakemake(workdir, "-n", "--configfile", TEST_CONFIG, *overrides, env=env)


def _plan(workdir, *overrides, env=None):
    return planned_jobs(_dry_run(workdir, *overrides, env=env))


def _override(workdir, name, text):
    path = workdir / name
    path.write_text(text)
    return str(path)


def test_the_study_leaves_sane_outputs(study_dir):
    study = study_dir / STUDY
    runs = pd.read_parquet(study / "tables/runs.parquet")
    assert len(runs) == RUNS
    assert set(runs["method"]) == {"full", "lora", "lp-ft"} and set(runs["lr"]) == {"1e-04", "1e-03"}
    for column in ("best_select_acc", "final_test_acc", "zs_top1", "zs_top5", "zs_balanced"):
        assert runs[column].between(0, 1).all(), column
    assert (runs["zs_top5"] >= runs["zs_top1"]).all() and runs["cka_mean"].between(0, 1.0001).all()
    history = json.loads((study / "runs/world-eurosat/lora/lr1e-03/seed7/history.json").read_text())
    assert history["status"] == "completed" and history["method"] == "lora" and len(history["epochs"]) == 2
    lp_ft = json.loads((study / "runs/world-pets/lp-ft/lr1e-03/seed7/history.json").read_text())
    assert [e["phase"] for e in lp_ft["epochs"]] == ["probe", "finetune"]
    assert lp_ft["trainable_params"]["image_tower"] > 0
    attention = pd.read_parquet(study / "metrics/attention/world-pets/full/lr1e-03/seed7.parquet")
    assert set(attention["state"]) == {"baseline", "final"}
    assert attention["value"].map(math.isfinite).all()
    entropy = attention.query("metric == 'entropy' and head == -1 and layer >= 0")
    assert entropy["value"].between(0, math.log(16)).all()  # 16 patches in the tiny model
    pretrained = {task: json.loads((study / f"zeroshot/pretrained/{task}.json").read_text())
                  for task in ("world-cifar100", "world-patterns")}
    assert all(p["task"] == task and p["n_images"] == 200 for task, p in pretrained.items())
    html = (study / "report/index.html").read_text()
    assert "<img" in html and "world-eurosat" in html and "src=\"http" not in html
    assert (study / "report/lr_panels.png").stat().st_size > 10_000
    # a job's log says what the job did: clipdrift's lines, other libraries' warnings only
    curve_log = (study / "logs/curves/world-pets/lora/lr1e-03/seed7.log").read_text()
    assert "warm job" in curve_log.splitlines()[0] and "Parsing model identifier" not in curve_log
    assert "epoch 2/2" in (study / "logs/finetune/world-pets/lora/lr1e-03/seed7.log").read_text()
    # every model-loading job leaves its time and memory (benchmarks/bench_study.py reads them)
    benchmarks = {p.relative_to(study / "benchmarks").as_posix() for p in (study / "benchmarks").rglob("*.tsv")}
    assert {"backbone.tsv", "data/world-cifar100.tsv", "zeroshot/classifier/world-patterns.tsv", "references/world-pets.tsv",
            "zeroshot/pretrained-indomain/world-pets.tsv", "finetune/world-pets/lora/lr1e-03/seed7.tsv",
            "extract/world-pets/lora/lr1e-03/seed7.tsv", "curves/world-pets/lp-ft/lr1e-03/seed7.tsv",
            "weights/world-pets/lora/lr1e-03/seed7.tsv", "references/weights.tsv", "weight_overlap.tsv"} <= benchmarks
    # backbone, data (2 fine-tuning + 2 held-out tasks), zero-shot classifiers (2), in-domain references,
    # probe references, the weight-space reference and overlap, 5 per run, tables + report
    assert len(benchmarks) == 1 + 4 + 2 + 2 + 2 + 2 + 5 * RUNS + 2
    # the curves: alpha 1 is the run itself, alpha 0 the pretrained tower; every epoch was kept
    curves = pd.read_parquet(study / "tables/curves.parquet").merge(runs, on=["dataset", "method", "lr", "seed"])
    end = curves.query("kind == 'alpha' and point == 1.0")
    assert (end["indomain_acc"] == end["final_test_acc"]).all() and (end["zs_top1_x"] == end["zs_top1_y"]).all()
    assert np.allclose(end["drift_entropy_pct_x"], end["drift_entropy_pct_y"], rtol=1e-9, atol=1e-12)
    start = curves.query("kind == 'alpha' and point == 0.0")
    suite_mean = (pretrained["world-cifar100"]["top1"] + pretrained["world-patterns"]["top1"]) / 2
    assert (start["zs_top1_x"] == suite_mean).all() and np.allclose(start["drift_entropy_pct_x"], 0, atol=1e-9)
    assert (start["zs_retention_x"] == 1.0).all()
    assert sorted(curves.query("kind == 'epoch'")["point"].unique()) == [1.0, 2.0]
    assert "id='fig-frontier'" in html and "id='fig-trajectories'" in html
    stats = pd.read_parquet(study / "tables/stats.parquet")
    assert {tuple(p) for p in stats[["method_a", "method_b"]].drop_duplicates().to_numpy()} == {
        ("full", "lora"), ("full", "lp-ft"), ("lora", "lp-ft")}
    # the published analyses run in every study: drift vs in-domain accuracy, CKA vs drift, probe sensitivity
    correlations = pd.read_parquet(study / "tables/correlations.parquet")
    assert len(correlations.query("x == 'drift_entropy_pct' and y == 'best_select_acc'")) == 2
    relations = pd.read_parquet(study / "tables/cka_entropy.parquet")
    assert set(relations["level"]) == {"run", "layer"} and set(relations["pairing"]) >= {"same_layer", "published_offset"}
    sensitivity = pd.read_parquet(study / "tables/probe_sensitivity.parquet")
    assert len(sensitivity.query("method == 'pretrained'")) == 2 * 2  # datasets x (entropy, rollout entropy)
    assert sensitivity.query("method != 'pretrained'")["n_probes"].eq(5).all()
    assert "id='relations'" in html and "id='sensitivity'" in html and "Not measured" not in html
    # the effect is stated per dataset in a generated sentence carrying the run's own numbers
    headlines = [f for f in json.loads((study / "tables/findings.json").read_text()) if f["kind"] == "headline"]
    assert {f["dataset"] for f in headlines} == {"world-eurosat", "world-pets"}
    for finding in headlines:
        widest = finding["values"]["widest"]
        assert f"{100 * widest['zs_top1_mean_lora']:.1f}%" in finding["sentence"]
        assert str(escape(finding["sentence"])) in html


# Wall-clock measurements (column or key names), and the digests of the records holding them,
# differ between any two runs.
TIMING = re.compile(r"(^|_)(time_s|train_s|images_per_s)(_|$)")
DIGESTS = ("_integrity", "clipdrift_digest")


def _usage(study) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted((study / "benchmarks").rglob("*.usage.json"))]


def _flat(value, prefix=""):
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flat(item, f"{prefix}{key}.").items()}
    if isinstance(value, list):
        return {k: v for index, item in enumerate(value) for k, v in _flat(item, f"{prefix}{index}.").items()}
    return {prefix.rstrip("."): value}


def _untimed(record: dict) -> dict:
    return {key: value for key, value in _flat(record).items()
            if not TIMING.search(key.rsplit(".", 1)[-1]) and not set(key.split(".")) & set(DIGESTS)}


def _safetensors(path):
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        metadata = {key: json.loads(value) if value.startswith(("{", "[")) else value
                    for key, value in handle.metadata().items()}
        return {key: handle.get_tensor(key) for key in handle.keys()}, metadata


def test_warm_and_cold_jobs_give_bit_identical_results(study_dir, cold_study_dir):
    import torch

    warm, cold = study_dir / STUDY, cold_study_dir / STUDY
    assert {record["mode"] for record in _usage(warm)} == {"warm"}, "every job of the warm study ran warm"
    assert {record["mode"] for record in _usage(cold)} == {"cold"}
    assert all("CLIPDRIFT_WARM=0" in record["detail"] for record in _usage(cold))
    # every file but the study-wide summaries (tables, report: the grids differ) and the timings
    files = sorted(path.relative_to(cold) for path in cold.rglob("*") if path.is_file()
                   and path.parts[len(cold.parts)] not in ("logs", "benchmarks", "report", "tables")
                   and path.name != "weight_overlap.parquet")  # a summary of the study's runs too
    assert {str(path) for path in files} >= {f"runs/{dataset}/{method}/lr{COLD_LR}/seed7/history.json"
                                            for dataset in ("world-eurosat", "world-pets")
                                            for method in ("full", "lora", "lp-ft")}
    assert not any("lr1e-04" in str(path) for path in files)
    compared = {".safetensors": 0, ".parquet": 0, ".json": 0, ".csv": 0}
    for relative in files:
        a, b = warm / relative, cold / relative
        if relative.suffix == ".safetensors":
            (tensors_a, meta_a), (tensors_b, meta_b) = _safetensors(a), _safetensors(b)
            assert tensors_a.keys() == tensors_b.keys(), relative
            assert all(tensors_a[k].dtype == tensors_b[k].dtype and torch.equal(tensors_a[k], tensors_b[k])
                       for k in tensors_a), relative
            assert _untimed(meta_a) == _untimed(meta_b), relative
        elif relative.suffix in (".parquet", ".csv"):
            read = pd.read_parquet if relative.suffix == ".parquet" else pd.read_csv
            frame_a, frame_b = read(a), read(b)
            untimed = [column for column in frame_a.columns if not TIMING.search(column)]
            pd.testing.assert_frame_equal(frame_a[untimed], frame_b[untimed], check_exact=True, obj=str(relative))
        elif relative.suffix == ".json":
            assert _untimed(json.loads(a.read_text())) == _untimed(json.loads(b.read_text())), relative
        else:
            continue
        compared[relative.suffix] += 1
    assert compared[".safetensors"] >= 5 * RUNS // 2 and compared[".parquet"] > 3 * RUNS // 2, compared


def test_the_warm_study_left_no_server_and_accounted_for_every_job(study_dir):
    assert wait_until(lambda: not server_pids(study_dir), 10), "the server exits once its workflow has ended"
    log = (location(study_dir) / LOG_FILE).read_text()
    assert "every workflow it served has ended" in log and log.count(" ended: ") == len(_usage(study_dir / STUDY))
    for record in _usage(study_dir / STUDY):
        assert record["ok"] and 0 < record["startup_s"] < record["s"] and record["cpu_s"] > 0
        assert record["max_rss_mb"] > 100  # the child's own peak, the imported stack included


def test_ctrl_c_on_snakemake_fails_the_running_jobs_and_a_rerun_completes_the_study(study_dir, tmp_path):
    workdir = tmp_path / "interrupted"
    workdir.mkdir()
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory",
               str(workdir), "--cores", "2", "--configfile", TEST_CONFIG]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = subprocess.Popen(command, start_new_session=True, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    log = location(workdir) / LOG_FILE
    # interrupt while fine-tunes run in the server's children, as Ctrl-C does: the whole group
    assert wait_until(lambda: log.exists() and "rule finetune, client" in log.read_text(), 600), run.stderr.read()
    os.killpg(run.pid, signal.SIGINT)
    _, stderr = run.communicate(timeout=300)
    assert run.returncode != 0
    assert wait_until(lambda: not server_pids(workdir), 15)
    running = [line for line in log.read_text().splitlines() if "rule finetune, client" in line]
    interrupted = [line.split()[3].rstrip(":") for line in running]
    ended = log.read_text().count(" ended: ")
    assert ended >= len(interrupted)  # every child was reaped, none left behind
    snakemake(workdir, "--unlock")
    result = snakemake(workdir, "--cores", "2", "--configfile", TEST_CONFIG, "--rerun-incomplete")
    assert result.returncode == 0, stderr[-3000:] + result.stderr[-5000:]
    finished, reference = (pd.read_parquet(d / STUDY / "tables/runs.parquet") for d in (workdir, study_dir))
    columns = [column for column in reference.columns if not TIMING.search(column)]
    pd.testing.assert_frame_equal(finished[columns], reference[columns], check_exact=True)


def test_the_documented_artifacts_are_the_ones_a_run_writes(study_dir):
    from artifact_docs import documented_json, documented_names, key_paths

    study = study_dir / STUDY
    run = "world-pets/lora/lr1e-03/seed7"
    for name, path in (("history", f"runs/{run}/history.json"), ("zeroshot", f"zeroshot/{run}.json")):
        written = json.loads((study / path).read_text())
        assert key_paths(written) == key_paths(documented_json(name)), name
    usage = json.loads((study / f"benchmarks/finetune/{run}.usage.json").read_text())
    assert key_paths(usage) == key_paths(documented_json("usage"))
    for name in ("attention", "cka", "probe_sensitivity", "weights", "intruder_sweep"):
        columns = list(pd.read_parquet(study / f"metrics/{name}/{run}.parquet").columns)
        assert columns == documented_names(f"<!-- columns: metrics/{name} -->"), name
    overlap = list(pd.read_parquet(study / "metrics/weight_overlap.parquet").columns)
    assert overlap == documented_names("<!-- columns: metrics/weight_overlap -->")
    assert list(pd.read_parquet(study / f"curves/{run}.parquet").columns) == documented_names("<!-- columns: curves -->")
    for line in (REPO / "docs/artifacts.md").read_text().split("<!-- tables -->", 1)[1].strip().splitlines()[2:]:
        if not line.startswith("|"):
            break
        table, _, leading = line.split("|")[1:4]
        columns = list(pd.read_parquet(study / f"tables/{table.strip(' `')}.parquet").columns)
        documented = [c.strip(" `") for c in leading.split(",")]
        assert columns[:len(documented)] == documented, table
    from clipdrift.report.names import FIGURES

    for figure in documented_names("<!-- figures -->"):
        if FIGURES[figure].needs in ("trace", "intervention"):  # not in the test study: the variants study draws them
            assert not (study / f"report/{figure}.png").exists()
            continue
        assert (study / f"report/{figure}.png").stat().st_size > 0 and (study / f"report/{figure}.svg").exists()
        assert (study / f"report/captions/{figure}.rst").read_text() == FIGURES[figure].caption + "\n"


def test_snakemakes_own_report_holds_every_figure_with_the_caption_the_page_gives_it(study_dir, tmp_path):
    import zipfile

    from clipdrift.report.names import FIGURES

    archive = tmp_path / "report.zip"
    result = snakemake(study_dir, "--configfile", TEST_CONFIG, "--report", str(archive))
    assert result.returncode == 0, result.stderr[-3000:]
    with zipfile.ZipFile(archive) as report:
        text = " ".join(report.read(name).decode("utf-8", "replace") for name in report.namelist()
                        if name.endswith((".html", ".js")))
    drawn = [name for name in FIGURES if (study_dir / STUDY / f"report/{name}.png").exists()]
    assert drawn and all(FIGURES[name].caption.split(":")[0][:40] in text for name in drawn), drawn


def test_nothing_reruns_when_nothing_changed(study_dir):
    assert _plan(study_dir) == {}


def test_a_metric_setting_reruns_that_metric_and_the_report_only(study_dir):
    override = _override(study_dir, "metric.yaml", "metrics:\n  rollout_alpha: 0.3\n")
    plan = _plan(study_dir, override)
    assert plan == {"probe_reference": 2, "extract": RUNS, "curves": RUNS, "aggregate": 1, "report": 1, "all": 1}


def _edited_package(tmp_path, module: str, text: str) -> dict:
    """A copy of the package with ``text`` appended to ``module``, as a PYTHONPATH environment."""
    import clipdrift

    source = tmp_path / "src" / "clipdrift"
    shutil.copytree(os.path.dirname(clipdrift.__file__), source, ignore=shutil.ignore_patterns("__pycache__"))
    with open(source / module, "a") as handle:
        handle.write(text)
    return {"PYTHONPATH": str(tmp_path / "src")}


DOWNSTREAM = {"aggregate": 1, "report": 1, "all": 1}
ZEROSHOT_JOBS = {"zeroshot_classifier": 2, "zeroshot": RUNS, "zeroshot_pretrained_indomain": 2}
DRIFT_JOBS = {"probe_reference": 2, "extract": RUNS}
WEIGHT_JOBS = {"weight_reference": 1, "weights": RUNS, "weight_overlap": 1}


@pytest.mark.parametrize("module, plan", [
    ("report/figures.py", {"report": 1, "all": 1}),  # a figure: the report only
    ("pipeline/jobs/gpuslots.py", {}),  # which GPU a job gets: nothing
    ("pipeline/jobs/runner.py", {}),  # the runner's logging and plumbing: nothing
    ("measure/zeroshot.py", {**ZEROSHOT_JOBS, "curves": RUNS, **DOWNSTREAM}),  # no fine-tune, no extraction
    ("measure/attention.py", {**DRIFT_JOBS, "curves": RUNS, **DOWNSTREAM}),  # no fine-tune, no zero-shot
    # zero-shot scoring imports the runtime for its model input: its jobs rerun too
    ("measure/runtime.py", {**DRIFT_JOBS, **ZEROSHOT_JOBS, "curves": RUNS, **DOWNSTREAM}),
    ("measure/weights.py", {**WEIGHT_JOBS, **DOWNSTREAM}),  # the weight-space jobs only
])
def test_a_semantic_edit_plans_exactly_the_jobs_whose_code_it_changes(study_dir, tmp_path, module, plan):
    env = _edited_package(tmp_path, module, "\n_EDITED = True  # a change of meaning\n")
    assert _plan(study_dir, env=env) == plan


def test_a_comment_or_docstring_edit_reruns_nothing(study_dir, tmp_path):
    env = _edited_package(tmp_path, "data/real.py", "\n# a comment about the data\n")
    assert _plan(study_dir, env=env) == {}


def test_the_weight_space_drift_added_to_a_finished_study_plans_only_its_jobs_and_the_summary(study_dir, tmp_path):
    # a copy of the study, finished without the weight-space drift (its summary rerun without it)
    copy = tmp_path / "study"
    shutil.copytree(study_dir, copy, ignore=shutil.ignore_patterns("*.sock"), symlinks=True)
    off = _override(copy, "no-weights.yaml", "weights:\n  enabled: false\n")
    assert _plan(copy, off) == DOWNSTREAM  # turning it off reruns the summary only
    result = snakemake(copy, "--cores", "2", "--configfile", TEST_CONFIG, off)
    assert result.returncode == 0, result.stderr[-3000:]
    for path in [copy / STUDY / "references/weights.safetensors", copy / STUDY / "metrics/weight_overlap.parquet",
                 *(copy / STUDY / "metrics" / name for name in ("weights", "intruder_sweep", "weight_subspaces"))]:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    assert _plan(copy) == {**WEIGHT_JOBS, **DOWNSTREAM}  # turned on: its own jobs and the summary, nothing else
    changed = _override(study_dir, "top-k.yaml", "weights:\n  top_k: 5\n")
    assert _plan(study_dir, changed) == {"weights": RUNS, "weight_overlap": 1, **DOWNSTREAM}
    intervened = _override(study_dir, "intervention.yaml", "weights:\n  intervention: {enabled: true}\n")
    assert _plan(study_dir, intervened) == {"intervention": RUNS, **DOWNSTREAM}


def test_an_alpha_value_or_a_kept_epoch_more_plans_only_curve_jobs(study_dir):
    alpha = _override(study_dir, "alpha.yaml", "curves:\n  alphas: [0, 0.25, 0.5, 1]\n")
    assert _plan(study_dir, alpha) == {"curves": RUNS, "aggregate": 1, "report": 1, "all": 1}
    # measuring fewer kept epochs reruns no fine-tune either: their weights are kept
    epochs = _override(study_dir, "epochs-measured.yaml", "curves:\n  epochs: [2]\n")
    # the weight-space drift is measured at the curves' epochs too
    assert _plan(study_dir, epochs) == {"curves": RUNS, "weights": RUNS, "weight_overlap": 1, **DOWNSTREAM}


def test_trajectories_off_rerun_no_finetune_and_on_rerun_those_without_kept_weights(study_dir, tmp_path):
    off = _override(study_dir, "no-trajectories.yaml", "curves:\n  epochs: []\n")
    plan = _plan(study_dir, off)
    assert plan == {"curves": RUNS, "weights": RUNS, "weight_overlap": 1, **DOWNSTREAM}  # these measure less
    # turning them on: the curve jobs now ask for epochs, and a run whose weights were never kept
    # (as in a study finished without trajectories) is retrained, saying why
    kept = study_dir / STUDY / "runs/world-pets/full/lr1e-03/seed7/epochs"
    hidden = tmp_path / "epochs"
    shutil.move(kept, hidden)
    try:
        result = _dry_run(study_dir, _override(study_dir, "second-epoch.yaml", "curves:\n  epochs: [2]\n"))
        plan = planned_jobs(result)
        assert plan["finetune"] == 1 and plan["curves"] == plan["weights"] == RUNS
        assert "Missing output files: results/test/runs/world-pets/full/lr1e-03/seed7/epochs" in result.stdout
    finally:
        shutil.move(hidden, kept)


def test_a_new_seed_runs_only_its_own_finetunes(study_dir):
    result = _dry_run(study_dir, _override(study_dir, "seeds.yaml", "seeds: [7, 8]\n"))
    plan = planned_jobs(result)
    assert plan["finetune"] == plan["extract"] == plan["zeroshot"] == plan["curves"] == plan["weights"] == RUNS
    assert plan["weight_overlap"] == 1 and "weight_reference" not in plan  # the pretrained SVDs are the study's
    # best.safetensors is a fine-tune output only (the aggregate job lists every history as input)
    assert "seed8/best.safetensors" in result.stdout and "seed7/best.safetensors" not in result.stdout
    assert "prepare_task" not in plan and "pretrain_backbone" not in plan


def test_a_training_change_reruns_the_affected_finetunes(study_dir):
    datasets = (
        "datasets:\n"
        "  - {name: world-eurosat, epochs: 3, sizes: {train: 200, val: 50, test: 50}}\n"
        "  - {name: world-pets, epochs: 2, sizes: {train: 148, val: 74, test: 74}}\n"
    )
    result = _dry_run(study_dir, _override(study_dir, "epochs.yaml", datasets))
    plan = planned_jobs(result)
    assert plan["finetune"] == RUNS // 2  # the world-eurosat runs only
    assert "runs/world-pets/full/lr1e-03/seed7/best.safetensors" not in result.stdout


@pytest.mark.slurm
def test_the_slurm_profile_runs_the_study_on_a_real_cluster(study_dir, tmp_path):
    require_slurm()
    workdir = tmp_path / "slurm"
    workdir.mkdir()
    # every rule of the study, on one of its two datasets: half the fine-tunes, same DAG shape
    one_dataset = _override(workdir, "eurosat.yaml", (
        "datasets:\n  - {name: world-eurosat, epochs: 2, sizes: {train: 200, val: 50, test: 50}}\n"))
    result = snakemake(
        workdir, "--profile", str(REPO / "profiles/slurm"), "--configfile", TEST_CONFIG, one_dataset,
        "--jobs", "4", "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "1",
        "--slurm-keep-successful-logs",
        "--default-resources", "slurm_partition=debug", "runtime=10", "mem_mb=1500", "cpus_per_task=1",
        "--set-resources", *(f"{rule}:gpu=0" for rule in GPU_RULES),
        "finetune:cpus_per_task=1", "pretrain_backbone:cpus_per_task=2",
        "--set-threads", "finetune=1", "pretrain_backbone=2",
        # no GPU on this node to make a run's jobs take turns (profiles/slurm: gpu, local scope):
        # two CPUs per submission does it instead, so a group job fits the 2-CPU node
        "--set-resource-scopes", "cpus_per_task=local", "--resources", "cpus_per_task=2",
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    # every job went through sbatch (the plugin keeps, when asked, one SLURM log per submission):
    # a run's fine-tune, extraction and zero-shot as one group job (profiles/slurm: groups)
    logs = workdir / ".snakemake/slurm_logs"
    assert sorted(path.name for path in logs.iterdir()) == [
        "group_run_curves_extract_finetune_weights_zeroshot", "rule_aggregate", "rule_prepare_task",
        "rule_prepare_zeroshot_task", "rule_pretrain_backbone", "rule_probe_reference", "rule_report",
        "rule_weight_overlap", "rule_weight_reference", "rule_zeroshot_classifier", "rule_zeroshot_pretrained_indomain"]
    assert len(list((logs / "group_run_curves_extract_finetune_weights_zeroshot").rglob("*.log"))) == RUNS // 2
    assert len(list((logs / "rule_pretrain_backbone").rglob("*.log"))) == 1
    # each job is its own allocation there: no job server, and every job says so
    assert all(record["mode"] == "cold" and "SLURM job" in record["detail"] for record in _usage(workdir / STUDY))
    key = ["dataset", "method", "lr", "seed"]
    local = pd.read_parquet(study_dir / STUDY / "tables/runs.parquet").query("dataset == 'world-eurosat'")
    remote = pd.read_parquet(workdir / STUDY / "tables/runs.parquet")
    assert len(remote) == RUNS // 2
    for column in ("best_select_acc", "final_test_acc", "zs_top1", "drift_entropy_pct"):
        pd.testing.assert_series_equal(remote.set_index(key)[column].sort_index(),
                                       local.set_index(key)[column].sort_index(), atol=1e-6)


VARIANTS = ("methods:\n  - full\n  - {name: full-floor-0.1, method: full, regulariser: {kind: entropy_floor, weight: 0.1}}\n"
            "  - {name: lora-r4, method: lora, lora: {r: 4}}\ntraining:\n  entropy_trace_per_epoch: 2\n"
            "weights:\n  intervention: {enabled: true, lambdas: [0, 1]}\n")


@pytest.fixture(scope="module")
def variants_dir(tmp_path_factory):
    """The test study with a regularised Full FT and a LoRA rank variant beside Full FT, run once."""
    workdir = tmp_path_factory.mktemp("variants")
    override = _override(workdir, "variants.yaml", VARIANTS)
    result = snakemake(workdir, "--cores", "2", "--configfile", TEST_CONFIG, override)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    return workdir


def test_a_study_with_variants_runs_end_to_end_with_the_variants_as_methods(variants_dir):
    runs = pd.read_csv(variants_dir / STUDY / "tables/runs.csv")
    assert sorted(runs["method"].unique()) == ["full", "full-floor-0.1", "lora-r4"]
    assert runs["zs_top1"].notna().all() and runs["drift_entropy_pct"].notna().all()
    assert runs["trace_min_drift_pct"].notna().all()  # every run traced its entropy
    history = json.loads((variants_dir / STUDY / "runs/world-eurosat/full-floor-0.1/lr1e-03/seed7/history.json").read_text())
    assert all(epoch["train_penalty"] >= 0 for epoch in history["epochs"])
    lora = json.loads((variants_dir / STUDY / "runs/world-eurosat/lora-r4/lr1e-03/seed7/history.json").read_text())
    assert lora["trainable_params"]["adapter"] == 3 * 2 * 4 * (96 + 96)  # 3 blocks x (q, v) x r 4 x (in + out, width 96)
    page = (variants_dir / STUDY / "report/index.html").read_text()
    assert "full-floor-0.1" in page and "Is drift causal?" in page and "Collapse onset" in page
    assert (variants_dir / STUDY / "report/collapse_traces.png").stat().st_size > 0
    traces = pd.read_csv(variants_dir / STUDY / "tables/traces.csv")
    assert set(traces["method"]) == {"full", "full-floor-0.1", "lora-r4"} and traces["step"].min() == 1
    stats = pd.read_csv(variants_dir / STUDY / "tables/stats.csv")
    assert set(zip(stats["method_a"], stats["method_b"])) == {("full", "full-floor-0.1")}  # lora-r4's method is absent
    assert "cohens_d" in stats  # NaN here: one seed per cell gives no spread (the unit tests check its values)
    _the_intervention_ran_on_every_run(variants_dir / STUDY, runs)


def _the_intervention_ran_on_every_run(study, runs):
    from artifact_docs import documented_names

    table = pd.read_parquet(study / "metrics/intervention/world-eurosat/lora-r4/lr1e-03/seed7.parquet")
    assert list(table.columns) == documented_names("<!-- columns: metrics/intervention -->")
    kept = table[table["keep"] == 1.0].set_index(["task", "kind"]).drop(columns="weight_distance")
    assert (kept.xs("intruders", level="kind") == kept.xs("uniform", level="kind")).all().all()  # both: the run
    removed = table[table["keep"] == 0.0].pivot(index="task", columns="kind", values="weight_distance")
    assert (removed["intruders"] - removed["uniform"]).abs().max() < 1e-6  # the control at the same distance
    effects = pd.read_csv(study / "tables/intervention_effects.csv")
    assert len(effects) == len(runs) and set(effects["keep"]) == {0.0}  # one seed: no interval, still a row each
    assert (study / "report/intervention_curves.png").stat().st_size > 0


def test_adding_a_variant_to_a_finished_study_plans_only_its_runs_their_measurements_and_the_summary(variants_dir):
    third = _override(variants_dir, "third.yaml", VARIANTS.replace(
        "training:", "  - {name: full-freeze1, method: full, freeze_blocks: 1}\ntraining:"))
    runs = 2 * 2 * 1  # datasets x lrs x seeds of the new variant
    assert _plan(variants_dir, _override(variants_dir, "same.yaml", VARIANTS)) == {}
    assert _plan(variants_dir, third) == {"finetune": runs, "extract": runs, "zeroshot": runs, "curves": runs,
                                          "weights": runs, "weight_overlap": 1, "intervention": runs,
                                          **DOWNSTREAM}
