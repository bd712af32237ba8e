"""A study on the researcher's own terms, from a config file alone: an image folder as the
fine-tuning task, a held-out suite of two tasks, torchvision datasets and another backbone."""

import json
import time

import pandas as pd
import pytest
from fakefolders import make_imagefolder

from workflow_helpers import REPO, planned_jobs, snakemake

TEST_CONFIG = str(REPO / "configs/test.yaml")
STUDY = "results/test"

TORCHVISION_SUITE = """\
study: byo
backbone: {source: open_clip, name: ViT-B-16, pretrained: openai}
datasets:
  - {name: dtd, epochs: 1}
  - {name: sat, torchvision: eurosat, epochs: 1}
methods: [full, lora]
learning_rates: [1.0e-5]
seeds: [7]
zeroshot:
  tasks: [cifar100, {name: flowers, torchvision: flowers102, templates: ["a photo of a {}", "a flower called {}"]}]
  sizes: null
  templates: benchmark
"""


def test_a_torchvision_dataset_a_two_task_suite_and_vit_b16_plan_in_seconds_without_data_or_weights(tmp_path):
    config = tmp_path / "byo.yaml"
    config.write_text(TORCHVISION_SUITE)
    started = time.monotonic()
    result = snakemake(tmp_path, "-n", "--configfile", str(config))
    seconds = time.monotonic() - started
    jobs = planned_jobs(result)
    print(f"\nplanned {sum(jobs.values())} jobs in {seconds:.1f} s")
    assert jobs["prepare_task"] == 2 and jobs["prepare_zeroshot_task"] == 2 and jobs["zeroshot_classifier"] == 2
    assert jobs["check_backbone"] == 1 and jobs["finetune"] == 4 and jobs["zeroshot"] == 4
    assert not (tmp_path / "results").exists()  # a dry run touches nothing: no data, no weights, no download


def test_missing_data_stops_the_run_before_any_job_naming_every_missing_task(tmp_path):
    config = tmp_path / "missing.yaml"
    mine = f"  - {{name: mine, source: imagefolder, root: {tmp_path}/nowhere, epochs: 1}}\n"
    config.write_text(TORCHVISION_SUITE.replace("  - {name: sat, torchvision: eurosat, epochs: 1}\n", mine))
    result = snakemake(tmp_path, "--cores", "1", "--configfile", str(config))
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Data error:" in output
    for task in ("[dtd] Describable Textures", "[mine] image folder of task 'mine' does not exist",
                 "[cifar100] CIFAR-100 dataset is missing", "[flowers] Oxford Flowers-102 dataset is missing"):
        assert task in output, task
    assert f"Expected layout: {tmp_path}/nowhere/<class>/<image>" in output
    assert not (tmp_path / "results" / "byo" / "logs").exists()  # no job started


# ---- the test study on an image folder written here, with the two-task held-out suite ------------

HELDOUT = ("world-cifar100", "holdout-flat", "holdout-split")


@pytest.fixture(scope="module")
def folder_study(tmp_path_factory):
    """An image folder as the fine-tuning task, and a held-out suite of a world task and two image
    folders, one in each documented layout: root/<class>/ and root/test/<class>/ beside train/."""
    workdir = tmp_path_factory.mktemp("folder-study")
    root = make_imagefolder(workdir / "my-images", classes=("red_ones", "green_ones", "blue_ones"), per_class=30)
    flat = make_imagefolder(workdir / "holdout-flat", classes=("cyan-ish", "magenta_ish"), per_class=12)
    split = make_imagefolder(workdir / "holdout-split", classes=("dark_red", "light-green"), splits={"train": 3, "test": 9})
    override = workdir / "folder.yaml"
    override.write_text(
        "datasets:\n"
        f"  - {{name: colours, source: imagefolder, root: {root}, epochs: 2,\n"
        "     classes: {red_ones: red, green_ones: green, blue_ones: blue}}\n"
        "methods: [full, lora]\n"
        "zeroshot:\n"
        "  tasks:\n"
        "    - world-cifar100\n"
        f"    - {{name: holdout-flat, root: {flat}, templates: ['a photo of a {{}}', 'a {{}} square']}}\n"
        f"    - {{name: holdout-split, root: {split}, templates: ['a photo of a {{}}']}}\n")
    result = snakemake(workdir, "--cores", "2", "--configfile", TEST_CONFIG, str(override))
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    return workdir


@pytest.mark.slow
def test_an_image_folder_study_runs_end_to_end_and_reports_each_tasks_retention(folder_study):
    study = folder_study / STUDY
    manifest = json.loads((study / "data/colours/manifest.json").read_text())
    assert manifest["class_names"] == ["blue", "green", "red"] and manifest["source"].startswith("image folder")
    assert sum(entry["n"] for name, entry in manifest["splits"].items() if name != "probe") == 90
    assert "red_ones/0.png" in {i for entry in manifest["splits"].values() for i in entry.get("ids", [])}
    zeroshot = pd.read_csv(study / "tables/zeroshot.csv")
    assert set(zeroshot["task"]) == set(HELDOUT) and len(zeroshot) == 2 * 2 * 3
    assert zeroshot["retention"].notna().all()
    flat = json.loads((study / "data/holdout-flat/manifest.json").read_text())
    assert flat["split_rule"] == "all of its images (a held-out task)" and list(flat["splits"]) == ["test"]
    assert flat["splits"]["test"]["n"] == 24 and flat["class_names"] == ["cyan ish", "magenta ish"]
    split = json.loads((study / "data/holdout-split/manifest.json").read_text())
    assert split["split_rule"] == "the official test split (a held-out task)" and split["splits"]["test"]["n"] == 18
    assert all(i.startswith("test/") for i in split["splits"]["test"]["ids"])  # train/ beside it is never read
    runs = pd.read_csv(study / "tables/runs.csv").set_index(["method", "lr"])
    suite = zeroshot.groupby(["method", "lr"])["retention"].mean()
    for key, mean in suite.items():
        assert runs.loc[key, "zs_retention"] == pytest.approx(mean)
    page = (study / "report/index.html").read_text()
    for text in ("Held-out suite", "world-cifar100 retention (%)", "holdout-flat retention (%)",
                 "holdout-split retention (%)", "suite mean retention (%)", "fig-suite_retention"):
        assert text in page, text
    assert (study / "report/suite_retention.png").stat().st_size > 0
    assert len(pd.read_csv(study / "tables/curve_tasks.csv")["task"].unique()) == 3
