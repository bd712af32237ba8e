"""The conda environment for cluster users pins what pyproject.toml pins."""

import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _by_name(requirements):
    parsed = [Requirement(r) for r in requirements]
    return {r.name.lower().replace("_", "-"): r.specifier for r in parsed}


def test_conda_env_pins_match_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = _by_name(project["dependencies"] + project["optional-dependencies"]["test"])
    env = yaml.safe_load((ROOT / "envs" / "clipdrift.yaml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    pinned = _by_name([r for r in pip_section if not r.startswith("-")])
    assert pinned == wanted


def test_torch_pins_admit_the_served_versions():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = _by_name(project["dependencies"])
    assert "2.14.1" in pins["torch"] and "0.29.1" in pins["torchvision"]
