"""Every example in README.md and docs/ runs, read from the files themselves (no copy kept here).

- A ``yaml`` block is a study config (it has ``study:``) or a fragment over the paper preset (the
  study whose backbone, ViT-B/32, the fragments' numbers are written for): its
  absolute paths are pointed at data fabricated here in the documented layout (an image folder for
  a ``root:``, a scratch folder for ``data.root``), and ``snakemake -n`` must plan it.
- A ``bash`` block's ``snakemake`` commands are planned with ``-n`` (profiles and presets as
  written, in a scratch working directory); installing and the test command itself are what CI's
  clean clone runs (.ci/run); any other command must say why it is not run, in a comment the
  test reads (``# not run by the tests: <why>``).
- A ``python`` block is executed, with pretrained weights (which cannot be downloaded here)
  replaced by the same architecture's random ones; numbers its comments state are checked.
"""

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from fakefolders import make_dtd, make_flowers102, make_imagefolder

from clipdrift.core.io import read_safetensors

from fakedata import accepting_environment, make_cifar100
from workflow_helpers import REPO, planned_jobs, snakemake

DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
NOT_RUN = "# not run by the tests:"
CI_RUNS = ("python3 -m pip install", "python3 -m pytest")  # .ci/run runs these from a clean clone


def blocks(language: str) -> list[tuple[str, int, str]]:
    """(document, line, text) of every fenced block of ``language`` in the documents."""
    found = []
    for path in DOCUMENTS:
        for match in re.finditer(rf"^```{language}\n(.*?)^```", path.read_text(), re.MULTILINE | re.DOTALL):
            line = path.read_text()[:match.start()].count("\n") + 1
            found.append((path.name, line, match.group(1)))
    return found


def _id(block) -> str:
    return f"{block[0]}:{block[1]}"


def test_the_documents_hold_examples_of_each_kind():
    assert len(blocks("yaml")) >= 2 and len(blocks("bash")) >= 3 and len(blocks("python")) >= 1


# ---- configs -----------------------------------------------------------------------------------


def fabricate_paths(config, workdir: Path, per_class: int = 4, task: dict | None = None):
    """The config with each absolute path replaced by a fabricated folder; a task's ``root:``
    becomes an image folder ``root/<class>/<images>`` with the classes the task names."""
    if isinstance(config, dict):
        entry = config if {"name", "root"} <= config.keys() else None
        return {key: fabricate_paths(value, workdir, per_class, entry if key == "root" else None)
                for key, value in config.items()}
    if isinstance(config, list):
        return [fabricate_paths(value, workdir, per_class) for value in config]
    if isinstance(config, str) and config.startswith("/"):
        target = workdir / "fabricated" / config.strip("/").replace("/", "_")
        if task is not None and not target.exists():
            make_imagefolder(target, classes=_folder_classes(task), per_class=per_class)
        target.mkdir(parents=True, exist_ok=True)
        return str(target)
    return config


def _folder_classes(task: dict) -> list[str]:
    """Class folders for a task entry: the folder names its ``classes:`` maps, else as many as its
    ``class_names:`` lists (names in sorted order, as folders are read), else two."""
    if isinstance(task.get("classes"), dict):
        return list(task["classes"])
    return [f"class_{index:02d}" for index in range(len(task.get("class_names") or [0, 0]))]


@pytest.mark.parametrize("block", blocks("yaml"), ids=_id)
def test_every_config_example_validates_and_plans(block, tmp_path):
    document, line, text = block
    config = fabricate_paths(yaml.safe_load(text), tmp_path)
    example = tmp_path / "example.yaml"
    example.write_text(yaml.safe_dump(config))
    files = [str(example)] if "study" in config else [str(REPO / "configs/paper.yaml"), str(example)]
    result = snakemake(tmp_path, "-n", "--configfile", *files)  # one option: a second --configfile replaces the first
    assert result.returncode == 0, f"{document}:{line} does not plan:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
    jobs = planned_jobs(result)
    assert jobs.get("finetune", 0) > 0 or jobs.get("prepare_task", 0) > 0, (document, line, jobs)


def test_an_example_edited_into_one_that_does_not_plan_fails(tmp_path):
    (_, _, text), *_ = [b for b in blocks("yaml") if "study:" in b[2]]
    broken = fabricate_paths(yaml.safe_load(text), tmp_path)
    broken["methods"] = ["full", "prefix-tuning"]  # an edit the workflow does not know
    example = tmp_path / "broken.yaml"
    example.write_text(yaml.safe_dump(broken))
    result = snakemake(tmp_path, "-n", f"--configfile={example}")
    assert result.returncode != 0 and "methods[1] is 'prefix-tuning'" in result.stdout + result.stderr


def example_under(heading: str) -> str:
    """The first YAML block of README.md under ``heading``."""
    readme = (REPO / "README.md").read_text()
    start = readme.index(f"\n{heading}")
    return next(text for document, line, text in blocks("yaml")
                if document == "README.md" and line > readme[:start].count("\n") + 1)


