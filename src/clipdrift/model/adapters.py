"""The fine-tuning methods: which parameters train, LoRA through peft, and the trainable state.

- ``full``: image tower + visual projection + head train.
- ``lora``: peft LoRA on the image tower's explicit q and v projections (see
  :mod:`clipdrift.model.backbones`); the visual projection (switchable) and head train; every base
  weight is frozen.
- ``lp-ft`` (linear probe, then fine-tune; Kumar et al. 2022): the first ``lp_epochs`` epochs
  train the head only (and the visual projection when ``lp_train_projection``) on the frozen
  encoder, the remaining epochs train what Full FT trains. :func:`apply_method` sets the model up
  like Full FT (so one optimiser holds every parameter that will ever train);
  :func:`set_lp_ft_phase` switches ``requires_grad`` between the phases, which
  :func:`clipdrift.train.engine.finetune` does at the start of every epoch.

The text tower never trains in any method.
"""

from __future__ import annotations

import torch
from torch import nn

from clipdrift.core.device import seeded
from clipdrift.model.backbones import CLIPClassifier, image_tower_blocks
from clipdrift.model.methods import MethodConfig, is_adapter_parameter, method

# What an open_clip ViT image tower computes before its first block (frozen with freeze_embeddings).
EMBEDDING_STAGE = ("conv1", "class_embedding", "positional_embedding", "ln_pre")


def lora_target_regex(targets: tuple[str, ...]) -> str:
    """A full-match regex for peft that selects image-tower attention projections only."""
    return rf"clip\.visual\.transformer\.resblocks\.\d+\.attn\.({'|'.join(targets)})"


def apply_method(model: CLIPClassifier, config: MethodConfig, seed: int = 0) -> CLIPClassifier:
    """Set up ``model`` in place for ``config``: inject adapters, set ``requires_grad``.

    peft draws the LoRA A matrices from the global RNG; they are drawn from ``seed`` here (the
    caller's RNG state is left untouched), so the same seed gives the same run.

    lp-ft is set up as Full FT (its fine-tune phase: every parameter it will ever train);
    :func:`clipdrift.train.engine.finetune` (given ``method=config``) switches the phases. The config
    is recorded on the model (``model.clipdrift_method``) so that finetune can refuse an lp-ft
    model it was not told about, which would otherwise train as Full FT from the first epoch.
    """
    image_tower_blocks(model.clip)  # fail early on unsupported towers
    model.requires_grad_(False)
    entry = method(config.method)
    if entry.trains_tower:
        train_image_tower(model, config.freeze_blocks, config.freeze_embeddings)
    elif entry.adapter == "lora":
        with seeded(seed):
            _inject_lora(model, config)
    else:
        raise ValueError(f"method {entry.name!r} names adapter {entry.adapter!r}, which apply_method cannot set up")
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


def train_image_tower(model: CLIPClassifier, freeze_blocks: int = 0, freeze_embeddings: bool = False) -> None:
    """Let the image tower and projection train, except its first ``freeze_blocks`` blocks and,
    with ``freeze_embeddings``, its embedding stage (in place)."""
    visual = model.clip.visual
    blocks = image_tower_blocks(model.clip)
    if freeze_blocks > len(blocks):
        raise ValueError(f"freeze_blocks is {freeze_blocks} but the image tower has {len(blocks)} blocks: "
                         f"freeze at most {len(blocks)}")
    visual.requires_grad_(True)
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


def _inject_lora(model: CLIPClassifier, config: MethodConfig) -> None:
    import peft  # imported here: it pulls in transformers (seconds), which Full FT never needs

    lora = peft.LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        bias="none",
        target_modules=lora_target_regex(config.lora_targets),
    )
    peft.inject_adapter_in_model(lora, model)
    for name, param in model.named_parameters():
        param.requires_grad_(is_adapter_parameter(name))
    model.clip.visual.proj.requires_grad_(config.train_projection)


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

    The method's ``checkpoint_groups``: for an adapter method (LoRA) only what changed (adapters,
    projection, head), so the checkpoint names its base; for Full FT and lp-ft the whole image
    tower, projection and head.
    """
    groups = set(method(config.method).checkpoint_groups)
    return [key for key in model.state_dict() if _parameter_group(key) in groups]


def trainable_state(model: CLIPClassifier, config: MethodConfig) -> dict[str, torch.Tensor]:
    """The tensors to checkpoint, detached, contiguous and on the CPU."""
    state = model.state_dict()
    return {key: state[key].detach().to("cpu").contiguous() for key in checkpoint_keys(model, config)}


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters an optimiser should update (one group, as in the published study)."""
    return [param for param in model.parameters() if param.requires_grad]
