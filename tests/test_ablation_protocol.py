"""The paper-ablations preset against the published ablations (resources/paper_ablation_protocol.yaml):
every row holds for configs/paper-ablations.yaml resolved through the workflow's settings code,
changing any ablation setting breaks a row, and the preset's own regulariser objects give the
values the authors' formulas give, computed here independently."""

import copy
import dataclasses

import pytest
import torch
import yaml
from tiny_models import make_tiny

from clipdrift.core.errors import UserFacingError
from clipdrift.measure.drift import model_attention_stats
from clipdrift.measure.runtime import model_input
from clipdrift.measure.settings import AttentionConfig
from clipdrift.model.backbones import capture_attention
from clipdrift.pipeline import plan
from clipdrift.pipeline.protocol import ABLATION_PROTOCOL_FILE, check_conformance, load_protocol, load_study_config
from clipdrift.train.config import TrainConfig
from clipdrift.train.regularisers import AttentionRegulariser, cls_attention, layer_entropies

from test_train import colour_split
from workflow_helpers import REPO

SCHEMA = REPO / "workflow/schemas/config.schema.yaml"
PRESET = REPO / "configs/paper-ablations.yaml"
DEFAULT = REPO / "config.yaml"
EPS = 1e-10  # what the authors' code adds inside every log and to every renormalising sum


def ablations_config(overrides: dict | None = None) -> dict:
    return load_study_config(SCHEMA, DEFAULT, PRESET, overrides=overrides)


def test_the_paper_ablations_preset_conforms_to_the_published_ablations_and_the_study_protocol():
    config = ablations_config()
    mismatches = check_conformance(config, load_protocol(ABLATION_PROTOCOL_FILE))
    assert not mismatches, "\n".join(map(str, mismatches))
    # the study's protocol holds but for the grid's methods, which the ablation protocol pins
    mismatches = check_conformance(config, load_protocol())
    assert [mismatch.path for mismatch in mismatches] == ["grid.methods"], "\n".join(map(str, mismatches))


def _mutations():
    """(what changed, the changed preset) for every leaf of the keys the ablation protocol pins."""
    preset = yaml.safe_load(PRESET.read_text())
    for index, entry in enumerate(preset["methods"]):
        if isinstance(entry, str):
            continue
        for path, value in _leaves(entry):
            changed = copy.deepcopy(preset)
            node = changed["methods"][index]
            *parents, last = path
            for key in parents:
                node = node[key]
            node[last] = _other(value)
            yield f"methods[{index}].{'.'.join(map(str, path))}: {value!r} -> {node[last]!r}", changed
    for replacement in (["full", "lora"], [*preset["methods"][:-1]]):
        yield f"methods -> {len(replacement)} entries", {**copy.deepcopy(preset), "methods": replacement}
    changed = copy.deepcopy(preset)
    changed["training"]["entropy_trace_per_epoch"] = 4
    yield "training.entropy_trace_per_epoch: 5 -> 4", changed


def _leaves(entry: dict, path=()):
    for key, value in entry.items():
        if isinstance(value, dict):
            yield from _leaves(value, (*path, key))
        elif key not in ("name", "method"):
            yield (*path, key), value


