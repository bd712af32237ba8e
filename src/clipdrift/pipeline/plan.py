"""What the Snakefile needs when it is parsed: a validated study config turned into the settings
each stage runs with.

Every ``snakemake -n`` and every cluster job step parses the Snakefile, so this module imports
no torch, open_clip or pandas: reading configs and deriving plain JSON-able settings dicts
costs milliseconds. Each dict is checked by the torch-free settings class its job rebuilds it
as (:func:`check_settings`), so a setting's rules are written once, on its class. Each rule
carries its settings in ``params``, so a change to a stage's settings reruns exactly that stage.
What a job needs at run time is in :mod:`clipdrift.pipeline.jobs.runner`.
"""

from __future__ import annotations

from pathlib import Path

from clipdrift.core.errors import StudyConfigError
from clipdrift.measure.settings import CKAConfig, CurveSettings, InterventionSettings, WeightSettings
from clipdrift.model.methods import METHODS, MethodConfig, family_of
from clipdrift.pipeline.inputs import (
    backbone_image_size,
    check_backbone_family,
    check_tasks,
    heldout_names,
    image_size_key,
    model_configs,
    suite_settings,
)
from clipdrift.train.config import TrainConfig
from clipdrift.train.regulariser_config import FLOOR_OPTIONS, OPTIONS, RegulariserConfig

# Where a study records the pretrained backbone every run starts from (relative to the study).
BACKBONE_DESCRIPTOR = "backbone/backbone.json"



def canonical_lr(value) -> str:
    """The canonical string of a learning rate, as used in paths and tables: ``1e-05``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise StudyConfigError(f"learning_rates: {value!r} is not a number (e.g. 1.0e-5)") from None
    if not 0 < number <= 1:
        raise StudyConfigError(f"learning_rates: {value!r} must lie in (0, 1]")
    mantissa, exponent = f"{number:.6e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent):+03d}"


def check_study_config(config: dict) -> None:
    """Cross-key checks the schema cannot express; raises naming the key and the fix."""
    names = [d["name"] for d in config["datasets"]]
    if len(set(names)) != len(names):
        raise StudyConfigError(f"datasets: names must be unique, got {names}")
    lrs = [canonical_lr(lr) for lr in config["learning_rates"]]
    if len(set(lrs)) != len(lrs):
        raise StudyConfigError(f"learning_rates: {config['learning_rates']} lists the same rate twice ({lrs})")
    model_config = model_configs().get(config["backbone"]["name"])
    if model_config is None:
        raise StudyConfigError(
            f"backbone.name {config['backbone']['name']!r} is not an open_clip model config "
            "(e.g. ViT-B-32-quickgelu, clipdrift-tiny)"
        )
    check_backbone_family(config["backbone"]["name"], model_config)
    check_tasks(config)
    check_curves(config)
    check_methods(config, model_config)
    for name in method_names(config):
        _check_probe_fits(config, name)
    check_settings(config)
    expected = backbone_image_size(model_config)
    for name in [*names, *heldout_names(config)]:
        key, size = image_size_key(config, name)
        if size is not None and size != expected:
            raise StudyConfigError(
                f"{key} is {size} but backbone {config['backbone']['name']} expects {expected}-pixel "
                f"images: set {key}: {expected} (dataset {name}), or leave data.image_size out to take the backbone's."
            )


def check_methods(config: dict, model_config: dict) -> None:
    """Method and variant names unique and not a base method's unless plain; each variant's
    settings fit its method and the backbone."""
    names = [entry if isinstance(entry, str) else entry["name"] for entry in config["methods"]]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise StudyConfigError(f"methods: the name {repeated[0]!r} is used twice: give every method and variant "
                               "its own name (it names the runs' folders and the tables' rows)")
    blocks = model_config.get("vision_cfg", {}).get("layers")
    for name in names:
        check_method_settings(config, name, model_config)
    for entry in config["methods"]:
        if isinstance(entry, str):
            continue
        name, method = entry["name"], entry["method"]
        if name in METHODS and name != method:
            raise StudyConfigError(f"methods: variant {name!r} of {method} takes the name of the method {name}: "
                                   f"rename it (e.g. {method}-{name})")
        if family_of(name) != method:
            raise StudyConfigError(f"methods: variant {name!r} of {method} must be named {method}-<what it changes> "
                                   f"(e.g. {method}-{name}): every table and figure groups a variant with its method "
                                   "by that name")
        own = METHODS[method].config_section
        for section in {other.config_section for other in METHODS.values()} - {own, None}:
            if section in entry:
                owners = [other.name for other in METHODS.values() if other.config_section == section]
                whose = f"method {owners[0]}" if len(owners) == 1 else f"one of the methods {', '.join(owners)}"
                raise StudyConfigError(f"methods: variant {name!r} sets {section} but its method is {method}: move the "
                                       f"{section} settings to a variant of {whose}")
        stray = sorted(set(entry.get(own, {})) - set(METHODS[method].settings_fields)) if own else []
        if stray:
            raise StudyConfigError(f"methods: variant {name!r} sets {own}.{stray[0]}, which method {method} does not "
                                   f"take: remove it")
        if "regulariser" in entry:
            _check_regulariser(config, name, entry["regulariser"])
        frozen = entry.get("freeze_blocks", 0)
        if frozen and isinstance(blocks, int) and frozen > blocks:
            raise StudyConfigError(f"methods: variant {name!r} freezes {frozen} blocks but backbone "
                                   f"{config['backbone']['name']} has {blocks}: set freeze_blocks to at most {blocks}")


def check_method_settings(config: dict, name: str, model_config: dict) -> None:
    """A method's settings by its own rules (clipdrift.model.methods.MethodConfig) and, for an
    adapter method other than plain LoRA (whose settings the schema holds), by peft's: its
    adapters put on one block of the backbone's widths, here at parse time."""
    described = f"{'method' if name in METHODS else 'variant'} {name!r}"
    try:
        settings = MethodConfig(**method_settings(config, name))
        entry = METHODS[settings.method]
        if entry.adapter and (entry.adapter != "LoraConfig" or entry.adapter_options):  # peft's to judge
            from clipdrift.model.adapters import check_adapters_fit  # torch and peft: only for such a study

            vision = model_config.get("vision_cfg", {})
            width = vision.get("width", 768)
            check_adapters_fit(settings, width, int(width * vision.get("mlp_ratio", 4.0)))
    except ValueError as error:
        raise StudyConfigError(f"methods: {described}: {error}") from None


