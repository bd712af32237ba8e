"""The CLS-attention entropy traced through training, for the collapse onset: every ``every``
optimiser steps, the mean over layers of the batch-mean CLS-attention entropy (nats; the
regularisers' definition) of a fixed probe batch — the first :data:`TRACE_IMAGES` images of the
selection split, unflipped, in eval mode and without gradients, so the run's weights and random
streams are the same with or without the trace."""

from __future__ import annotations

import contextlib

import torch

from clipdrift.model.backbones import CLIPClassifier
from clipdrift.train.regularisers import eval_cls_rows, row_entropy

TRACE_IMAGES = 32


class EntropyTrace:
    """Measures ``model``'s layer-mean CLS-attention entropy on ``images`` (normalised model input)."""

    def __init__(self, model: CLIPClassifier, images: torch.Tensor, every: int, autocast=contextlib.nullcontext):
        self.model, self.images, self.every, self.autocast = model, images, every, autocast
        self.pretrained = self.measure()  # taken when the run starts: before any step or resumed state

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def measure(self) -> float:
        with self.autocast():
            rows = eval_cls_rows(self.model.clip, self.images)
        return float(torch.stack([row_entropy(layer).mean() for layer in rows]).mean())
