"""Does removing a run's intruder dimensions give its transfer back, more than removing the same
amount of change at random?

For each matrix of the image tower (:class:`~clipdrift.measure.weights.MatrixChange`) and a share
``keep`` of the intruders kept (Shuttleworth et al.'s λ; peft's ``mitigation_lambda``), the
intervention is ``W + (keep − 1) Σ_j s_j u_j v_jᵀ`` over the intruder dimensions ``j`` of the
fine-tuned ``W`` (``keep`` 1: the run itself, 0: no intruder left). Where a LoRA adapter adapts the
matrix, the change from ``W0`` is then refit to the adapter's rank ``r`` (truncated SVD), as peft's
``reduce_intruder_dimension`` refits the adapter, so the result is still a rank-r adapter. The
control moves each matrix back along its own change, ``W0 + c (W − W0)``, to the same Frobenius
distance from ``W0`` as the intervention: the same amount of change removed, in no particular
direction. An intruder direction of ``W`` carries some pretrained energy too, so removing it can
move a matrix farther from ``W0`` than the run did; the control then follows the change beyond
``W`` to that distance (``c > 1``), still the same amount of change in no particular direction.
Both are scored like curve points (:func:`clipdrift.measure.curves.measure`).

No file I/O.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd
import torch

from clipdrift.measure.curves import MEASURED, CurveInputs, measure
from clipdrift.measure.weights import MatrixChange, tower_changes
from clipdrift.model.backbones import CLIPClassifier
from clipdrift.model.weights import lora_ranks, matrix_key, tower_matrices, written_tower

INTERVENTION_KINDS = ("intruders", "uniform")
INTERVENTION_COLUMNS = ["kind", "keep", "task", "weight_distance", *MEASURED]


def truncated(matrix: torch.Tensor, rank: int) -> torch.Tensor:
    """The best rank-``rank`` approximation of ``matrix`` (Eckart–Young: its top singular triplets)."""
    left, values, right = torch.linalg.svd(matrix, full_matrices=False)
    return (left[:, :rank] * values[:rank]) @ right[:rank]


def without_intruders(change: MatrixChange, keep: float, top_k: int, epsilon: float,
                      rank: int | None = None) -> torch.Tensor:
    """The fine-tuned matrix with ``keep`` of its intruder components; ``rank``: its change from
    the pretrained matrix refit to that rank (a LoRA adapter's). A matrix without intruders, or
    ``keep`` 1, is the fine-tuned matrix itself."""
    part = change.intruder_part(top_k, epsilon)
    if keep == 1.0 or not bool(part.any()):
        return change.tuned
    moved = change.tuned + (keep - 1.0) * part
    return moved if rank is None else change.pretrained + truncated(moved - change.pretrained, rank)


def shrunk_uniformly(change: MatrixChange, distance: float) -> torch.Tensor:
    """``W0 + c (W − W0)`` at Frobenius distance ``distance`` from ``W0`` (no change: ``W0``)."""
    norm = float(change.delta.norm())
    return change.pretrained if norm == 0.0 else change.pretrained + (distance / norm) * change.delta


def intervened_towers(changes: dict[tuple[int, str], MatrixChange], keep: float, top_k: int, epsilon: float,
                      ranks: dict[tuple[int, str], int] | None = None) -> dict[str, dict]:
    """``{"intruders": tower, "uniform": tower}`` at ``keep``: every matrix's intervention and its
    control at the intervention's distance from the pretrained matrix."""
    ranks = ranks or {}
    towers = {kind: {} for kind in INTERVENTION_KINDS}
    for key, change in changes.items():
        moved = without_intruders(change, keep, top_k, epsilon, ranks.get(key))
        towers["intruders"][key] = moved
        towers["uniform"][key] = shrunk_uniformly(change, float((moved - change.pretrained).norm()))
    return towers


def tower_distance(pretrained: dict, tower: dict) -> float:
    """``‖tower − W0‖_F / ‖W0‖_F`` over every matrix of the tower together."""
    change = sum(float((tower[key].double() - weight.double()).pow(2).sum()) for key, weight in pretrained.items())
    size = sum(float(weight.double().pow(2).sum()) for weight in pretrained.values())
    return (change / size) ** 0.5


def intervention_table(finetuned: CLIPClassifier, pretrained: dict, bases: dict[str, torch.Tensor],
                       inputs: CurveInputs, keeps: Iterable[float], top_k: int, epsilon: float,
                       device: torch.device | str = "cpu") -> pd.DataFrame:
    """Every ``keep`` of the intervention and its control, scored on ``inputs`` with the run's own
    head: one row per kind × keep × held-out task (:data:`INTERVENTION_COLUMNS`). ``pretrained``:
    the pretrained tower's matrices; ``bases``: their left singular vectors by matrix name. At
    ``keep`` 1 both are the run itself, measured once."""
    keyed = {matrix_key(name): basis for name, basis in bases.items()}
    pretrained = {key: weight.to(device) for key, weight in pretrained.items()}
    tuned = {key: weight.to(device) for key, weight in tower_matrices(finetuned).items()}
    changes, ranks = tower_changes(pretrained, tuned, keyed), lora_ranks(finetuned)
    rows, itself = [], None
    for keep in sorted(float(k) for k in keeps):
        towers = intervened_towers(changes, keep, top_k, epsilon, ranks)
        for kind, tower in towers.items():
            if keep == 1.0 and itself is not None:
                numbers = itself
            else:
                with written_tower(finetuned, tower) as model:
                    numbers = measure(model, inputs, f"{kind} at keep {keep:g}")
                itself = numbers if keep == 1.0 else itself
            distance = tower_distance(pretrained, tower)
            rows += [{"kind": kind, "keep": keep, "task": task, "weight_distance": distance, **values}
                     for task, values in numbers.items()]
    return pd.DataFrame(rows, columns=INTERVENTION_COLUMNS)
