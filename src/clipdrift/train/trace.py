"""The CLS-attention entropy traced through training, for the collapse onset
(:mod:`clipdrift.analysis.collapse`): the mean over layers of the mean CLS-attention entropy
(nats; the regularisers' definition) of the study's probe (the class-balanced, seeded subset of
the evaluation split every drift metric reads), unflipped, in eval mode and without gradients,
so the run's weights and random streams are the same with or without the trace.

As the published code traced it: after the first optimiser step and every ``interval`` steps
after that (steps 1, 1 + interval, …, counting from 1), ``interval`` being
``entropy_trace_every`` or ``steps_per_epoch // entropy_trace_per_epoch`` (published: 5 per
epoch). The value before any step (``pretrained``) is recorded too.
"""

from __future__ import annotations

import contextlib

import torch

from clipdrift.model.backbones import CLIPClassifier
from clipdrift.train.regularisers import eval_cls_rows, row_entropy


class EntropyTrace:
    """Measures ``model``'s layer-mean CLS-attention entropy on ``images`` (normalised model input)."""

    def __init__(self, model: CLIPClassifier, images: torch.Tensor, interval: int, autocast=contextlib.nullcontext):
        self.model, self.images, self.every, self.autocast = model, images, interval, autocast
        self.pretrained = self.measure()  # taken when the run starts: before any step or resumed state

    def due(self, step: int) -> bool:
        """Whether the model after its ``step``-th optimiser step (from 1) is traced."""
        return (step - 1) % self.every == 0

    def measure(self) -> float:
        with self.autocast():
            rows = eval_cls_rows(self.model.clip, self.images)
        return float(torch.stack([row_entropy(layer).mean() for layer in rows]).mean())