def check_settings(config: dict) -> None:
    """Build what every job will be told (each run's training, the attention, CKA and curve
    settings), so that their own rules refuse a config here, before any job."""
    lr, seed = canonical_lr(config["learning_rates"][0]), int(config["seeds"][0])
    for dataset in config["datasets"]:
        _settings_or_refuse(f"training (dataset {dataset['name']})", TrainConfig,
                            training_settings(config, dataset["name"], lr, seed))
        for name in method_names(config):
            _settings_or_refuse(f"methods: variant {name!r}'s training (dataset {dataset['name']})", TrainConfig,
                                training_settings(config, dataset["name"], lr, seed, name))
        _settings_or_refuse("curves", CurveSettings, curve_settings(config, dataset["name"]))
        if config["weights"]["enabled"]:
            _settings_or_refuse("weights", WeightSettings, weight_settings(config, dataset["name"]))
    if config["weights"]["intervention"]["enabled"]:
        if not config["weights"]["enabled"]:
            raise StudyConfigError("weights.intervention.enabled is true but weights.enabled is false: the "
                                   "intervention removes the intruders the weight-space drift finds; turn both on")
        _settings_or_refuse("weights.intervention", InterventionSettings, intervention_settings(config))
    _settings_or_refuse("metrics", CKAConfig, cka_settings(config))


def _settings_or_refuse(key: str, settings_class: type, settings: dict):
    try:
        return settings_class(**settings)
    except ValueError as error:
        raise StudyConfigError(f"{key}: {error}") from None