@pytest.mark.slow
def test_the_bring_your_own_study_example_runs_end_to_end(tmp_path):
    """README's own example, read from README: its image folders and torchvision datasets fabricated
    in their layouts; changed only to what runs here in a minute (a tiny open_clip backbone with
    random weights, one epoch, the last learning rate and the first seed, a small probe)."""
    config = fabricate_paths(yaml.safe_load(example_under("## Bring your own study")), tmp_path, per_class=12)
    torchvision_root = Path(config["data"]["root"])
    make_dtd(torchvision_root, per_split=4)
    make_flowers102(torchvision_root)
    make_cifar100(torchvision_root, test_per_class=4)
    config |= {"backbone": {"source": "open_clip", "name": "clipdrift-tiny", "pretrained": None},
               "learning_rates": config["learning_rates"][-1:], "seeds": config["seeds"][:1]}
    config["data"]["probe_size"] = 8
    for dataset in config["datasets"]:
        dataset["epochs"] = 1
    example = tmp_path / "my-study.yaml"
    example.write_text(yaml.safe_dump(config))
    env = accepting_environment(tmp_path, torchvision_root)  # torchvision's MD5 checks accept fabricated files
    result = snakemake(tmp_path, "--cores", "2", "--configfile", str(example), env=env)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]

    study = tmp_path / "results" / config["study"]
    tasks = [task if isinstance(task, str) else task["name"] for task in config["zeroshot"]["tasks"]]
    zeroshot = pd.read_csv(study / "tables/zeroshot.csv")
    assert sorted(zeroshot["task"].unique()) == sorted(tasks)
    # random weights: retention is undefined exactly where the pretrained model scored nothing
    assert (zeroshot["retention"].isna() == (zeroshot["pretrained_top1"] == 0)).all()
    assert len(zeroshot) == len(config["datasets"]) * len(config["methods"]) * len(tasks)
    [folder] = [entry for entry in config["datasets"] if "root" in entry]
    manifest = json.loads((study / f"data/{folder['name']}/manifest.json").read_text())
    assert manifest["class_names"] == list(folder["classes"].values())
    assert manifest["splits"]["train"]["n"] + manifest["splits"]["val"]["n"] + manifest["splits"]["test"]["n"] == 24
    [holdout] = [task for task in config["zeroshot"]["tasks"] if isinstance(task, dict) and "root" in task]
    held = json.loads((study / f"data/{holdout['name']}/manifest.json").read_text())
    assert held["split_rule"] == "all of its images (a held-out task)" and held["splits"]["test"]["n"] == 24
    _, prompts = read_safetensors(study / f"references/zeroshot/{holdout['name']}.safetensors")  # what it was told
    assert prompts["class_names"] == holdout["class_names"] and prompts["templates"] == holdout["templates"]
    flowers = json.loads((study / "data/flowers/manifest.json").read_text())
    assert flowers["splits"]["test"]["n"] == 102 and len(flowers["class_names"]) == 102
    page = (study / "report/index.html").read_text()
    for task in tasks:
        assert f"{task} retention (%)" in page, task


# ---- commands ----------------------------------------------------------------------------------


def commands() -> list[tuple[str, int, str]]:
    """Every command of every bash block, ``&&`` chains split, with the comment the line carries."""
    found = []
    for document, line, text in blocks("bash"):
        for offset, row in enumerate(text.splitlines()):
            if not row.strip() or row.lstrip().startswith("#"):
                continue
            command, _, comment = row.partition("#")
            for part in command.split("&&"):
                found.append((document, line + 1 + offset, f"{part.strip()}  #{comment}".rstrip(" #")))
    return found


@pytest.mark.parametrize("command", commands(), ids=_id)
def test_every_command_example_plans_or_says_why_it_is_not_run(command, tmp_path):
    document, line, text = command
    words = shlex.split(text.split("  #", 1)[0])
    if text.split("  #", 1)[0].startswith(CI_RUNS):
        return  # the clean clone of CI runs these, as written
    if words[0] != "snakemake":
        assert NOT_RUN in text, f"{document}:{line}: {text!r} runs in no test: run it, or say why ({NOT_RUN} ...)"
        return
    args = [word for word in words[1:] if word not in ("--cores", "all")]
    result = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--snakefile", str(REPO / "Snakefile"),
                             "--directory", str(tmp_path), *args], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{document}:{line}: {text!r} does not plan:\n{result.stderr[-3000:]}"
    assert planned_jobs(result), text


# ---- the science package -----------------------------------------------------------------------


@pytest.mark.parametrize("block", blocks("python"), ids=_id)
def test_every_python_example_runs_with_random_weights_of_the_same_architecture(block):
    document, line, text = block
    code = re.sub(r'BackboneSpec\("([^"]+)", "[^"]+"\)', r'BackboneSpec("\1")', text)  # no download: random weights
    namespace: dict = {}
    last = code.rstrip().splitlines()[-1]
    exec(compile(code, f"{document}:{line}", "exec"), namespace)  # noqa: S102 - the document's own example
    stated = re.search(r"#\s*(.*)$", last)
    if stated and "·" in stated.group(1):  # e.g. "adapter 294,912 · projection 393,216 · head 5,130"
        value = eval(last.split("#", 1)[0], namespace)  # noqa: S307 - the example's last expression
        for part in stated.group(1).split("·"):
            name, number = part.split()
            assert value[name] == int(number.replace(",", "")), (document, line, part, value)
