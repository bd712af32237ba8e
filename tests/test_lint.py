"""The code and the workflow lint clean: ruff (pyproject.toml's rules) and snakemake --lint."""

import shutil
import subprocess

import pytest

from workflow_helpers import REPO, snakemake


def test_ruff_finds_nothing():
    if shutil.which("ruff") is None:
        pytest.fail("ruff is not installed: python3 -m pip install -e '.[test]'")
    result = subprocess.run(["ruff", "check", "--output-format", "concise", "."], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_snakemake_lint_finds_nothing(tmp_path):
    result = snakemake(tmp_path, "--lint")
    assert result.returncode == 0 and "Congratulations" in result.stdout + result.stderr, result.stdout + result.stderr