def _check_probe_fits(config: dict, name: str) -> None:
    """A method with a probe phase (LP-FT) needs fine-tune epochs after it in every dataset."""
    method = METHODS[base_method(config, name)]
    settings = MethodConfig(**method_settings(config, name))
    short = [d["name"] for d in config["datasets"] if not settings.fits(d["epochs"])]
    if short:
        key = method.config_section + "." + next(k for k, f in method.settings_fields.items() if f == "lp_epochs")
        raise StudyConfigError(f"{key} is {settings.lp_epochs} but datasets {short} train only that many epochs or "
                               f"fewer: {method.label} needs epochs after the probe. Lower {key} or raise their epochs.")


# Which kind each regulariser option belongs to (from the regulariser's own settings).
REGULARISER_OPTION_OWNERS = {**{option: kind for kind, options in OPTIONS.items() for option in options},
                             **dict.fromkeys(FLOOR_OPTIONS, "entropy_floor")}


def _check_regulariser(config: dict, name: str, regulariser: dict) -> None:
    """A variant's regulariser against its own rules (clipdrift.train.regulariser_config), and those
    only the keys given can tell: another kind's option, an entropy floor given both ways."""
    kind = regulariser.get("kind")
    for option, owner in REGULARISER_OPTION_OWNERS.items():
        if owner != kind and option in regulariser:
            raise StudyConfigError(f"methods: variant {name!r} gives its {kind} regulariser {option}: it is the "
                                   f"{owner} regulariser's option; remove regulariser.{option}")
    if "floor" in regulariser and "ratio" in regulariser:
        raise StudyConfigError(f"methods: variant {name!r} gives its entropy floor both an absolute floor and a ratio "
                               "of the pretrained entropy: keep one")
    try:
        RegulariserConfig(**regulariser_settings(config, regulariser))
    except ValueError as error:
        raise StudyConfigError(f"methods: variant {name!r}: {error}") from None


def method_entries(config: dict) -> dict[str, dict]:
    """Every entry of ``methods:`` by its name, as ``{"method": base, ...its own settings}``.

    A plain entry (``full``, ``lora``, ``lp-ft``) is a method under its own name; a variant
    (``{name: lora-r4, method: lora, lora: {r: 4}}``) is its base method with its own settings,
    which override the study's (``lora``, ``training``) or add to them (``freeze_blocks``).
    """
    entries = {}
    for entry in config["methods"]:
        entry = {"name": entry, "method": entry} if isinstance(entry, str) else entry
        entries[entry["name"]] = {key: value for key, value in entry.items() if key != "name"}
    return entries


def method_names(config: dict) -> list[str]:
    """The grid's method axis: plain methods and variants, by name, in the config's order."""
    return list(method_entries(config))


def base_method(config: dict, name: str) -> str:
    """The method (``full``, ``lora`` or ``lp-ft``) a method or variant name trains with."""
    return method_entries(config)[name]["method"]


def method_settings(config: dict, name: str) -> dict:
    """Keyword arguments of :class:`clipdrift.model.methods.MethodConfig` for a method or variant:
    its method's config section (a variant's own keys over the study's), by the registry's fields."""
    entry = method_entries(config)[name]
    method = METHODS[entry["method"]]
    study, own = config.get(method.config_section, {}), entry.get(method.config_section, {})
    section = {**study, **own}
    if "options" in own:  # a variant's peft options add to the study's
        section["options"] = {**study.get("options", {}), **own["options"]}
    settings = {"method": method.name}
    settings |= {field: section[key] for key, field in method.settings_fields.items() if key in section}
    for key in ("freeze_blocks", "freeze_embeddings"):  # absent when off: a plain method's settings stay as they were
        if entry.get(key):
            settings[key] = entry[key]
    return settings


