"""The paper preset against the published protocol (resources/paper_protocol.yaml): every row
holds for configs/paper.yaml resolved through the workflow's settings code, every preset value
is pinned by a row or declared free, and the README shows every deliberate difference."""

import ast
import copy
import importlib
import re

import pytest
import torch
import yaml

from clipdrift.core.errors import UserFacingError
from clipdrift.pipeline.protocol import (
    ABLATION_PROTOCOL_FILE,
    PROTOCOL_FILE,
    check_conformance,
    differences_markdown,
    load_protocol,
    load_study_config,
    readme_section,
    resolved_settings,
)

from workflow_helpers import REPO

SCHEMA = REPO / "workflow/schemas/config.schema.yaml"
PAPER = REPO / "configs/paper.yaml"
DEFAULT = REPO / "config.yaml"


def paper_config(overrides: dict | None = None) -> dict:
    return load_study_config(SCHEMA, DEFAULT, PAPER, overrides=overrides)


def test_the_paper_preset_conforms_to_the_published_protocol():
    mismatches = check_conformance(paper_config())
    assert not mismatches, "\n".join(map(str, mismatches))


def test_the_resolved_training_settings_say_fp16_with_a_scaler_and_fp32_evaluation():
    training = resolved_settings(paper_config())["training"]
    for dataset in ("eurosat", "pets"):
        assert training[dataset]["cuda_precision"] == {"train": "fp16", "eval": "fp32", "grad_scaler": True}
    assert training["pets"]["epochs"] == 30 and training["eurosat"]["selection_split"] == "test"


# ---- every preset value is pinned: a changed value fails the check ---------------------------


def _leaves(value, path=""):
    """(dotted path, value) of every leaf of a YAML tree; list items of mappings as name[i]."""
    if isinstance(value, dict) and value:
        for key, child in value.items():
            yield from _leaves(child, f"{path}.{key}".lstrip("."))
    elif isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        for index, item in enumerate(value):
            yield from _leaves(item, f"{path}[{index}]")
    else:
        yield path, value


def _schema_at(schema: dict, path: str) -> dict:
    node = schema
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        node = node["items"] if part.startswith("[") else node.get("properties", {}).get(part, {})
    return node


def _candidates(value, schema_node):
    """Changed values to try, most natural first (the first one the schema accepts is used)."""
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, (int, float)):
        return [value * 2, value + 1, 0.1] if value else [1, 0.1]
    if isinstance(value, str):
        alternatives = [schema_node, *schema_node.get("oneOf", []), *schema_node.get("anyOf", [])]
        others = [v for node in alternatives for v in node.get("enum", []) if v != value]
        return others + [f"{value}-changed"]
    if isinstance(value, list):
        return [value[:-1]] if len(value) > 1 else [value * 2, []]
    if value is None:
        return [{"test": 100}, "changed"]
    return []


def _set(config: dict, path: str, value) -> None:
    parts = re.findall(r"[^.\[\]]+|\[\d+\]", path)
    node = config
    for part in parts[:-1]:
        node = node[int(part[1:-1])] if part.startswith("[") else node[part]
    node[parts[-1]] = value


def _is_free(path: str, free: dict) -> bool:
    plain = re.sub(r"\[\d+\]", "", path)
    return any(plain == key or plain.startswith(f"{key}.") for key in free)


def _mutated_configs():
    preset = yaml.safe_load(PAPER.read_text())
    schema = yaml.safe_load(SCHEMA.read_text())
    free = load_protocol()["free_settings"]
    for path, value in _leaves(preset):
        if _is_free(path, free):
            continue
        for candidate in _candidates(value, _schema_at(schema, path)):
            changed = copy.deepcopy(preset)
            _set(changed, path, candidate)
            try:
                config = load_study_config(SCHEMA, DEFAULT, overrides=changed)
            except Exception:  # the schema refuses this value: try the next one
                continue
            yield path, value, candidate, config
            break
        else:
            pytest.fail(f"no schema-valid change found for {path} = {value!r}")


def test_changing_any_pinned_preset_value_fails_the_conformance_check(capsys):
    tried = []
    for path, old, new, config in _mutated_configs():
        try:
            mismatches = check_conformance(config)
        except UserFacingError:
            mismatches = ["refused by the study's own config check"]
        assert mismatches, f"changing {path} from {old!r} to {new!r} went unnoticed: pin it in a protocol row"
        tried.append(f"{path}: {old!r} -> {new!r} ({len(mismatches)} mismatching rows)")
    with capsys.disabled():
        print(f"\n{len(tried)} mutations of configs/paper.yaml, each caught:\n  " + "\n  ".join(tried))
    assert len(tried) >= 30


