import json
import os
import re
import stat

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from clipdrift.core.io import (
    METADATA_KEY,
    ArtifactError,
    atomic_output,
    read_json,
    read_safetensors,
    read_table,
    verify_safetensors,
    write_json,
    write_safetensors,
    write_table,
)
from clipdrift.data.split import ImageSplit, read_image_split, write_image_split


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


# ---------------------------------------------------------------------------------------------
# Integrity digests: a tampered, truncated or older artifact is refused, naming the file
# ---------------------------------------------------------------------------------------------

def _replace_once(path, old: bytes, new: bytes) -> None:
    """Edit ``path`` in place, keeping its length (so only the content changes)."""
    data = path.read_bytes()
    assert data.count(old) == 1 and len(old) == len(new), (old, data.count(old))
    path.write_bytes(data.replace(old, new))


def test_safetensors_round_trip_returns_the_callers_metadata(tmp_path):
    tensors = {"a": torch.randn(3, 4), "scalar": torch.tensor(2.0), "empty": torch.zeros(0),
               "flags": torch.ones(2, dtype=torch.bool)}
    write_safetensors(tmp_path / "x.safetensors", tensors, {"kind": "test", "n": 3})
    loaded, metadata = read_safetensors(tmp_path / "x.safetensors")
    assert metadata == {"kind": "test", "n": 3}
    assert loaded.keys() == tensors.keys() and all(torch.equal(loaded[k], v) for k, v in tensors.items())


def test_safetensors_with_a_changed_tensor_byte_is_refused(tmp_path):
    path = tmp_path / "x.safetensors"
    write_safetensors(path, {"a": torch.arange(100, dtype=torch.int64)}, {"kind": "test"})
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # inside the last element
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=f"{re.escape(str(path))}.*damaged.*Delete it and rerun"):
        read_safetensors(path)


def test_safetensors_without_a_digest_is_refused_as_older(tmp_path):
    path = tmp_path / "old.safetensors"
    save_file({"a": torch.zeros(2)}, str(path), metadata={METADATA_KEY: json.dumps({"kind": "test"})})
    with pytest.raises(ArtifactError, match=f"{re.escape(str(path))} carries no integrity digest.*older.*rerun"):
        read_safetensors(path)


def test_missing_safetensors_file_is_refused_by_name(tmp_path):
    with pytest.raises(ArtifactError, match=f"{re.escape(str(tmp_path / 'none.safetensors'))} does not exist"):
        read_safetensors(tmp_path / "none.safetensors")


def test_backbone_weights_written_with_a_digest_still_load_in_open_clip(tmp_path):
    from clipdrift.model.backbones import BackboneSpec, create_clip

    source = create_clip(BackboneSpec("clipdrift-tiny", init_seed=3))
    path = tmp_path / "backbone.safetensors"
    write_safetensors(path, {k: v.contiguous() for k, v in source.state_dict().items()}, {"kind": "backbone"})
    assert verify_safetensors(path) == {"kind": "backbone"}
    loaded = create_clip(BackboneSpec("clipdrift-tiny", str(path)))
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


# Image splits ----------------------------------------------------------------------------------

def _split(n=6):
    images = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return ImageSplit(images, torch.arange(n) % 3, ["cat", "dog", "owl"])


def test_image_split_round_trips(tmp_path):
    split = _split()
    write_image_split(tmp_path / "train.safetensors", split, dataset="toy", split_name="train")
    back = read_image_split(tmp_path / "train.safetensors")
    assert torch.equal(back.images, split.images) and torch.equal(back.labels, split.labels)
    assert back.class_names == ["cat", "dog", "owl"]


def test_image_split_with_a_tampered_class_name_is_refused(tmp_path):
    path = tmp_path / "train.safetensors"
    write_image_split(path, _split(), dataset="toy", split_name="train")
    _replace_once(path, b"owl", b"emu")
    with pytest.raises(ArtifactError, match=f"{re.escape(str(path))} is damaged"):
        read_image_split(path)


def test_image_split_whose_labels_outrun_its_class_names_is_refused(tmp_path):
    path = tmp_path / "train.safetensors"
    write_image_split(path, _split(), dataset="toy", split_name="train")
    tensors, metadata = read_safetensors(path)
    write_safetensors(path, tensors, {**metadata, "class_names": ["cat", "dog"]})  # a valid digest
    message = f"{re.escape(str(path))} is not a usable image split: labels span 0..2 but there are 2 class_names"
    with pytest.raises(ArtifactError, match=message):
        read_image_split(path)


@pytest.mark.parametrize("field, value", [("class_names", "cat,dog,owl"), ("dataset", None), ("split", 3)])
def test_image_split_with_malformed_metadata_is_refused(tmp_path, field, value):
    path = tmp_path / "train.safetensors"
    write_image_split(path, _split(), dataset="toy", split_name="train")
    tensors, metadata = read_safetensors(path)
    write_safetensors(path, tensors, {**metadata, field: value})
    with pytest.raises(ArtifactError, match=f"{re.escape(str(path))} is not a usable image split: metadata field '{field}'"):
        read_image_split(path)


