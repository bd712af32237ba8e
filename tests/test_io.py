import os
import stat

import pytest

from clipdrift.io import atomic_output, write_json


def test_atomic_output_gives_the_usual_file_mode(tmp_path):
    path = tmp_path / "out.json"
    write_json(path, {"a": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_a_failed_write_leaves_neither_the_output_nor_a_temp_file(tmp_path):
    path = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_output(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_rewrite_keeps_the_finished_result(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("finished")
    with pytest.raises(RuntimeError):
        with atomic_output(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert path.read_text() == "finished" and len(list(tmp_path.iterdir())) == 1
