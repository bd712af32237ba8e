"""A run's weight-space drift, as tables: every matrix of its image tower against the pretrained
one (:mod:`clipdrift.measure.weights`) at its drift checkpoint and at its kept epochs, the
intruders at every ``top_k`` × ``epsilon`` of the sweep, and the top singular directions of each
change that runs are compared by.

No file I/O: the job reads the checkpoints and the study's pretrained bases and writes these.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import pandas as pd
import torch

from clipdrift.measure.settings import WeightSettings
from clipdrift.measure.weights import (
    DRIFT_COLUMNS,
    SWEEP_COLUMNS,
    MatrixChange,
    basis_overlap,
    left_basis,
    tower_changes,
)
from clipdrift.model.weights import matrix_key, matrix_name

CHECKPOINT_STATE = "final"  # the drift checkpoint, as the attention tables name it (metrics.checkpoint)
EPOCH_STATE = "epoch"
DRIFT_TABLE_COLUMNS = ["state", "epoch", "layer", "matrix", *DRIFT_COLUMNS]
SWEEP_TABLE_COLUMNS = ["layer", "matrix", *SWEEP_COLUMNS]

Matrices = dict[tuple[int, str], torch.Tensor]


def pretrained_bases(pretrained: Matrices, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Every pretrained matrix's left singular vectors, by :func:`matrix_name`: computed once per study."""
    return {matrix_name(key): left_basis(weight.to(device)).cpu().contiguous() for key, weight in pretrained.items()}


def _on(matrices: Matrices, device) -> Matrices:
    return {key: weight.to(device) for key, weight in matrices.items()}


def _drift_rows(changes: dict[tuple[int, str], MatrixChange], state: str, epoch: int, settings: WeightSettings) -> list:
    return [{"state": state, "epoch": epoch, "layer": layer, "matrix": matrix,
             **change.drift(settings.top_k, settings.epsilon, settings.energy_share)}
            for (layer, matrix), change in changes.items()]


def weight_drift(pretrained: Matrices, checkpoint: Matrices, checkpoint_epoch: int,
                 epochs: Iterable[tuple[int, Callable[[], Matrices]]], bases: dict[str, torch.Tensor],
                 settings: WeightSettings, device: torch.device | str = "cpu"
                 ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, torch.Tensor]]:
    """The drift table (one row per state × matrix: the checkpoint, then each kept epoch loaded
    one at a time), the checkpoint's sweep table, and its changes' top ``overlap_rank`` left
    singular vectors by :func:`matrix_name` (CPU float32)."""
    keyed = {matrix_key(name): basis for name, basis in bases.items()}
    pretrained = _on(pretrained, device)
    changes = tower_changes(pretrained, _on(checkpoint, device), keyed)
    rows = _drift_rows(changes, CHECKPOINT_STATE, checkpoint_epoch, settings)
    sweep = [{"layer": layer, "matrix": matrix, **row}
             for (layer, matrix), change in changes.items()
             for row in change.sweep(settings.top_k_sweep, settings.epsilon_sweep)]
    subspaces = {matrix_name(key): change.delta_basis(settings.overlap_rank).float().cpu().contiguous()
                 for key, change in changes.items()}
    for epoch, load in epochs:
        rows += _drift_rows(tower_changes(pretrained, _on(load(), device), keyed), EPOCH_STATE, epoch, settings)
    drift = pd.DataFrame(rows, columns=DRIFT_TABLE_COLUMNS)
    return drift, pd.DataFrame(sweep, columns=SWEEP_TABLE_COLUMNS), subspaces


OVERLAP_COLUMNS = ["dataset", "method_a", "lr_a", "seed_a", "method_b", "lr_b", "seed_b", "layer", "matrix",
                   "rank", "overlap", "chance"]


def subspace_overlaps(runs: list[tuple[dict, dict[str, torch.Tensor]]]) -> pd.DataFrame:
    """Every pair of runs of one dataset (``(run, subspaces)``: the run's keys and the top left
    singular vectors of its changes), per matrix: the overlap ``‖U_Aᵀ U_B‖²_F / r`` with
    ``r`` the smaller of their ranks, and ``chance``, ``r / d``, what two random subspaces of that
    rank overlap on average. A matrix a run left unchanged has no directions: no row."""
    rows = []
    for index, (run_a, spaces_a) in enumerate(runs):
        for run_b, spaces_b in runs[index + 1:]:
            if run_a["dataset"] != run_b["dataset"]:
                continue
            for name in sorted(set(spaces_a) & set(spaces_b), key=matrix_key):
                rank = min(spaces_a[name].shape[1], spaces_b[name].shape[1])
                if rank == 0:
                    continue
                layer, matrix = matrix_key(name)
                rows.append({"dataset": run_a["dataset"],
                             **{f"{key}_a": run_a[key] for key in ("method", "lr", "seed")},
                             **{f"{key}_b": run_b[key] for key in ("method", "lr", "seed")},
                             "layer": layer, "matrix": matrix, "rank": rank,
                             "overlap": basis_overlap(spaces_a[name], spaces_b[name]),
                             "chance": rank / spaces_a[name].shape[0]})
    return pd.DataFrame(rows, columns=OVERLAP_COLUMNS)