def test_image_split_with_other_tensors_is_refused(tmp_path):
    path = tmp_path / "train.safetensors"
    write_safetensors(path, {"images": _split().images}, {"dataset": "toy", "split": "train", "class_names": []})
    with pytest.raises(ArtifactError, match=f"{re.escape(str(path))} is not a usable image split: it holds \\['images'\\]"):
        read_image_split(path)


# Parquet tables --------------------------------------------------------------------------------

def _frame():
    return pd.DataFrame({
        "layer": [0, 1, -1], "metric": ["entropy", "gini", None], "value": [0.5, np.nan, 2.0],
        "defined": [True, False, True], "kind": pd.Categorical(["a", "b", "a"]),
    })


def test_parquet_table_round_trips(tmp_path):
    write_table(_frame(), tmp_path / "t.parquet")
    back = read_table(tmp_path / "t.parquet")
    pd.testing.assert_frame_equal(back, pd.read_parquet(tmp_path / "t.parquet"))
    pd.testing.assert_frame_equal(back, _frame())


def test_empty_parquet_table_round_trips(tmp_path):
    empty = pd.DataFrame({"layer": pd.Series([], dtype="int64"), "metric": pd.Series([], dtype=str)})
    write_table(empty, tmp_path / "t.parquet")
    pd.testing.assert_frame_equal(read_table(tmp_path / "t.parquet"), empty)


def test_parquet_table_with_a_tampered_value_is_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "t.parquet"
    write_table(_frame(), path)
    table = pq.read_table(path)  # keeps the schema metadata, digest included
    values = table.column("value").to_pylist()
    values[0] = 0.25
    tampered = table.set_column(table.schema.get_field_index("value"), "value", pa.array(values))
    pq.write_table(tampered.replace_schema_metadata(table.schema.metadata), path)
    with pytest.raises(ArtifactError, match=f"{re.escape(str(path))} is damaged.*Delete it and rerun"):
        read_table(path)


def test_parquet_table_without_a_digest_is_refused_as_older(tmp_path):
    path = tmp_path / "t.parquet"
    _frame().to_parquet(path, index=False)
    with pytest.raises(ArtifactError, match=f"{re.escape(str(path))} carries no integrity digest"):
        read_table(path)


def test_truncated_parquet_table_is_refused(tmp_path):
    path = tmp_path / "t.parquet"
    write_table(_frame(), path)
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(ArtifactError, match=f"{re.escape(str(path))} is unreadable.*truncated"):
        read_table(path)


def test_csv_tables_are_for_humans_and_read_unverified(tmp_path):
    write_table(_frame()[["layer", "value"]], tmp_path / "t.csv")
    (tmp_path / "t.csv").write_text((tmp_path / "t.csv").read_text().replace("0.5", "0.7"))
    assert read_table(tmp_path / "t.csv")["value"][0] == 0.7


# JSON artifacts --------------------------------------------------------------------------------

HISTORY = {"dataset": "eurosat", "seed": 7, "best_select_acc": 0.93, "epochs": [{"epoch": 1, "lr_end": 1e-05}],
           "diverged_at_step": None}


def test_json_object_round_trips_and_stays_readable_as_plain_json(tmp_path):
    write_json(tmp_path / "h.json", {**HISTORY, "tensor_item": np.float32(0.5)})
    assert read_json(tmp_path / "h.json") == {**HISTORY, "tensor_item": 0.5}
    plain = json.loads((tmp_path / "h.json").read_text())
    assert plain["epochs"] == HISTORY["epochs"] and set(plain["_integrity"]) == {"digest", "format"}
    assert list(plain)[-1] == "_integrity"  # the record comes after the data a person reads


def test_json_with_a_tampered_value_is_refused(tmp_path):
    path = tmp_path / "h.json"
    write_json(path, HISTORY)
    _replace_once(path, b"0.93", b"0.95")
    with pytest.raises(ArtifactError, match=f"{re.escape(str(path))} is damaged.*Delete it and rerun"):
        read_json(path)


def test_json_without_its_integrity_record_is_refused_as_older(tmp_path):
    path = tmp_path / "h.json"
    path.write_text(json.dumps(HISTORY))
    with pytest.raises(ArtifactError, match=f"{re.escape(str(path))} carries no integrity digest.*older"):
        read_json(path)


def test_json_with_an_unknown_integrity_record_is_refused(tmp_path):
    path = tmp_path / "h.json"
    write_json(path, HISTORY)
    _replace_once(path, b'"format": 1', b'"format": 2')
    message = f"{re.escape(str(path))} has an '_integrity' record this clipdrift does not read"
    with pytest.raises(ArtifactError, match=message):
        read_json(path)


def test_truncated_json_is_refused(tmp_path):
    path = tmp_path / "h.json"
    write_json(path, HISTORY)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ArtifactError, match=f"{re.escape(str(path))} is not valid JSON"):
        read_json(path)


def test_json_array_round_trips_unverified(tmp_path):
    findings = [{"kind": "headline", "values": {"lr": "1e-05"}}]
    write_json(tmp_path / "f.json", findings)
    assert read_json(tmp_path / "f.json") == findings == json.loads((tmp_path / "f.json").read_text())


def test_json_integrity_key_is_reserved(tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        write_json(tmp_path / "h.json", {"_integrity": 1})