def variant_changes(config: dict, name: str) -> list[str]:
    """What a variant sets, each key against what it replaces ("lora.r 4 (study: 8)"), in the
    config's own words; [] for a plain method."""
    entry = method_entries(config)[name]
    plain = f"plain {entry['method']}: none"
    changes = []
    for key, value in entry.items():
        study = config.get(key)
        if key == "method":
            continue
        if key == "regulariser":
            changes.append(f"adds the {value['kind']} regulariser: {_regulariser_options(config, value)} ({plain})")
        elif isinstance(value, dict):
            changes += [f"{key}.{option} {_shown(setting)}" + (f" (study: {_shown(study[option])})"
                                                               if isinstance(study, dict) and option in study else "")
                        for option, setting in value.items()]
        else:
            changes.append(f"{key} {_shown(value)} ({plain})")
    return changes


def _regulariser_options(config: dict, regulariser: dict) -> str:
    """The regulariser's weight and every option of its kind, defaults filled in."""
    settings = RegulariserConfig(**regulariser_settings(config, regulariser))
    shown = ["weight", *OPTIONS[settings.kind]]
    if settings.kind == "entropy_floor":
        shown.append("floor" if settings.floor is not None else "ratio")
    return ", ".join(f"{option} {getattr(settings, option)}" for option in shown)


def _shown(value) -> str:
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)


def traces(config: dict) -> bool:
    """Whether the study's fine-tunes trace their CLS-attention entropy (the collapse onsets)."""
    return bool(config["training"]["entropy_trace_every"] or config["training"]["entropy_trace_per_epoch"])


def regulariser_settings(config: dict, regulariser: dict) -> dict:
    """A variant's regulariser as the run takes it: an entropy floor measures its baseline on the
    probe as the drift metrics aggregate it (``aggregation: paper`` - the mean of the per-batch
    means, as published)."""
    settings = {"floor": None, **regulariser}
    if settings["kind"] == "entropy_floor" and settings["floor"] is None and config["metrics"]["aggregation"] == "paper":
        settings["base_batch_size"] = config["metrics"]["batch_size"]
    return settings


def training_settings(config: dict, dataset: str, lr: str, seed: int, method: str | None = None) -> dict:
    """The optimisation settings of one run (everything its fine-tune depends on); ``method``:
    the method or variant name, whose own ``training`` settings override the study's."""
    entry = method_entries(config)[method] if method else {}
    training = {**config["training"], **entry.get("training", {})}
    dataset_config = next(d for d in config["datasets"] if d["name"] == dataset)
    # absent when unused, so that the settings (and digest) of a study without them stay as they were
    optional = {"regulariser": regulariser_settings(config, entry["regulariser"])} if "regulariser" in entry else {}
    for trace in ("entropy_trace_every", "entropy_trace_per_epoch"):
        if training.get(trace):
            optional[trace] = training[trace]
    return {
        **optional,
        "epochs": dataset_config["epochs"],
        "lr": float(lr),
        "seed": seed,
        "batch_size": training["batch_size"],
        "weight_decay": training["weight_decay"],
        "warmup_fraction": training["warmup_fraction"],
        "grad_clip": training["grad_clip"],
        "amp": training["amp"],
        "eval_amp": training["eval_amp"],
        "eval_batch_size": training["eval_batch_size"],
        "deterministic": training["deterministic"],
        "selection_split": training["selection_split"],
    }


def attention_settings(config: dict) -> dict:
    metrics = config["metrics"]
    return {key: metrics[key] for key in ("aggregation", "batch_size", "rollout_alpha", "erf_mass", "entropy_unit")}


def cka_settings(config: dict) -> dict:
    return {"token": config["metrics"]["cka_token"], "batch_size": config["metrics"]["batch_size"]}


def probe_sensitivity_settings(config: dict) -> dict | None:
    """Probe seeds of the probe-subset sensitivity, or None when it is off."""
    sensitivity = config["metrics"]["probe_sensitivity"]
    if not sensitivity["enabled"]:
        return None
    return {"seeds": [int(s) for s in sensitivity["seeds"]], "probe_size": config["data"]["probe_size"]}


def backbone_descriptor(config: dict, weights_path: str | None = None) -> dict:
    """What backbone.json records: enough to rebuild the pretrained model anywhere."""
    backbone = config["backbone"]
    return {
        "name": backbone["name"],
        "pretrained": weights_path if backbone["source"] == "world" else backbone["pretrained"],
        "cache_dir": backbone.get("cache_dir"),
        "source": backbone["source"],
    }


