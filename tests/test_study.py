"""The workflow scripts' common runner: logging split between job log and terminal, clean user errors."""

import json
import logging
import subprocess
import sys
from types import SimpleNamespace

import pytest

from clipdrift.core.errors import UserFacingError
from clipdrift.pipeline.jobs.runner import run_script

from workflow_helpers import REPO

log = logging.getLogger("clipdrift.test")


@pytest.fixture(autouse=True)
def restore_root_logging():
    """run_script configures the root logger for a job process; put the test process's back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers:
        handler.close()
    root.handlers[:], root.level = handlers, level


def _job(tmp_path):
    return SimpleNamespace(log=[str(tmp_path / "job.log")], threads=1, rule="some_rule")


def test_the_job_log_gets_everything_and_the_terminal_only_warnings(tmp_path, capsys):
    def main(smk):
        log.info("chatty progress detail")
        log.warning("something the user must see")

    run_script(_job(tmp_path), main)
    written = (tmp_path / "job.log").read_text()
    terminal = capsys.readouterr().err
    assert "chatty progress detail" in written and "something the user must see" in written
    assert "something the user must see" in terminal and "chatty progress detail" not in terminal


def test_a_user_error_exits_with_its_message_and_no_traceback(tmp_path, capsys):
    def main(smk):
        raise UserFacingError("config key 'x' is wrong: set it to y")

    with pytest.raises(SystemExit) as stopped:
        run_script(_job(tmp_path), main)
    assert stopped.value.code == 1
    terminal = capsys.readouterr().err
    assert "config key 'x' is wrong: set it to y" in terminal and "Traceback" not in terminal
    assert "config key 'x' is wrong" in (tmp_path / "job.log").read_text()


def test_without_a_log_file_the_terminal_gets_everything(tmp_path, capsys):
    run_script(SimpleNamespace(log=[], threads=1, rule="r"), lambda smk: log.info("detail"))
    assert "detail" in capsys.readouterr().err


def test_model_configs_read_without_open_clip_are_the_ones_open_clip_knows():
    import open_clip

    import clipdrift.model.backbones  # noqa: F401 - registers the packaged configs with open_clip
    from clipdrift.pipeline.plan import backbone_image_size, model_configs

    configs = model_configs()
    # a fresh interpreter: other tests register tiny test-only configs with this one's open_clip
    code = "import json, open_clip, clipdrift.model.backbones; print(json.dumps(open_clip.list_models()))"
    known = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert set(configs) == set(known) and "clipdrift-tiny" in configs
    for name in ("ViT-B-32-quickgelu", "clipdrift-tiny", "ViT-L-14-336"):
        assert configs[name] == open_clip.get_model_config(name)
    assert backbone_image_size(configs["ViT-B-32-quickgelu"]) == 224
    assert backbone_image_size(configs["clipdrift-tiny"]) == 32


def test_the_study_config_check_does_not_import_torch():
    code = (
        "import sys; from clipdrift.pipeline.plan import check_study_config; "
        "from clipdrift.pipeline.protocol import load_study_config; "
        "check_study_config(load_study_config('workflow/schemas/config.schema.yaml', 'config.yaml')); "
        "print(sorted(m for m in ('torch', 'open_clip') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert result.stdout.strip() == "[]"