def test_free_settings_are_keys_of_the_preset():
    preset_paths = {re.sub(r"\[\d+\]", "", path) for path, _ in _leaves(yaml.safe_load(PAPER.read_text()))}
    prefixes = {p.rsplit(".", i)[0] for p in preset_paths for i in range(p.count(".") + 1)}
    stale = [key for key in load_protocol()["free_settings"] if key not in prefixes]
    assert not stale, f"free settings that configs/paper.yaml no longer has: {stale}"


# ---- every row is pinned to something real ----------------------------------------------------


def _test_names(path: str) -> set[str]:
    tree = ast.parse((REPO / path).read_text())
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}


ROWS = [row for name in (PROTOCOL_FILE, ABLATION_PROTOCOL_FILE) for row in load_protocol(name)["rows"]]


@pytest.mark.parametrize("row", ROWS, ids=lambda row: row["id"])
def test_every_row_names_a_setting_or_the_code_and_test_that_pin_it(row):
    assert {"id", "topic", "published"} <= row.keys()
    assert "setting" in row or "code" in row, "a row must name the setting or the code that implements it"
    if "setting" in row:
        assert "value" in row
    if "code" in row:
        module, attribute = row["code"].split(":")
        assert hasattr(importlib.import_module(module), attribute), row["code"]
        assert "tested_by" in row, "code rows name the test that pins the behaviour"
        if "value" in row:  # a constant: the row holds its value
            assert getattr(importlib.import_module(module), attribute) == type(getattr(
                importlib.import_module(module), attribute))(row["value"]), row["code"]
    if "tested_by" in row:
        path, name = row["tested_by"].split("::")
        assert name in _test_names(path), row["tested_by"]
    if "difference" in row:
        assert {"what", "why", "effect"} <= row["difference"].keys()


def test_row_ids_are_unique():
    for name in (PROTOCOL_FILE, ABLATION_PROTOCOL_FILE):
        ids = [row["id"] for row in load_protocol(name)["rows"]]
        assert len(ids) == len(set(ids)), name


def test_the_readme_lists_every_deliberate_difference_from_the_protocol_file():
    readme = (REPO / "README.md").read_text()
    assert readme_section(readme) == "\n" + differences_markdown(), (
        "README.md's paper section is stale: run python -m clipdrift.pipeline.protocol README.md")
    ablations = load_protocol(ABLATION_PROTOCOL_FILE)
    assert readme_section(readme, ABLATION_PROTOCOL_FILE) == "\n" + differences_markdown(ablations), (
        "README.md's ablation differences are stale: run python -m clipdrift.pipeline.protocol README.md")
    n_differences = sum("difference" in row for row in load_protocol()["rows"])
    assert differences_markdown().count("\n- ") + 1 == n_differences >= 8


# ---- behaviour the code rows point at ----------------------------------------------------------


def test_the_head_is_a_linear_layer_on_the_unnormalised_projection():
    from tiny_models import make_tiny

    model = make_tiny(n_classes=3)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        features = model.clip.encode_image(images, normalize=False)
        assert isinstance(model.head, torch.nn.Linear) and model.head.in_features == features.shape[1]
        torch.testing.assert_close(model(images), model.head(features), rtol=0, atol=0)
        assert not torch.allclose(features.norm(dim=-1), torch.ones(2))  # not normalised


@pytest.mark.parametrize("method", ["full", "lora"])
def test_the_optimiser_is_adamw_with_one_parameter_group(method):
    from tiny_models import make_tiny

    from clipdrift.train.config import ADAMW_BETAS, ADAMW_EPS, TrainConfig
    from clipdrift.train.engine import _Run

    from test_train import TRAIN

    model = make_tiny(method, n_classes=4)
    run = _Run(model, TRAIN, TrainConfig(epochs=1, lr=1e-5, weight_decay=0.01, device="cpu"))
    default = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))]).defaults
    assert isinstance(run.optimizer, torch.optim.AdamW) and len(run.optimizer.param_groups) == 1
    group = run.optimizer.param_groups[0]
    assert (group["betas"], group["eps"]) == (ADAMW_BETAS, ADAMW_EPS) == (default["betas"], default["eps"])
    assert group["weight_decay"] == 0.01
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(group["params"]) == len(trainable) and all(a is b for a, b in zip(group["params"], trainable))