# ---------------------------------------------------------------------------------------------
# Curves: interpolation points and per-epoch trajectories
# ---------------------------------------------------------------------------------------------


def _epoch_list(value, epochs: int) -> list[int]:
    return list(range(1, epochs + 1)) if value == "all" else sorted(int(e) for e in value)


def curve_epochs(config: dict, dataset: str) -> list[int]:
    """The epochs whose weights the curves of ``dataset``'s runs measure ([] when off)."""
    curves = config["curves"]
    if not curves["enabled"]:
        return []
    return _epoch_list(curves["epochs"], _dataset(config, dataset)["epochs"])


def kept_epochs(config: dict, dataset: str) -> list[int]:
    """The epochs whose weights a fine-tune of ``dataset`` keeps when trajectories are measured."""
    return _epoch_list(config["curves"]["keep_epochs"], _dataset(config, dataset)["epochs"])


def snapshot_settings(config: dict, dataset: str, method: str) -> dict:
    """What a fine-tune keeps per epoch when its rule declares the ``epochs`` output (the
    finetune rule's params). Deliberately independent of whether trajectories are on: turning
    them off reruns no fine-tune, turning them on reruns those whose kept weights are missing
    (Snakemake: "Missing output files"), and measuring other kept epochs reruns none."""
    whole_tower = METHODS[base_method(config, method)].trains_tower  # an adapter's snapshots are small: fp32 always
    return {"epochs": kept_epochs(config, dataset),
            "dtype": config["curves"]["snapshot_dtype"] if whole_tower else "float32"}


def curve_settings(config: dict, dataset: str) -> dict:
    """What a curve job measures (the curves rule's params)."""
    return {"alphas": sorted(float(a) for a in config["curves"]["alphas"]), "epochs": curve_epochs(config, dataset),
            "attention": attention_settings(config), "eval_batch_size": config["training"]["eval_batch_size"],
            "zeroshot": suite_settings(config)}  # CurveSettings(**these); check_settings builds it


def weight_settings(config: dict, dataset: str) -> dict:
    """What a run's weight-drift job measures (the weights rule's params): the weights section and
    the epochs the curves measure."""
    return {**{key: value for key, value in config["weights"].items() if key not in ("enabled", "intervention")},
            "epochs": curve_epochs(config, dataset)}  # WeightSettings(**these); check_settings builds it


def intervention_settings(config: dict) -> dict:
    """What a run's intervention job scores (the intervention rule's params)."""
    weights = config["weights"]
    return {"keeps": sorted(float(k) for k in weights["intervention"]["lambdas"]), "top_k": weights["top_k"],
            "epsilon": weights["epsilon"], "attention": attention_settings(config),
            "eval_batch_size": config["training"]["eval_batch_size"], "zeroshot": suite_settings(config)}


def _dataset(config: dict, name: str) -> dict:
    return next(d for d in config["datasets"] if d["name"] == name)


def check_curves(config: dict) -> None:
    """Measured epochs must exist and be kept; named by key, with the fix."""
    if not config["curves"]["enabled"]:
        return
    for dataset in config["datasets"]:
        measured = curve_epochs(config, dataset["name"])
        beyond = [e for e in measured if e > dataset["epochs"]]
        if beyond:
            raise StudyConfigError(f"curves.epochs lists epochs {beyond} but {dataset['name']} trains "
                                   f"{dataset['epochs']} epochs: list epochs up to {dataset['epochs']} (or all).")
        missing = sorted(set(measured) - set(kept_epochs(config, dataset["name"])))
        if missing:
            raise StudyConfigError(f"curves.epochs measures epochs {missing} of {dataset['name']} that curves.keep_epochs "
                                   "does not keep: add them to curves.keep_epochs (or keep all).")


def jobs_import_from(source_dir: str | Path) -> None:
    """Let every job this process starts import clipdrift from ``source_dir`` (appended to
    PYTHONPATH, so a path already there wins; the installed package is shadowed)."""
    import os

    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(source_dir)]))
