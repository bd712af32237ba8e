"""Fuzz: every single-byte change to a written artifact is refused, naming the file, or changes nothing.

Each case writes a real artifact, then flips one byte at a time (seeded positions spread over
the header, the metadata and the data; always to a different value) and reads the mutant back.
The outcomes are counted (``pytest -s`` prints them): a mutant must be refused with an
ArtifactError (CheckpointError is one) whose message holds its path, or read back identical to
the original (a byte of JSON whitespace, of Parquet statistics). A silently different result or
any other exception fails the test.
"""

import json
import random
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch
from tiny_models import TINY, make_tiny

from clipdrift.core.io import ArtifactError, read_json, read_table, write_json, write_table
from clipdrift.data.split import ImageSplit, read_image_split, write_image_split
from clipdrift.model.adapters import MethodConfig
from clipdrift.model.checkpoints import load_classifier, save_classifier

OK_OUTCOMES = {"refused", "identical"}


def _flip_one_byte(data: bytes, position: int, rng: random.Random) -> bytes:
    mutated = bytearray(data)
    mutated[position] = (mutated[position] + rng.randrange(1, 256)) % 256  # never the same value
    return bytes(mutated)


def _fuzz(path, read, same, positions: list[int]) -> Counter:
    """Read back a one-byte mutant of ``path`` per position and count what happened."""
    original_bytes = path.read_bytes()
    original = read(path)
    mutant = path.with_name(f"mutant-{path.name}")
    rng = random.Random(1)
    outcomes = Counter()
    for position in positions:
        mutant.write_bytes(_flip_one_byte(original_bytes, position, rng))
        try:
            result = read(mutant)
        except ArtifactError as error:
            outcomes["refused" if str(mutant) in str(error) else f"refused without naming the file: {error}"] += 1
        except Exception as error:  # counted: the test fails on any of these
            outcomes[f"raw {type(error).__name__} at byte {position}: {error}"] += 1
        else:
            outcomes["identical" if same(result, original) else f"SILENTLY DIFFERENT at byte {position}"] += 1
    return outcomes


def _report(name: str, outcomes: Counter) -> None:
    print(f"\n{name}: {sum(outcomes.values())} one-byte mutants, "
          f"{outcomes['refused']} refused, {outcomes['identical']} identical")
    bad = {outcome: n for outcome, n in outcomes.items() if outcome not in OK_OUTCOMES}
    assert not bad, bad


def _spread(rng: random.Random, regions: dict[str, range], per_region: int) -> list[int]:
    return [rng.choice(region) for region in regions.values() for _ in range(per_region)]


# Checkpoints -----------------------------------------------------------------------------------

def _safetensors_regions(data: bytes) -> dict[str, range]:
    """The clipdrift metadata block, the whole header (length prefix, tensor index) and the data."""
    header_end = 8 + int.from_bytes(data[:8], "little")
    header = data[8:header_end].decode()
    start = header.index('"__metadata__":') + len('"__metadata__":')
    _, end = json.JSONDecoder().raw_decode(header, start)
    return {"metadata": range(8 + start, 8 + end), "header": range(header_end), "data": range(header_end, len(data))}


def _same_model(loaded, original) -> bool:
    (model, metadata), (original_model, original_metadata) = loaded, original
    state, original_state = model.state_dict(), original_model.state_dict()
    return (
        metadata == original_metadata
        and state.keys() == original_state.keys()
        and all(state[k].dtype == v.dtype and torch.equal(state[k], v) for k, v in original_state.items())
    )


@pytest.mark.parametrize("method", ["lora", "full"])
def test_one_byte_changes_to_a_checkpoint_are_refused_or_change_nothing(tmp_path, method):
    path = tmp_path / f"{method}.safetensors"
    save_classifier(path, make_tiny(method, seed=2), TINY, MethodConfig(method), seed=2, config_hash="abc")
    positions = _spread(random.Random(method), _safetensors_regions(path.read_bytes()), per_region=90)
    outcomes = _fuzz(path, load_classifier, _same_model, positions)
    _report(f"{method} checkpoint", outcomes)
    assert sum(outcomes.values()) >= 200


# Image splits, Parquet tables, JSON artifacts --------------------------------------------------

def test_one_byte_changes_to_an_image_split_are_refused_or_change_nothing(tmp_path):
    images = torch.randint(0, 256, (12, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    path = tmp_path / "train.safetensors"
    write_image_split(path, ImageSplit(images, torch.arange(12) % 4, ["a", "b", "c", "d"]),
                      dataset="toy", split_name="train")
    positions = _spread(random.Random("split"), _safetensors_regions(path.read_bytes()), per_region=70)

    def same(split, original):
        return (torch.equal(split.images, original.images) and torch.equal(split.labels, original.labels)
                and split.class_names == original.class_names)

    _report("image split", _fuzz(path, read_image_split, same, positions))


def test_one_byte_changes_to_a_parquet_table_are_refused_or_change_nothing(tmp_path):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({
        "layer": rng.integers(-1, 12, 200), "metric": rng.choice(["entropy", "gini", "erf95"], 200),
        "value": rng.normal(size=200), "defined": rng.random(200) > 0.1, "lr": "1e-05",
    })
    frame.loc[3, "value"] = np.nan
    path = tmp_path / "attention.parquet"
    write_table(frame, path)
    positions = random.Random("parquet").sample(range(len(path.read_bytes())), 300)

    def same(table, original):
        return table.equals(original) and table.dtypes.equals(original.dtypes)

    _report("parquet table", _fuzz(path, read_table, same, positions))


def test_one_byte_changes_to_a_json_artifact_are_refused_or_change_nothing(tmp_path):
    history = {"dataset": "eurosat", "seed": 7, "status": "completed", "diverged_at_step": None,
               "epochs": [{"epoch": i, "select_acc": 0.1 * i, "lr_end": 1e-05} for i in range(1, 4)]}
    path = tmp_path / "history.json"
    write_json(path, history)
    positions = random.Random("json").sample(range(len(path.read_bytes())), 300)

    def same(value, original):
        return json.dumps(value, sort_keys=True) == json.dumps(original, sort_keys=True)

    _report("json artifact", _fuzz(path, read_json, same, positions))
