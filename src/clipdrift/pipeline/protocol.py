"""The published study's protocol as data, and the `paper` presets checked against it.

``resources/paper_protocol.yaml`` lists every setting the published study fixed;
``resources/paper_ablation_protocol.yaml`` every setting of the authors' ablations (regulariser
formulas and constants, freezing, the LoRA alpha rule, the trace and the collapse onset), which
the ``paper-ablations`` preset adds to it. Each row is
pinned either to a value of :func:`resolved_settings` — what a study config resolves to through
the very settings code the workflow runs (``clipdrift.pipeline.plan`` → ``TrainConfig``,
``MethodConfig``, ``AttentionConfig``, …) — or to the package object that implements it and the
test that pins its behaviour. Rows may carry a deliberate ``difference`` with its reason and
expected effect; :func:`differences_markdown` renders those for the README.

:func:`load_study_config` reproduces what Snakemake does with ``--configfile``: the default
study merged with the preset (``snakemake.utils.update_config``) and validated with the
workflow's schema, defaults filled in.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import yaml

from clipdrift.pipeline import inputs, plan

PROTOCOL_FILE = "paper_protocol.yaml"
ABLATION_PROTOCOL_FILE = "paper_ablation_protocol.yaml"
# Where the README shows each protocol file's deliberate differences.
README_SECTIONS = {PROTOCOL_FILE: "protocol-differences", ABLATION_PROTOCOL_FILE: "ablation-differences"}
WILDCARD = "*"


@cache
def load_protocol(name: str = PROTOCOL_FILE) -> dict:
    """A protocol file: ``source``, ``free_settings`` (key → why it changes no number), ``rows``."""
    text = resources.files("clipdrift").joinpath("resources", name).read_text()
    return yaml.safe_load(text)


def load_study_config(schema: str | Path, *config_files: str | Path, overrides: dict | None = None) -> dict:
    """A study config as the workflow sees it: ``config_files`` merged in order (later ones win,
    mappings key by key, lists replaced), then ``overrides``, validated with defaults filled."""
    from snakemake.utils import update_config, validate

    config: dict = {}
    for path in config_files:
        update_config(config, yaml.safe_load(Path(path).read_text()) or {})
    update_config(config, copy.deepcopy(overrides or {}))
    validate(config, str(schema), set_default=True)
    return config


# ------------------------------------------------------------------------- resolved settings


def _schedule_shape() -> dict:
    from clipdrift.train.config import lr_factor

    total, warmup = 1000, 50
    return {"start": lr_factor(0, total, warmup), "warmup_end": lr_factor(warmup, total, warmup),
            "cosine_middle": lr_factor(warmup + (total - warmup) // 2, total, warmup),
            "end": lr_factor(total, total, warmup)}


def _training(config: dict, dataset: str, lr: str, seed: int) -> dict:
    from clipdrift.train.config import TrainConfig
    from clipdrift.train.precision import choose_amp

    settings = TrainConfig(**plan.training_settings(config, dataset, lr, seed)).to_dict()
    cuda_train = choose_amp(settings["amp"], "cuda", (9, 0))  # a current GPU; auto depends on it
    settings["cuda_precision"] = {"train": cuda_train, "eval": cuda_train if settings["eval_amp"] else "fp32",
                                  "grad_scaler": cuda_train == "fp16"}
    return {k: v for k, v in settings.items() if k not in ("lr", "seed")}


def _data(config: dict, dataset: dict) -> dict:
    from clipdrift.data import real as data

    settings = inputs.data_settings(config, dataset["name"])
    if dataset["name"] == "eurosat":
        settings["split_sizes"] = dict(dataset.get("sizes") or data.EUROSAT_SPLIT_SIZES)
    if dataset["name"] == "pets":
        fraction = dataset.get("val_fraction")
        settings["val_fraction"] = data.PETS_VAL_FRACTION if fraction is None else fraction
    return settings


def _zeroshot(config: dict) -> dict:
    suite = inputs.suite_settings(config)
    first = next(iter(suite.values()))
    return {"tasks": list(suite), "amp": first["amp"], "batch_size": first["batch_size"],
            "checkpoint": config["zeroshot"]["checkpoint"],
            "task": {task: {**settings, "sizes": dict(inputs.heldout_data_entry(config, task)["sizes"])}
                     for task, settings in suite.items()}}


def _published_correlations() -> list[list[str]]:
    """The published correlation pairs the study's correlation table computes."""
    from clipdrift.analysis.compare import CORRELATION_PAIRS
    from clipdrift.analysis.reference import load_reference

    published = load_reference("correlations")[["x", "y"]].drop_duplicates()
    return [[x, y] for x, y in published.itertuples(index=False) if (x, y) in CORRELATION_PAIRS]


