"""The fine-tuning methods: which parameters train, adapters through peft, and the trainable state.

- ``full``: image tower + visual projection + head train.
- ``bitfit``: the image tower's biases + visual projection + head train.
- the adapter methods (``lora`` and its kinds, VeRA, (IA)³, LoHa, LoKr, OFT, BOFT, any peft
  tuner): peft's adapters on the image tower's explicit attention projections and MLP linears
  (see :mod:`clipdrift.model.backbones`), made by peft's own tuner class from the method's peft
  config (:func:`peft_config`); the visual projection (switchable) and head train with what
  peft marks trainable; every base weight is frozen.
- ``lp-ft`` (linear probe, then fine-tune; Kumar et al. 2022): the first ``lp_epochs`` epochs
  train the head only (and the visual projection when ``lp_train_projection``) on the frozen
  encoder, the remaining epochs train what Full FT trains. :func:`apply_method` sets the model up
  like Full FT (so one optimiser holds every parameter that will ever train);
  :func:`set_lp_ft_phase` switches ``requires_grad`` between the phases, which
  :func:`clipdrift.train.engine.finetune` does at the start of every epoch.

The text tower never trains in any method.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from clipdrift.core.device import seeded, torch_threads
from clipdrift.model.backbones import CLIPClassifier, image_tower_blocks
from clipdrift.model.methods import (
    ANY_ADAPTER,
    ATTENTION_TARGETS,
    MLP_TARGETS,
    MethodConfig,
    is_adapter_parameter,
    method,
)

# What an open_clip ViT image tower computes before its first block (frozen with freeze_embeddings).
EMBEDDING_STAGE = ("conv1", "class_embedding", "positional_embedding", "ln_pre")
PROJECTION = "proj"  # open_clip VisionTransformer's projection, relative to model.clip.visual
ADAPTER_NAME = "default"  # the name peft gives a model's one adapter


def target_regex(targets: tuple[str, ...]) -> str:
    """A full-match regex for peft that selects the named linears of the image tower's blocks only."""
    branches = [rf"{part}\.({'|'.join(names)})" for part, group in (("attn", ATTENTION_TARGETS), ("mlp", MLP_TARGETS))
                if (names := [name for name in group if name in targets])]
    return rf"clip\.visual\.transformer\.resblocks\.\d+\.({'|'.join(branches)})"


class AdapterSettingsError(ValueError):
    """peft cannot make a method's adapters from its settings."""


def peft_config(config: MethodConfig, total_steps: int | None = None):
    """The peft config of an adapter method's settings: its class, the keywords the method fixes,
    the study's (LoRA's: r, alpha, dropout) and the user's options, on ``target_regex``; a rank
    schedule's (AdaLoRA's) ``total_step`` is the run's ``total_steps`` (without them: just past its
    ``tinit`` and ``tfinal``, which shapes no layer). Refused with :class:`AdapterSettingsError`
    naming the problem where peft's config refuses them."""
    import peft  # imported here: it pulls in transformers (seconds), which Full FT never needs

    entry = method(config.method)
    kind = _config_class(peft, config.peft_type if entry.adapter == ANY_ADAPTER else entry.adapter)
    if entry.adapter == ANY_ADAPTER and kind is peft.AdaLoraConfig:
        raise AdapterSettingsError("AdaLoRA is a method of its own (adalora, with its rank schedule): use it, not peft")
    keywords = {"target_modules": target_regex(config.lora_targets), **entry.adapter_options, **config.peft_options}
    if entry.schedules_rank:
        keywords["total_step"] = total_steps or keywords.get("tinit", 0) + keywords.get("tfinal", 0) + 1
    if entry.adapter == "LoraConfig":
        keywords |= {"r": config.lora_r, "lora_alpha": config.lora_alpha, "lora_dropout": config.lora_dropout,
                     "bias": "none"}
    if kind is peft.IA3Config and "feedforward_modules" not in keywords:
        # (IA)³ rescales a feed-forward layer's input (the activations after the nonlinearity): c_proj's, if targeted
        keywords["feedforward_modules"] = target_regex(("c_proj",)) if "c_proj" in config.lora_targets else []
    accepted = {item.name for item in dataclasses.fields(kind)}
    unknown = sorted(set(keywords) - accepted)
    if unknown:
        raise AdapterSettingsError(f"{entry.label}: peft's {kind.__name__} has no option {unknown}: use some of "
                                   f"{sorted(accepted - set(keywords) - _PEFT_BOOKKEEPING)}")
    try:
        return kind(**keywords)
    except (TypeError, ValueError) as error:
        raise AdapterSettingsError(f"{entry.label}: peft's {kind.__name__} refuses its settings: {error}") from None


# PeftConfig fields that are peft's bookkeeping, not a tuner's options (left out of the hint).
_PEFT_BOOKKEEPING = {"peft_type", "auto_mapping", "base_model_name_or_path", "revision", "task_type",
                     "inference_mode", "peft_version"}


