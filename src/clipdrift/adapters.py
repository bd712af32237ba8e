"""The fine-tuning methods: which parameters train, LoRA through peft, and the trainable state.

- ``full``: image tower + visual projection + head train.
- ``lora``: peft LoRA on the image tower's explicit q and v projections (see
  :mod:`clipdrift.backbones`); the visual projection (switchable) and head train; every base
  weight is frozen.

The text tower never trains in any method.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from clipdrift.backbones import CLIPClassifier, image_tower_blocks
from clipdrift.device import seeded

METHODS = ("full", "lora")
LORA_TARGET_CHOICES = ("q_proj", "k_proj", "v_proj", "out_proj")


@dataclass(frozen=True)
class MethodConfig:
    """A fine-tuning method and its settings (paper defaults)."""

    method: str = "full"
    lora_r: int = 8
    lora_alpha: float = 16
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    train_projection: bool = True

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method {self.method!r} is unknown: use one of {METHODS}")
        unknown = set(self.lora_targets) - set(LORA_TARGET_CHOICES)
        if unknown:
            raise ValueError(f"lora targets {sorted(unknown)} are unknown: use some of {LORA_TARGET_CHOICES}")
        if self.lora_r < 1:
            raise ValueError(f"lora r must be >= 1, got {self.lora_r}")
        object.__setattr__(self, "lora_targets", tuple(self.lora_targets))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "MethodConfig":
        return cls(**{k: (tuple(v) if k == "lora_targets" else v) for k, v in values.items()})


def lora_target_regex(targets: tuple[str, ...]) -> str:
    """A full-match regex for peft that selects image-tower attention projections only."""
    return rf"clip\.visual\.transformer\.resblocks\.\d+\.attn\.({'|'.join(targets)})"


def apply_method(model: CLIPClassifier, config: MethodConfig, seed: int = 0) -> CLIPClassifier:
    """Set up ``model`` in place for ``config``: inject adapters, set ``requires_grad``.

    peft draws the LoRA A matrices from the global RNG; they are drawn from ``seed`` here (the
    caller's RNG state is left untouched), so the same seed gives the same run.
    """
    image_tower_blocks(model.clip)  # fail early on unsupported towers
    model.requires_grad_(False)
    if config.method == "lora":
        with seeded(seed):
            _inject_lora(model, config)
    else:
        model.clip.visual.requires_grad_(True)
    model.head.requires_grad_(True)
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
        param.requires_grad_("lora_" in name)
    model.clip.visual.proj.requires_grad_(config.train_projection)


def _parameter_group(name: str) -> str:
    if "lora_" in name:
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

    LoRA: only what changed (adapters, projection, head), so the checkpoint names its base.
    Full FT: the whole image tower, projection and head.
    """
    keys = model.state_dict().keys()
    if config.method == "lora":
        groups = {"adapter", "projection", "head"}
    else:
        groups = {"image_tower", "projection", "head"}
    return [key for key in keys if _parameter_group(key) in groups]


def trainable_state(model: CLIPClassifier, config: MethodConfig) -> dict[str, torch.Tensor]:
    """The tensors to checkpoint, detached, contiguous and on the CPU."""
    state = model.state_dict()
    return {key: state[key].detach().to("cpu").contiguous() for key in checkpoint_keys(model, config)}


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters an optimiser should update (one group, as in the published study)."""
    return [param for param in model.parameters() if param.requires_grad]