def _variant_training(config: dict, lr: str, seed: int) -> dict:
    """Per method, what its own settings change of a run's training (the regulariser with every
    default filled in, the weight decay) and the entropy trace every run shares."""
    from clipdrift.train.config import TrainConfig

    dataset = config["datasets"][0]["name"]
    resolved = {}
    for method in plan.method_names(config):
        settings = TrainConfig(**plan.training_settings(config, dataset, lr, seed, method)).to_dict()
        resolved[method] = {key: settings[key] for key in ("regulariser", "weight_decay", "entropy_trace_every",
                                                           "entropy_trace_per_epoch")}
    return resolved


def resolved_settings(config: dict) -> dict:
    """Everything a validated study config resolves to, through the workflow's settings code."""
    from clipdrift.analysis.reference import PUBLISHED_SD_DDOF
    from clipdrift.measure.settings import AttentionConfig, CKAConfig
    from clipdrift.model.methods import MethodConfig
    from clipdrift.train.config import ADAMW_BETAS, ADAMW_EPS

    plan.check_study_config(config)
    lrs = [plan.canonical_lr(lr) for lr in config["learning_rates"]]
    first_seed = int(config["seeds"][0])
    return {
        "backbone": plan.backbone_descriptor(config),
        "grid": {"datasets": [d["name"] for d in config["datasets"]], "methods": plan.method_names(config),
                 "learning_rates": lrs, "seeds": [int(s) for s in config["seeds"]]},
        "data": {d["name"]: _data(config, d) for d in config["datasets"]},
        "method": {m: MethodConfig(**plan.method_settings(config, m)).to_dict() for m in plan.method_names(config)},
        "training": {d["name"]: _training(config, d["name"], lrs[0], first_seed) for d in config["datasets"]},
        "variant_training": _variant_training(config, lrs[0], first_seed),
        "optimizer": {"betas": list(ADAMW_BETAS), "eps": ADAMW_EPS},
        "schedule": _schedule_shape(),
        "attention": AttentionConfig(**plan.attention_settings(config)).to_dict(),
        "cka": CKAConfig(**plan.cka_settings(config)).to_dict(),
        "zeroshot": _zeroshot(config),
        "checkpoints": {"drift": config["metrics"]["checkpoint"], "zeroshot": config["zeroshot"]["checkpoint"]},
        "probe_sensitivity": plan.probe_sensitivity_settings(config),
        "statistics": {"paper_sd_ddof": PUBLISHED_SD_DDOF, "published_correlations": _published_correlations()},
    }


# ------------------------------------------------------------------------- conformance

_MISSING = object()


def lookup(settings: dict, path: str) -> dict[str, object]:
    """Values at a dotted ``path``; ``*`` matches every key at its level, and a key may hold dots
    itself (a variant such as ``full-apr-0.01``: the longest key that matches is taken). Keys → values."""
    found = {}

    def walk(value, parts: list[str], prefix: str) -> None:
        if not parts:
            found[prefix] = value
            return
        if parts[0] == WILDCARD and isinstance(value, dict):
            for key, child in value.items():
                walk(child, parts[1:], f"{prefix}.{key}".lstrip("."))
            return
        for end in range(len(parts), 0, -1):
            key = ".".join(parts[:end])
            if isinstance(value, dict) and key in value:
                walk(value[key], parts[end:], f"{prefix}.{key}".lstrip("."))
                return
        found[f"{prefix}.{'.'.join(parts)}".lstrip(".")] = _MISSING

    walk(settings, path.split("."), "")
    return found


