"""Attention regularisers of the published ablations, added to the fine-tuning loss.

Both act on the CLS→patch attention of the image tower: for layer ``l``, head ``h`` and image
``b``, ``p[l,h,b]`` is the CLS query's softmax row over the patch keys, CLS→CLS dropped and the
row renormalised (the distribution every attention metric of the study measures,
:func:`clipdrift.measure.attention.cls_patch_distribution`). With ``L`` layers, ``H`` heads and a
batch of ``B`` images the loss is ``cross-entropy + weight · R``. By default each is the authors'
definition, as their code computes it; each other definition is a named option.

- **APR** (attention-preservation regulariser), ``kind: apr``::

      R = 1/L · Σ_l 1/(H·B) · Σ_{h,b} KL(p[l,h,b] ‖ q[l,h,b]),   KL(p ‖ q) = Σ_j p_j · log(p_j / q_j)

  the *current* distribution ``p`` first (``direction: current_first``, published), where ``q``
  is the attention of the frozen pretrained tower on the same (augmented) batch: the tower as it
  was when the run started, run once more per step without gradients, in eval mode.
  ``direction: pretrained_first`` is clipdrift's earlier form, ``KL(q ‖ p)``.

- **Entropy floor**, ``kind: entropy_floor``::

      R = Σ_l 1/(H·B) · Σ_{h,b} max(0, ratio · base_l − H(p[l,h,b])),   H(p) = −Σ_j p_j · log p_j

  a hinge on every (image, head) row's entropy (nats) below ``ratio`` (published 0.7) times the
  layer's pretrained entropy ``base_l``, the mean over rows, **summed** over layers: published as
  ``hinge: row``, ``layers: sum``. ``base_l`` is the pretrained model's layer-mean CLS-attention
  entropy on the study's probe (the class-balanced, seeded subset of the evaluation split every
  drift metric is measured on; the published 200 images of seed 42 in the paper preset), as the
  probe reference holds it; ``floor`` gives one absolute threshold for every layer instead.
  ``hinge: layer_mean`` puts the hinge on the layer's mean entropy, ``layers: mean`` averages
  over layers (with ``ratio: 1`` both are clipdrift's earlier form).

Both read the attention of the training forward pass itself (no second capture pass; APR's
pretrained attention needs the pretrained tower's own forward). Arithmetic in float32 whatever
the autocast, with ``0 · log 0 = 0`` exactly where the authors add 1e-10 inside each log
(a difference below 1e-7 relative on rows without exact zeros; tests/test_regularisers.py).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
from torch import nn

from clipdrift.model.backbones import CLIPClassifier, attention_hooks, explicit_attention_modules
from clipdrift.train.regulariser_config import RegulariserConfig


def cls_patch_rows(probs: torch.Tensor) -> torch.Tensor:
    """The CLS→patch rows of ``(B, H, T, T)`` or ``(B, H, T)`` (CLS query) attention, CLS→CLS
    dropped, renormalised, in float32: ``(B, H, T-1)``."""
    rows = (probs[..., 0, 1:] if probs.dim() == 4 else probs[..., 1:]).float()
    return rows / rows.sum(dim=-1, keepdim=True)


def kl_divergence(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """``KL(first ‖ second)`` over the last dimension (0·log 0 = 0), per row."""
    return (torch.special.xlogy(first, first) - torch.special.xlogy(first, second)).sum(dim=-1)


def row_entropy(rows: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) over the last dimension, per row."""
    return torch.special.entr(rows).sum(dim=-1)


def apr_penalty(current: list[torch.Tensor], pretrained: list[torch.Tensor],
                direction: str = "current_first") -> torch.Tensor:
    """Mean over layers of each layer's mean over heads and images of ``KL(current ‖ pretrained)``
    (``pretrained_first``: ``KL(pretrained ‖ current)``) of CLS→patch rows."""
    pairs = zip(current, pretrained) if direction == "current_first" else zip(pretrained, current)
    return torch.stack([kl_divergence(first, second).mean() for first, second in pairs]).mean()


def entropy_floor_penalty(current: list[torch.Tensor], thresholds: torch.Tensor, hinge: str = "row",
                          layers: str = "sum") -> torch.Tensor:
    """The hinge ``max(0, threshold_l − entropy)`` on every row's entropy, averaged over the
    layer's rows (``hinge: layer_mean``: on the layer's mean entropy), summed over layers
    (``layers: mean``: averaged)."""
    thresholds = thresholds.float()
    per_layer = []
    for rows, threshold in zip(current, thresholds.to(current[0].device)):
        entropies = row_entropy(rows)
        per_layer.append(torch.relu(threshold - entropies).mean() if hinge == "row"
                         else torch.relu(threshold - entropies.mean()))
    stacked = torch.stack(per_layer)
    return stacked.sum() if layers == "sum" else stacked.mean()


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


def layer_entropies(clip: nn.Module, images: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """Each layer's mean CLS-attention entropy (nats) of ``clip`` on ``images``, eval mode: over
    every (image, head) row alike, or with ``batch_size`` the mean of the per-batch means of
    batches of that many images in order (how the published code averaged its 200-image subset in
    batches of 32, and the drift metrics' ``aggregation: paper``)."""
    batches = [images] if batch_size is None else images.split(batch_size)
    means = torch.stack([torch.stack([row_entropy(rows).mean() for rows in eval_cls_rows(clip, batch)])
                         for batch in batches])
    return means.mean(dim=0).cpu()


class ImageTower(nn.Module):
    """A CLIP image tower on its own, where the attention helpers look for it (``.visual``)."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual(images)


class AttentionRegulariser:
    """One run's regulariser: what it needs from the pretrained tower, taken when the run starts
    (before any step or resumed state), and the penalty of each training batch.

    ``probe``: the study's probe (normalised model input), on which the entropy floor measures
    its ``base_l``, needed unless the config gives an absolute ``floor``."""

    def __init__(self, config: RegulariserConfig, model: CLIPClassifier, probe: torch.Tensor | None = None):
        self.config = config
        self.pretrained = None
        self.thresholds = None
        if config.kind == "apr":  # the image tower alone: the text tower never trains
            self.pretrained = ImageTower(copy.deepcopy(model.clip.visual)).eval().requires_grad_(False)
        elif config.floor is not None:
            self.thresholds = torch.full((len(explicit_attention_modules(model.clip)),), float(config.floor))
        else:
            if probe is None:
                raise ValueError("the entropy floor measures its baseline on the study's probe: none was given")
            self.thresholds = config.ratio * layer_entropies(model.clip, probe, config.base_batch_size)

    def penalty(self, current: list[torch.Tensor], images: torch.Tensor) -> torch.Tensor:
        """``R`` of the batch ``images`` whose training forward left ``current`` (see the module)."""
        if self.pretrained is not None:
            return apr_penalty(current, eval_cls_rows(self.pretrained, images), self.config.direction)
        return entropy_floor_penalty(current, self.thresholds, self.config.hinge, self.config.layers)
