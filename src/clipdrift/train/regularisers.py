"""Attention regularisers of the published ablations, added to the fine-tuning loss.

Both act on the CLS→patch attention of the image tower: for layer ``l``, head ``h`` and image
``b``, ``p[l,h,b]`` is the CLS query's softmax row over the patch keys, CLS→CLS dropped and the
row renormalised (the distribution every attention metric of the study measures,
:func:`clipdrift.measure.attention.cls_patch_distribution`). With ``L`` layers, ``H`` heads and a
batch of ``B`` images the loss is ``cross-entropy + weight · R`` with

- **APR** (attention-preservation regulariser), ``kind: apr``::

      R = 1/(L·H·B) · Σ_{l,h,b} KL(q[l,h,b] ‖ p[l,h,b]),   KL(q ‖ p) = Σ_j q_j · log(q_j / p_j)

  where ``q`` is the attention of the frozen pretrained tower on the same (augmented) batch:
  the tower as it was when the run started, run once more per step without gradients.

- **Entropy floor**, ``kind: entropy_floor``::

      R = 1/L · Σ_l max(0, f_l − H_l),   H_l = 1/(H·B) · Σ_{h,b} −Σ_j p[l,h,b]_j · log p[l,h,b]_j

  a hinge on each layer's mean CLS-attention entropy (nats) below its floor ``f_l``: ``floor``
  when given (one value for every layer), else the layer's pretrained value, measured once when
  the run starts on the first ``batch_size`` training images in their stored order (no flips).

Both read the attention of the training forward pass itself (no second capture pass; APR's
pretrained attention needs the pretrained tower's own forward). Arithmetic in float32 whatever
the autocast, for stable logs.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch
from torch import nn

from clipdrift.model.backbones import CLIPClassifier, attention_hooks, explicit_attention_modules

REGULARISERS = ("apr", "entropy_floor")


@dataclass(frozen=True)
class RegulariserConfig:
    """A regulariser of the fine-tuning loss: ``kind`` (apr or entropy_floor), its ``weight``
    (λ) and, for the entropy floor, one ``floor`` in nats for every layer (None: each layer's
    pretrained value)."""

    kind: str
    weight: float
    floor: float | None = None

    def __post_init__(self):
        if self.kind not in REGULARISERS:
            raise ValueError(f"regulariser {self.kind!r} is unknown: use one of {REGULARISERS}")
        if not self.weight > 0:
            raise ValueError(f"regulariser weight must be > 0, got {self.weight!r}")
        if self.floor is not None and (self.kind != "entropy_floor" or not self.floor >= 0):
            raise ValueError(f"floor is the entropy floor's (>= 0 nats), got {self.floor!r} for {self.kind}")

    def to_dict(self) -> dict:
        return asdict(self)


def cls_patch_rows(probs: torch.Tensor) -> torch.Tensor:
    """The CLS→patch rows of ``(B, H, T, T)`` or ``(B, H, T)`` (CLS query) attention, CLS→CLS
    dropped, renormalised, in float32: ``(B, H, T-1)``."""
    rows = (probs[..., 0, 1:] if probs.dim() == 4 else probs[..., 1:]).float()
    return rows / rows.sum(dim=-1, keepdim=True)


def kl_divergence(target: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """``KL(target ‖ current)`` over the last dimension (0·log 0 = 0), per row."""
    return (torch.special.xlogy(target, target) - torch.special.xlogy(target, current)).sum(dim=-1)


def row_entropy(rows: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) over the last dimension, per row."""
    return torch.special.entr(rows).sum(dim=-1)


def apr_penalty(current: list[torch.Tensor], pretrained: list[torch.Tensor]) -> torch.Tensor:
    """Mean over layers, heads and images of ``KL(pretrained ‖ current)`` of CLS→patch rows."""
    return torch.stack([kl_divergence(q, p).mean() for p, q in zip(current, pretrained)]).mean()


def entropy_floor_penalty(current: list[torch.Tensor], floors: torch.Tensor) -> torch.Tensor:
    """Mean over layers of ``max(0, floor − the layer's mean CLS-attention entropy)``."""
    entropies = torch.stack([row_entropy(rows).mean() for rows in current])
    return torch.relu(floors.to(entropies) - entropies).mean()


@contextlib.contextmanager
def cls_attention(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """While inside, every forward of ``model``'s image tower leaves each layer's CLS→patch rows
    (``(B, H, T-1)``, with their gradients) in the yielded list, replacing the previous ones."""
    rows: list[torch.Tensor] = [torch.empty(0)] * len(explicit_attention_modules(model))

    def keep(layer: int, probs: torch.Tensor) -> None:
        rows[layer] = cls_patch_rows(probs[:, :, 0, :])

    with attention_hooks(model, keep):
        yield rows


@torch.no_grad()
def eval_cls_rows(clip: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """Each layer's CLS→patch rows of ``clip``'s image tower on ``images``, in eval mode and
    without gradients (the model's mode is restored)."""
    was_training = clip.training
    clip.eval()
    try:
        with cls_attention(clip) as rows:
            clip.encode_image(images)
        return list(rows)
    finally:
        clip.train(was_training)


class ImageTower(nn.Module):
    """A CLIP image tower on its own, where the attention helpers look for it (``.visual``)."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual(images)


class AttentionRegulariser:
    """One run's regulariser: what it needs from the pretrained tower, taken when the run starts
    (before any step or resumed state), and the penalty of each training batch."""

    def __init__(self, config: RegulariserConfig, model: CLIPClassifier, reference_images: torch.Tensor):
        self.config = config
        self.pretrained = None
        self.floors = None
        if config.kind == "apr":  # the image tower alone: the text tower never trains
            self.pretrained = ImageTower(copy.deepcopy(model.clip.visual)).eval().requires_grad_(False)
        elif config.floor is not None:
            self.floors = torch.full((len(explicit_attention_modules(model.clip)),), float(config.floor))
        else:
            pretrained = eval_cls_rows(model.clip, reference_images)
            self.floors = torch.stack([row_entropy(rows).mean() for rows in pretrained])

    def penalty(self, current: list[torch.Tensor], images: torch.Tensor) -> torch.Tensor:
        """``R`` of the batch ``images`` whose training forward left ``current`` (see the module)."""
        if self.pretrained is not None:
            return apr_penalty(current, eval_cls_rows(self.pretrained, images))
        return entropy_floor_penalty(current, self.floors)
