"""The paper preset's code path, for real: ViT-B/32 (random weights, a test-only override of the
pretrained tag), fabricated EuroSAT / Pets / CIFAR-100 in torchvision's on-disk layouts, one
short epoch. Every rule of the paper preset runs. And offline without cached weights, the
preset stops at its first job with the backbone loader's message."""

import json

import pandas as pd
import pytest
import yaml

from fakedata import PETS_BREEDS, accepting_environment, make_cifar100, make_eurosat, make_pets
from workflow_helpers import REPO, snakemake

pytestmark = pytest.mark.slow  # end-to-end workflow runs (minutes)

PAPER = str(REPO / "configs/paper.yaml")
PAPER_RULES = {
    "check_backbone", "prepare_task", "prepare_zeroshot_task", "finetune", "probe_reference", "extract", "zeroshot",
    "zeroshot_classifier", "zeroshot_pretrained_indomain", "curves", "aggregate", "report",
}


def _tiny_datasets() -> list[dict]:
    """The preset's own dataset entries (Pets keeps its val_fraction), one epoch each, EuroSAT
    split to the fabricated size."""
    datasets = yaml.safe_load(open(PAPER))["datasets"]
    for dataset in datasets:
        dataset["epochs"] = 1
        if dataset["name"] == "eurosat":
            dataset["sizes"] = {"train": 20, "val": 10, "test": 10}
    return datasets


OVERRIDE = yaml.safe_dump({
    "backbone": {"pretrained": None},
    "data": {"root": "data", "probe_size": 8},
    "datasets": _tiny_datasets(),
    "learning_rates": [1.0e-5],
    "seeds": [7],
    "training": {"batch_size": 8, "eval_batch_size": 16},
    "metrics": {"batch_size": 8, "probe_sensitivity": {"seeds": [7, 21]}},
    "zeroshot": {"batch_size": 16},
    "curves": {"epochs": [1], "keep_epochs": [1]},  # one epoch to keep here; the preset keeps five of 20/30
})
PETS_TRAINVAL = len(PETS_BREEDS) * 4  # make_pets(trainval_per_class=4)


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("paper")
    data = workdir / "data"
    make_eurosat(data, per_class=4, size=64)
    make_pets(data, trainval_per_class=4, test_per_class=2)
    make_cifar100(data, test_per_class=2)
    (workdir / "override.yaml").write_text(OVERRIDE)
    env = accepting_environment(workdir, data)  # torchvision's MD5 check accepts the fabricated CIFAR-100
    result = snakemake(workdir, "--cores", "2", "--configfile", PAPER, str(workdir / "override.yaml"), env=env)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-6000:]
    return workdir, result


def test_every_rule_of_the_paper_preset_runs_on_vit_b32(paper_run):
    workdir, result = paper_run
    executed = set(__import__("re").findall(r"rule (\w+):", result.stdout + result.stderr))
    assert PAPER_RULES <= executed
    study = workdir / "results/paper"
    backbone = json.loads((study / "backbone/backbone.json").read_text())
    assert backbone["name"] == "ViT-B-32-quickgelu" and backbone["pretrained"] is None
    attention = pd.read_parquet(study / "metrics/attention/eurosat/lora/lr1e-05/seed7.parquet")
    assert sorted(attention.query("layer >= 0")["layer"].unique()) == list(range(12))
    assert sorted(attention.query("head >= 0")["head"].unique()) == list(range(12))
    history = json.loads((study / "runs/pets/full/lr1e-05/seed7/history.json").read_text())
    assert history["selection_split"] == "test" and history["trainable_params"]["image_tower"] > 80_000_000
    lora = json.loads((study / "runs/eurosat/lora/lr1e-05/seed7/history.json").read_text())
    assert lora["trainable_params"]["adapter"] == 294_912 and lora["trainable_params"]["projection"] == 393_216
    zeroshot = json.loads((study / "zeroshot/pretrained/cifar100.json").read_text())
    assert zeroshot["task"] == "cifar100" and zeroshot["templates"] == "single" and zeroshot["n_images"] == 10
    manifest = json.loads((study / "data/eurosat/manifest.json").read_text())
    assert manifest["preprocessing"]["interpolation"] == "bilinear" and manifest["splits"]["train"]["n"] == 20