def _config_class(peft, name: str):
    """peft's config class named ``name`` (``HRAConfig``) or of peft type ``name`` (``HRA``)."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    by_type = {str(kind).rsplit(".", 1)[-1].upper(): config for kind, config in PEFT_TYPE_TO_CONFIG_MAPPING.items()}
    found = getattr(peft, name, None) if name.endswith("Config") else by_type.get(name.upper())
    if not (isinstance(found, type) and issubclass(found, peft.PeftConfig)) or found not in by_type.values():
        known = sorted(config.__name__ for config in by_type.values())
        raise AdapterSettingsError(f"{name!r} is not a peft tuner's config: use one of {known}")
    return found


def apply_method(model: CLIPClassifier, config: MethodConfig, seed: int = 0) -> CLIPClassifier:
    """Set up ``model`` in place for ``config``: inject adapters, set ``requires_grad``.

    peft draws adapters' initial values (LoRA's A matrices) from the global RNG; they are drawn
    from ``seed`` here (the caller's RNG state is left untouched), so the same seed gives the same run.

    lp-ft is set up as Full FT (its fine-tune phase: every parameter it will ever train);
    :func:`clipdrift.train.engine.finetune` (given ``method=config``) switches the phases. The config
    is recorded on the model (``model.clipdrift_method``) so that finetune can refuse an lp-ft
    model it was not told about, which would otherwise train as Full FT from the first epoch.
    """
    image_tower_blocks(model.clip)  # fail early on unsupported towers
    model.requires_grad_(False)
    entry = method(config.method)
    if entry.trains_tower:
        train_image_tower(model, config.freeze_blocks, config.freeze_embeddings, config.trains_biases_only)
    else:
        with seeded(seed):
            inject_adapters(model, config)
        model.clip.visual.proj.requires_grad_(config.train_projection)
    model.head.requires_grad_(True)
    model.clipdrift_method = config
    return require_frozen_text_tower(model)


def set_lp_ft_phase(model: CLIPClassifier, config: MethodConfig, probing: bool) -> CLIPClassifier:
    """Set ``requires_grad`` for one lp-ft phase (in place).

    ``probing``: the head trains (and the visual projection when ``config.lp_train_projection``),
    the encoder is frozen. Otherwise (fine-tuning): the image tower, projection and head, as
    Full FT. The text tower never trains. A frozen parameter gets no gradient, so AdamW neither
    updates nor decays it, and keeps no state for it until its first gradient.
    """
    if not config.probes_first:
        raise ValueError(f"set_lp_ft_phase is for a method with a probe phase (lp-ft), not {config.method!r}")
    model.requires_grad_(False)
    if probing:
        model.clip.visual.proj.requires_grad_(config.lp_train_projection)
    else:
        train_image_tower(model, config.freeze_blocks, config.freeze_embeddings)
    model.head.requires_grad_(True)
    return require_frozen_text_tower(model)


def train_image_tower(model: CLIPClassifier, freeze_blocks: int = 0, freeze_embeddings: bool = False,
                      biases_only: bool = False) -> None:
    """Let the image tower and projection train, except its first ``freeze_blocks`` blocks and,
    with ``freeze_embeddings``, its embedding stage (in place); ``biases_only`` (BitFit): of the
    tower's own weights, only its biases."""
    visual = model.clip.visual
    blocks = image_tower_blocks(model.clip)
    if freeze_blocks > len(blocks):
        raise ValueError(f"freeze_blocks is {freeze_blocks} but the image tower has {len(blocks)} blocks: "
                         f"freeze at most {len(blocks)}")
    visual.requires_grad_(True)
    if biases_only:
        for name, param in visual.named_parameters():
            param.requires_grad_(name.endswith("bias") or name == PROJECTION)
    if freeze_embeddings:
        for name, param in visual.named_parameters():
            if name.split(".")[0] in EMBEDDING_STAGE:
                param.requires_grad_(False)
    for block in blocks[:freeze_blocks]:
        block.requires_grad_(False)


def require_frozen_text_tower(model: nn.Module) -> nn.Module:
    """Refuse a model whose text tower would train.

    Zero-shot scoring computes the text classifier once per study from the pretrained text
    tower and reuses it for every run; that is right only because no method ever trains the text
    tower (checkpoints do not even hold it). This check keeps it true.
    """
    training = [name for name, param in model.named_parameters()
                if param.requires_grad and _parameter_group(name) == "text_tower"]
    if training:
        raise RuntimeError(f"the text tower must stay frozen in every method, but {training[:3]} would train: "
                           "zero-shot scoring shares one text classifier across all runs")
    return model


def inject_adapters(model: nn.Module, config: MethodConfig):
    """Put the method's adapters on ``model``'s target linears in place with peft's own tuner class
    (what ``peft.inject_adapter_in_model`` does, for the tuners whose state that function refuses
    too: VeRA's shared matrices live on the layers here); only what peft marks trainable trains,
    and the visual projection as ``train_projection`` says. Returns peft's tuner."""
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING

    settings = peft_config(config)
    frozen = [param for param in model.parameters() if not param.requires_grad]
    try:
        # one thread: an initialisation that decomposes the base (PiSSA's SVD, OLoRA's QR) then gives
        # the same bits in every job that sets the method up (the fine-tune, and each one that loads it)
        with torch_threads(1):
            tuner = PEFT_TYPE_TO_TUNER_MAPPING[settings.peft_type](model, settings, ADAPTER_NAME)
    except (TypeError, ValueError, RuntimeError) as error:
        raise AdapterSettingsError(f"{method(config.method).label}: peft cannot put its adapters on targets "
                                   f"{list(config.lora_targets)}: {error}") from None
    for param in frozen:  # what was frozen stays frozen: only peft's adapters are new to train
        param.requires_grad_(False)
    return tuner


def check_adapters_fit(config: MethodConfig, width: int, mlp_width: int) -> None:
    """Refuse (:class:`AdapterSettingsError`) an adapter method peft cannot put on the targets of
    a block of these widths, or whose adapted linears then fail to compute: the method's adapters
    on one stand-in block named as the image tower's, each adapted linear run once."""
    block = nn.Module()
    block.attn = nn.ModuleDict({name: nn.Linear(width, width) for name in ATTENTION_TARGETS})
    block.mlp = nn.ModuleDict({"c_fc": nn.Linear(width, mlp_width), "c_proj": nn.Linear(mlp_width, width)})
    tower = nn.Module()
    tower.clip = nn.Module()
    tower.clip.visual = nn.Module()
    tower.clip.visual.transformer = nn.Module()
    tower.clip.visual.transformer.resblocks = nn.ModuleList([block])
    tower.requires_grad_(False)
    with seeded(0):
        inject_adapters(tower, config)
    for part in (block.attn, block.mlp):
        for name, linear in part.items():
            if name in config.lora_targets:
                try:
                    linear(torch.zeros(1, linear.get_base_layer().in_features))
                except (RuntimeError, ValueError) as error:
                    raise AdapterSettingsError(f"{method(config.method).label}: its adapter on {name} fails to "
                                               f"compute: {error}") from None


def _parameter_group(name: str) -> str:
    if is_adapter_parameter(name):
        return "adapter"
    if name == "clip.visual.proj":
        return "projection"
    if name.startswith("head."):
        return "head"
    if name.startswith("clip.visual."):
        return "image_tower"
    return "text_tower"


def trainable_parameter_counts(model: nn.Module) -> dict[str, int]:
    """Trainable parameters by group (adapter, projection, head, image_tower) and in total."""
    counts = {"adapter": 0, "projection": 0, "head": 0, "image_tower": 0, "text_tower": 0}
    for name, param in model.named_parameters():
        if param.requires_grad:
            counts[_parameter_group(name)] += param.numel()
    counts["total"] = sum(counts.values())
    return counts


def checkpoint_keys(model: CLIPClassifier, config: MethodConfig) -> list[str]:
    """The state-dict keys a checkpoint of this method holds.

    The method's ``checkpoint_groups``: for an adapter method only what changed (the adapters'
    trained parameters, projection, head), so the checkpoint names its base (an adapter's frozen
    tensors, such as VeRA's shared random matrices, are made again from their seed when it is
    loaded); for BitFit the image tower's biases, projection and head; for Full FT and lp-ft the
    whole image tower, projection and head.
    """
    groups = set(method(config.method).checkpoint_groups)
    parameters = dict(model.named_parameters(remove_duplicate=False))
    if "image_tower" in groups:
        groups.add("image_tower_biases")
    return [key for key in model.state_dict() if _checkpoint_group(key, parameters) in groups]


def _checkpoint_group(key: str, parameters: dict[str, nn.Parameter]) -> str | None:
    group = _parameter_group(key)
    if group == "adapter" and not (key in parameters and parameters[key].requires_grad):
        return None  # an adapter's frozen tensor (VeRA's shared matrices, OFT's indices, AdaLoRA's rank)
    if group == "image_tower" and key.endswith(".bias"):
        return "image_tower_biases"
    return group


def trainable_state(model: CLIPClassifier, config: MethodConfig) -> dict[str, torch.Tensor]:
    """The tensors to checkpoint, detached, contiguous and on the CPU."""
    state = model.state_dict()
    return {key: state[key].detach().to("cpu").contiguous() for key in checkpoint_keys(model, config)}


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters an optimiser should update (one group, as in the published study)."""
    return [param for param in model.parameters() if param.requires_grad]
