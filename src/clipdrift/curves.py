"""Curves of one run: its weight-interpolation points and its kept epochs, each measured like a
checkpoint.

Every weight state of a run gets the same four numbers: in-domain test accuracy (the run's own
head), held-out zero-shot top-1 (the study's stored text classifier, adapters active), and the
12-layer mean drift of the CLS-attention entropy and of ERF on the probe against the pretrained
reference. The states are the interpolation points ``alpha`` of the run's final weights
(:func:`clipdrift.interpolation.interpolated`: 0 is the pretrained tower, 1 the run) and the
epochs whose weights the fine-tune kept. No file I/O: the caller loads the models.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import pandas as pd
import torch

from clipdrift.backbones import CLIPClassifier
from clipdrift.data import ImageSplit
from clipdrift.interpolation import interpolated
from clipdrift.metrics.extract import ProbeReference
from clipdrift.metrics.tables import AttentionConfig, model_attention_stats
from clipdrift.train import evaluate as indomain_accuracy
from clipdrift.zeroshot import evaluate as zeroshot_scores

CURVE_COLUMNS = ["kind", "point", "indomain_acc", "zs_top1", "drift_entropy_pct", "drift_erf_pct"]
CURVE_KINDS = ("alpha", "epoch")


@dataclass(frozen=True)
class CurveInputs:
    """What every point of a run's curves is measured on and against."""

    test: ImageSplit  # the fine-tuning task's test split (in-domain accuracy)
    probe: ImageSplit  # the drift probe
    reference: ProbeReference  # the pretrained model's attention on the probe
    zeroshot: ImageSplit  # the held-out task
    zeroshot_weights: torch.Tensor  # its text classifier
    attention: AttentionConfig
    eval_batch_size: int = 256
    zeroshot_batch_size: int = 256
    zeroshot_amp: bool = False


def _drift(final: torch.Tensor, baseline: torch.Tensor) -> float:
    # the quantity drift_entropy_pct is the drift of: the mean over layers of the head means
    base = float(baseline.double().mean())
    return 100.0 * (float(final.double().mean()) - base) / base if base else float("nan")


def measure(model: CLIPClassifier, inputs: CurveInputs, what: str = "the model") -> dict[str, float]:
    """The four numbers of one weight state."""
    summary = model_attention_stats(model, inputs.probe, inputs.attention)
    return {
        "indomain_acc": indomain_accuracy(model, inputs.test, batch_size=inputs.eval_batch_size),
        "zs_top1": zeroshot_scores(model, inputs.zeroshot_weights, inputs.zeroshot, batch_size=inputs.zeroshot_batch_size,
                                   amp=inputs.zeroshot_amp, what=what)["top1"],
        "drift_entropy_pct": _drift(summary["entropy"], inputs.reference.attention["entropy"]),
        "drift_erf_pct": _drift(summary["erf"], inputs.reference.attention["erf"]),
    }


def curve_table(finetuned: CLIPClassifier, pretrained: CLIPClassifier, inputs: CurveInputs, alphas: Iterable[float],
                epoch_models: Iterable[tuple[int, Callable[[], CLIPClassifier]]] = ()) -> pd.DataFrame:
    """Every interpolation point of ``finetuned`` (its final weights) and every kept epoch.

    ``epoch_models``: (epoch, loader) pairs; each model is loaded, measured and dropped in turn,
    so memory holds one epoch's weights at a time.
    """
    rows = []
    for alpha in sorted(alphas):
        with interpolated(finetuned, pretrained, alpha) as model:
            rows.append({"kind": "alpha", "point": float(alpha), **measure(model, inputs, f"alpha {alpha:g}")})
    for epoch, load in epoch_models:
        rows.append({"kind": "epoch", "point": float(epoch), **measure(load(), inputs, f"epoch {epoch}")})
    return pd.DataFrame(rows, columns=CURVE_COLUMNS).astype({"point": "float64"})