def test_the_paper_protocol_fixes_hold_on_the_real_code_path(paper_run):
    workdir, result = paper_run
    study = workdir / "results/paper"
    # Pets trains on the whole (fabricated) trainval: no validation carve-out
    manifest = json.loads((study / "data/pets/manifest.json").read_text())
    assert manifest["splits"]["train"]["n"] == PETS_TRAINVAL and manifest["splits"]["val"]["n"] == 0
    history = json.loads((study / "runs/pets/lora/lr1e-05/seed7/history.json").read_text())
    assert history["n_train"] == PETS_TRAINVAL and history["selection_split"] == "test"
    # evaluation in fp32; on this CPU training is fp32 too (the preset's fp16 applies on CUDA)
    assert history["eval_precision"] == "fp32" and history["precision"] == "fp32" and history["skipped_steps"] == 0
    # zero-shot read the best checkpoint with the published class names; drift read the final weights
    [scores] = json.loads((study / "zeroshot/eurosat/full/lr1e-05/seed7.json").read_text())["tasks"]
    assert scores["checkpoint"] == "best" and scores["class_names"] == "published" and scores["task"] == "cifar100"
    pretrained = json.loads((study / "zeroshot/pretrained/cifar100.json").read_text())
    assert pretrained["class_names"] == "published" and pretrained["checkpoint"] is None
    [indomain] = json.loads((study / "zeroshot/pretrained-indomain/pets.json").read_text())["tasks"]
    assert indomain["class_names"] == "readable"  # in-domain baselines unchanged
    jobs = result.stdout + result.stderr
    assert "runs/eurosat/full/lr1e-05/seed7/best.safetensors, results/paper/data/cifar100/test.safetensors" in jobs
    assert "runs/pets/lora/lr1e-05/seed7/final.safetensors, results/paper/data/pets/probe.safetensors" in jobs
    # the kept epoch of a Full FT run is stored in fp16 (curves.snapshot_dtype), LoRA's in fp32
    from clipdrift.core.io import read_safetensors

    for method, dtype in (("full", "float16"), ("lora", "float32")):
        _, metadata = read_safetensors(study / f"runs/pets/{method}/lr1e-05/seed7/epochs/epoch1.safetensors")
        assert metadata["stored_dtype"] == dtype
    curves = pd.read_parquet(study / "curves/pets/full/lr1e-05/seed7.parquet")
    assert list(curves["kind"]) == ["alpha"] * 5 + ["epoch"]
    sensitivity = pd.read_parquet(study / "metrics/probe_sensitivity/pets/lora/lr1e-05/seed7.parquet")
    assert set(sensitivity["probe_seed"]) == {7, 21} and set(sensitivity["state"]) == {"baseline", "final"}


def test_the_paper_report_compares_with_the_published_numbers(paper_run):
    workdir, _ = paper_run
    study = workdir / "results/paper"
    comparison = pd.read_csv(study / "tables/paper_cells.csv")
    assert {"eurosat", "pets"} == set(comparison["dataset"])
    html = (study / "report/index.html").read_text()
    assert "Comparison with the published study" in html
    assert "published 60.2%" in html  # the pretrained CIFAR-100 zero-shot accuracy, side by side
    assert "Correlations within each dataset" in html and "population SDs (ddof 0)" in html
    assert "<strong>published</strong> class names" in html
    correlations = pd.read_csv(study / "tables/paper_correlations.csv")
    assert len(correlations) == 4 and set(correlations["published_n"]) == {40}


def test_offline_paper_run_without_weights_stops_at_the_first_job_with_the_fix(tmp_path):
    data = tmp_path / "data"  # the datasets are there (the run checks them before any job): the weights are not
    make_eurosat(data, per_class=1, size=32)
    make_pets(data, trainval_per_class=1, test_per_class=1)
    make_cifar100(data, test_per_class=1)
    (tmp_path / "data.yaml").write_text("data: {root: data}\n")
    env = {"HF_HOME": str(tmp_path / "empty-hf-cache"), "HF_HUB_OFFLINE": "1"}
    result = snakemake(tmp_path, "--cores", "1", "--configfile", PAPER, str(tmp_path / "data.yaml"), env=env)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Pretrained weights 'ViT-B-32-quickgelu' / 'openai' are not available" in output
    assert "HF_HOME=" in output and "backbone.pretrained" in output
    assert "Traceback" not in output
    assert not (tmp_path / "results/paper/data").exists()  # no data job ran before the backbone check