def _other(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value * 2 if value else 0.05
    if isinstance(value, list):
        return value[:-1]
    return {"apr": "entropy_floor", "entropy_floor": "apr"}.get(value, value)


def test_changing_any_ablation_setting_of_the_preset_fails_the_ablation_protocol(capsys):
    protocol, tried = load_protocol(ABLATION_PROTOCOL_FILE), []
    assert protocol["pins"] == ["methods", "training.entropy_trace_per_epoch"]
    for what, changed in _mutations():
        config = load_study_config(SCHEMA, DEFAULT, overrides=changed)
        try:
            caught = bool(check_conformance(config, protocol))
        except UserFacingError:  # refused by the study's own config check
            caught = True
        assert caught, f"{what} went unnoticed: pin it in a row"
        tried.append(what)
    with capsys.disabled():
        print(f"\n{len(tried)} mutations of configs/paper-ablations.yaml, each caught:\n  " + "\n  ".join(tried))
    assert len(tried) >= 20


def test_every_key_the_preset_adds_to_the_paper_preset_is_one_the_ablation_protocol_pins():
    paper = yaml.safe_load((REPO / "configs/paper.yaml").read_text())
    preset = yaml.safe_load(PRESET.read_text())
    added = {"methods"} | {f"training.{key}" for key in preset["training"] if key not in paper["training"]}
    assert added == set(load_protocol(ABLATION_PROTOCOL_FILE)["pins"])


# ---- the formulas, computed here the way the authors' code computes them ---------------------


def published_apr(current_maps: list[torch.Tensor], pretrained_maps: list[torch.Tensor], weight: float) -> float:
    """lambda · mean over layers of mean_{b,h} Σ p_cur · (log(p_cur + eps) − log(p_pre + eps))."""
    total = 0.0
    for current, pretrained in zip(current_maps, pretrained_maps):
        cur, pre = current[:, :, 0, 1:].double(), pretrained[:, :, 0, 1:].double()
        cur, pre = cur / (cur.sum(-1, keepdim=True) + EPS), pre / (pre.sum(-1, keepdim=True) + EPS)
        total += float((cur * (torch.log(cur + EPS) - torch.log(pre + EPS))).sum(-1).mean())
    return weight * total / len(current_maps)


def row_entropies(maps: torch.Tensor) -> torch.Tensor:
    rows = maps[:, :, 0, 1:].double()
    rows = rows / (rows.sum(-1, keepdim=True) + EPS)
    return -(rows * torch.log(rows + EPS)).sum(-1)  # (B, H)


def published_baseline(clip, images: torch.Tensor, batch_size: int = 32) -> list[float]:
    """Per layer, the mean over the subset's batches of 32 of the batch's mean (B, H) entropy."""
    per_batch = []
    for batch in images.split(batch_size):
        with torch.no_grad(), capture_attention(clip) as maps:
            clip.eval().encode_image(batch)
        per_batch.append([float(row_entropies(layer[0]).mean()) for layer in maps])
    return [sum(values) / len(values) for values in zip(*per_batch)]


def published_floor(current_maps: list[torch.Tensor], baseline: list[float], weight: float) -> float:
    """lambda · Σ_l mean_{b,h} relu(0.7 · base_l − H(p_cur[b,h]))."""
    return weight * sum(float(torch.relu(0.7 * base - row_entropies(maps)).mean())
                        for maps, base in zip(current_maps, baseline))


def preset_regulariser(variant: str):
    config = ablations_config()
    settings = plan.training_settings(config, "eurosat", "1e-05", 42, variant)
    return TrainConfig(**settings).regulariser


def test_the_presets_regularisers_give_the_published_values_on_a_tiny_model():
    pretrained = make_tiny("full")
    probe = model_input(pretrained, colour_split(12, 300).images)  # 48 images: a full batch of 32 and a short one
    batch = model_input(pretrained, colour_split(4, 400).images)
    current = make_tiny("full")  # a perturbed copy: sharper attention in every layer
    with torch.no_grad():
        for block in current.clip.visual.transformer.resblocks:
            block.attn.k_proj.weight.mul_(8.0)
            block.attn.q_proj.weight.add_(0.05 * torch.randn_like(block.attn.q_proj.weight))
    with torch.no_grad(), capture_attention(current.clip) as current_maps, capture_attention(pretrained.clip) as before:
        current.clip.eval().encode_image(batch)
        pretrained.clip.eval().encode_image(batch)
    current_maps, before = [layer[0] for layer in current_maps], [layer[0] for layer in before]
    baseline = published_baseline(pretrained.clip, probe)
    checked = {}
    for variant in ("full-apr-0.01", "full-apr-0.1", "full-apr-1", "full-floor-0.01", "full-floor-0.1"):
        config = preset_regulariser(variant)
        regulariser = AttentionRegulariser(config, pretrained, probe)
        with cls_attention(current.clip) as rows:
            current.eval()(batch)
        ours = config.weight * float(regulariser.penalty(rows, batch).detach())
        theirs = (published_apr(current_maps, before, config.weight) if config.kind == "apr"
                  else published_floor(current_maps, baseline, config.weight))
        assert theirs > 0 and ours == pytest.approx(theirs, rel=1e-5), variant
        checked[variant] = theirs
    # the other definitions are other numbers: a look-alike would not pass
    flipped = AttentionRegulariser(dataclasses.replace(preset_regulariser("full-apr-1"), direction="pretrained_first"),
                                   pretrained, probe)
    layer_mean = AttentionRegulariser(dataclasses.replace(preset_regulariser("full-floor-0.1"), hinge="layer_mean",
                                                   layers="mean", ratio=1.0), pretrained, probe)
    with cls_attention(current.clip) as rows:
        current.eval()(batch)
    other_apr = float(flipped.penalty(rows, batch).detach())
    other_floor = 0.1 * float(layer_mean.penalty(rows, batch).detach())
    assert abs(other_apr - checked["full-apr-1"]) > 1e-3 * checked["full-apr-1"]
    assert abs(other_floor - checked["full-floor-0.1"]) > 1e-3 * checked["full-floor-0.1"]


@pytest.mark.parametrize("aggregation", ["paper", "exact"])
def test_the_floor_baseline_is_the_drift_baseline_on_the_probe(aggregation):
    # base_l is the pretrained layer-mean CLS entropy the drift metrics measure on the same probe
    model, probe = make_tiny("full"), colour_split(12, 300)
    stats = model_attention_stats(model, probe, AttentionConfig(aggregation=aggregation, batch_size=32, device="cpu"))
    base = layer_entropies(model.clip, model_input(model, probe.images), 32 if aggregation == "paper" else None)
    torch.testing.assert_close(base.double(), stats["entropy"].mean(dim=1).double(), rtol=1e-5, atol=1e-6)
    settings = plan.regulariser_settings({"metrics": {"aggregation": aggregation, "batch_size": 32}},
                                         {"kind": "entropy_floor", "weight": 0.1})
    assert settings.get("base_batch_size") == (32 if aggregation == "paper" else None)
