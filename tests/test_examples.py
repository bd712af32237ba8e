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

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fakefolders import make_imagefolder

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


def fabricate_paths(config, workdir: Path, key: str = ""):
    """The config with each absolute path replaced by fabricated data in the layout its key expects."""
    if isinstance(config, dict):
        return {name: fabricate_paths(value, workdir, name) for name, value in config.items()}
    if isinstance(config, list):
        return [fabricate_paths(value, workdir, key) for value in config]
    if isinstance(config, str) and config.startswith("/"):
        target = workdir / "fabricated" / config.strip("/").replace("/", "_")
        if key == "root" and not target.exists():
            make_imagefolder(target, classes=("class_a", "class_b"), per_class=4)
        target.mkdir(parents=True, exist_ok=True)
        return str(target)
    return config


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
    broken["methods"] = ["full", "bitfit"]  # an edit the workflow does not know
    example = tmp_path / "broken.yaml"
    example.write_text(yaml.safe_dump(broken))
    result = snakemake(tmp_path, "-n", f"--configfile={example}")
    assert result.returncode != 0 and "methods[1] is 'bitfit'" in result.stdout + result.stderr


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