def same(actual, expected) -> bool:
    """Equal, with lists/tuples alike and floats within a relative 1e-12."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and actual.keys() == expected.keys() and all(
            same(actual[k], expected[k]) for k in expected)
    if isinstance(expected, (list, tuple)):
        return isinstance(actual, (list, tuple)) and len(actual) == len(expected) and all(
            same(a, e) for a, e in zip(actual, expected))
    if isinstance(expected, bool) or isinstance(actual, bool):
        return actual is expected
    if isinstance(expected, (int, float)) and isinstance(actual, (int, float)):
        return math.isclose(actual, expected, rel_tol=1e-12, abs_tol=0.0)
    return actual == expected


@dataclass(frozen=True)
class Mismatch:
    row: str
    path: str
    expected: object
    actual: object

    def __str__(self) -> str:
        actual = "missing" if self.actual is _MISSING else repr(self.actual)
        return f"{self.row}: {self.path} is {actual}, the published protocol needs {self.expected!r}"


def check_conformance(config: dict, protocol: dict | None = None) -> list[Mismatch]:
    """Every row's ``setting`` against the resolved settings of ``config``; [] when it conforms.
    ``protocol``: a loaded protocol file (default: the study's)."""
    protocol = protocol or load_protocol()
    settings = resolved_settings(config)
    mismatches = []
    for row in protocol["rows"]:
        if "setting" not in row:
            continue
        for path, actual in lookup(settings, row["setting"]).items():
            if actual is _MISSING or not same(actual, row["value"]):
                mismatches.append(Mismatch(row["id"], path, row["value"], actual))
    return mismatches


def published_ablation_definitions(config: dict) -> dict[str, bool]:
    """Each method of the study that the ablation protocol defines → whether the study trains it
    with the published definition: every row that names it (its regulariser, freezing, LoRA rank,
    weight decay) holds. The trace rows do not count: they change no trained weight."""
    protocol = load_protocol(ABLATION_PROTOCOL_FILE)
    settings, methods = resolved_settings(config), set(plan.method_names(config))
    verdicts: dict[str, bool] = {}
    for row in protocol["rows"]:
        if "setting" not in row or row["topic"] == "trace":
            continue
        for path, actual in lookup(settings, row["setting"]).items():
            section, _, rest = path.partition(".")
            named = [name for name in methods if rest == name or rest.startswith(f"{name}.")]
            method = max(named, key=len, default=None)  # full-wd0.1, not full-wd0
            if section in ("method", "variant_training") and method is not None:
                holds = actual is not _MISSING and same(actual, row["value"])
                verdicts[method] = verdicts.get(method, True) and holds
    return verdicts


# ------------------------------------------------------------------------- README


def differences_markdown(protocol: dict | None = None) -> str:
    """The deliberate differences as a Markdown list (what the README's paper section shows)."""
    protocol = protocol or load_protocol()
    items = []
    for row in protocol["rows"]:
        if "difference" in row:
            diff = row["difference"]
            items.append(f"- **{row['topic']}** ({row['id']}). Published: {_sentence(row['published'])} "
                         f"Here: {_sentence(diff['what'])} Why: {_sentence(diff['why'])} "
                         f"Expected effect: {_sentence(diff['effect'])}")
    return "\n".join(items) + "\n"


def _sentence(text: str) -> str:
    text = " ".join(str(text).split())
    return text if text.endswith(".") else text + "."


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- {README_SECTIONS[name]}:start -->", f"<!-- {README_SECTIONS[name]}:end -->"


def readme_section(readme_text: str, name: str = PROTOCOL_FILE) -> str:
    """The text between the README's markers for protocol file ``name``."""
    start, end = _markers(name)
    if start not in readme_text or end not in readme_text:
        raise ValueError(f"the README lacks the markers {start} … {end}")
    return readme_text.split(start, 1)[1].split(end, 1)[0]


def render_readme(readme_text: str) -> str:
    """``readme_text`` with every protocol file's differences section regenerated from it."""
    for name in README_SECTIONS:
        start, end = _markers(name)
        before = readme_text.split(start, 1)[0]
        after = readme_text.split(end, 1)[1]
        readme_text = f"{before}{start}\n{differences_markdown(load_protocol(name))}{end}{after}"
    return readme_text


if __name__ == "__main__":  # python -m clipdrift.pipeline.protocol README.md: regenerate the README section
    import sys

    readme = Path(sys.argv[1] if len(sys.argv) > 1 else "README.md")
    readme.write_text(render_readme(readme.read_text()))
