"""Curves of one run: its weight-interpolation points and its kept epochs, each measured like a
checkpoint.

Every weight state of a run gets the same numbers: in-domain test accuracy (the run's own
head), zero-shot top-1 on every held-out task (the study's stored text classifiers, adapters
active), and the layer-mean drift of the CLS-attention entropy and of ERF on the probe against
the pretrained reference. The table has one row per state and held-out task (``task``). The
states are the interpolation points ``alpha`` of the run's final weights
(:func:`clipdrift.model.interpolation.interpolated`: 0 is the pretrained tower, 1 the run) and the
epochs whose weights the fine-tune kept. No file I/O: the caller loads the models.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import pandas as pd
import torch

from clipdrift.data.split import ImageSplit
from clipdrift.measure.drift import model_attention_stats
from clipdrift.measure.extract import ProbeReference
from clipdrift.measure.settings import AttentionConfig
from clipdrift.measure.zeroshot import evaluate as zeroshot_scores
from clipdrift.model.backbones import CLIPClassifier
from clipdrift.model.interpolation import interpolated
from clipdrift.train.evaluate import evaluate as indomain_accuracy

MEASURED = ("indomain_acc", "zs_top1", "drift_entropy_pct", "drift_erf_pct")
CURVE_COLUMNS = ["kind", "point", "task", *MEASURED]
CURVE_KINDS = ("alpha", "epoch")


@dataclass(frozen=True)
class CurveInputs:
    """What every point of a run's curves is measured on and against."""

    test: ImageSplit  # the fine-tuning task's test split (in-domain accuracy)
    probe: ImageSplit  # the drift probe
    reference: ProbeReference  # the pretrained model's attention on the probe
    zeroshot: dict[str, tuple[ImageSplit, torch.Tensor]]  # held-out task → (its test split, its text classifier)
    attention: AttentionConfig
    eval_batch_size: int = 256
    zeroshot_batch_size: int = 256
    zeroshot_amp: bool = False


def _drift(final: torch.Tensor, baseline: torch.Tensor) -> float:
    # the quantity drift_entropy_pct is the drift of: the mean over layers of the head means
    base = float(baseline.double().mean())
    return 100.0 * (float(final.double().mean()) - base) / base if base else float("nan")


def measure(model: CLIPClassifier, inputs: CurveInputs, what: str = "the model") -> dict[str, dict[str, float]]:
    """The numbers of one weight state, per held-out task (in-domain accuracy and drift repeat)."""
    summary = model_attention_stats(model, inputs.probe, inputs.attention)
    shared = {
        "indomain_acc": indomain_accuracy(model, inputs.test, batch_size=inputs.eval_batch_size),
        "drift_entropy_pct": _drift(summary["entropy"], inputs.reference.attention["entropy"]),
        "drift_erf_pct": _drift(summary["erf"], inputs.reference.attention["erf"]),
    }
    return {task: {**shared, "zs_top1": zeroshot_scores(model, weights, split, batch_size=inputs.zeroshot_batch_size,
                                                          amp=inputs.zeroshot_amp, what=f"{what} on {task}")["top1"]}
            for task, (split, weights) in inputs.zeroshot.items()}


def curve_table(finetuned: CLIPClassifier, pretrained: CLIPClassifier, inputs: CurveInputs, alphas: Iterable[float],
                epoch_models: Iterable[tuple[int, Callable[[], CLIPClassifier]]] = (),
                pretrained_zs_top1: dict[str, float] | None = None, reuse_known: bool = True) -> pd.DataFrame:
    """Every interpolation point of ``finetuned`` (its final weights) and every kept epoch.

    ``epoch_models``: (epoch, loader) pairs; each model is loaded, measured and dropped in turn,
    so memory holds one epoch's weights at a time.

    No weight state is measured twice (``reuse_known``): at alpha 0 the image tower and
    projection are the pretrained ones, so its zero-shot top-1 is ``pretrained_zs_top1`` (the
    pretrained score the study's zero-shot references hold, from the same classifier, images
    and batch size) and its drift against the pretrained reference is 0; only its in-domain
    accuracy, which needs the run's own head, is measured (``pretrained_zs_top1``: per held-out
    task). A kept epoch whose weights equal the
    final weights, tensor for tensor (the last epoch of a run that keeps fp32 snapshots), takes
    the numbers of alpha 1.
    """
    rows, final = [], None
    for alpha in sorted(alphas):
        with interpolated(finetuned, pretrained, alpha) as model:
            if alpha == 0 and pretrained_zs_top1 is not None and reuse_known:
                numbers = _pretrained_tower(model, inputs, pretrained_zs_top1)
            else:
                numbers = measure(model, inputs, f"alpha {alpha:g}")
        rows += _rows("alpha", alpha, numbers)
        if alpha == 1.0:
            final = numbers
    final = final if reuse_known else None
    for epoch, load in epoch_models:
        model = load()
        if final is not None and same_weights(model, finetuned):
            numbers = final
        else:
            numbers = measure(model, inputs, f"epoch {epoch}")
        rows += _rows("epoch", epoch, numbers)
    return pd.DataFrame(rows, columns=CURVE_COLUMNS).astype({"point": "float64"})


def _rows(kind: str, point: float, numbers: dict[str, dict[str, float]]) -> list[dict]:
    return [{"kind": kind, "point": float(point), "task": task, **values} for task, values in numbers.items()]


def _pretrained_tower(model: CLIPClassifier, inputs: CurveInputs,
                      pretrained_zs_top1: dict[str, float]) -> dict[str, dict[str, float]]:
    shared = {"indomain_acc": indomain_accuracy(model, inputs.test, batch_size=inputs.eval_batch_size),
              "drift_entropy_pct": 0.0, "drift_erf_pct": 0.0}
    return {task: {**shared, "zs_top1": pretrained_zs_top1[task]} for task in inputs.zeroshot}


def same_weights(model: torch.nn.Module, other: torch.nn.Module) -> bool:
    """Whether the two models hold the same tensors (names, dtypes, shapes and values)."""
    mine, theirs = model.state_dict(), other.state_dict()
    return mine.keys() == theirs.keys() and all(
        mine[name].dtype == theirs[name].dtype and mine[name].shape == theirs[name].shape
        and torch.equal(mine[name], theirs[name].to(mine[name].device)) for name in mine)
