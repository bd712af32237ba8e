"""What fine-tuning did to a weight matrix, as pure tensor functions (float64 throughout).

For a pretrained matrix ``W0`` and its fine-tuned ``W`` (``nn.Linear`` layout: one row per output
unit), with ``ΔW = W − W0`` and ``s`` the singular values of ``ΔW``:

- spectrum shape: the effective rank ``exp(H(s / Σs))`` (Roy & Vetterli 2007), the stable rank
  ``Σs² / max(s)²`` and the rank that holds ``share`` (0.9) of ``Σs²``;
- intruder dimensions (Shuttleworth et al. 2024): among the top ``k`` left singular vectors
  ``u_j`` of ``W``, those whose largest absolute cosine with any left singular vector of ``W0`` is
  below ``epsilon``; their share of ``W``'s spectral energy; and the same count for ``k`` random
  unit directions of the same dimension (what chance alone gives at that dimension);
- magnitude and direction per output unit (DoRA, Liu et al. 2024): ``ΔM = mean |‖W_n‖ − ‖W0_n‖|``,
  ``ΔD = mean (1 − cos(W_n, W0_n))``;
- the overlap of two changes' top-``r`` left singular subspaces, ``‖U_Aᵀ U_B‖²_F / r`` (1: the
  same subspace, ``r / d`` expected of random ones).
"""

from __future__ import annotations

import math

import torch

INTRUDER_TOP_K = 10
INTRUDER_EPSILON = 0.5
ENERGY_SHARE = 0.9


def _double(matrix: torch.Tensor) -> torch.Tensor:
    return matrix.detach().to(device="cpu", dtype=torch.float64)


def singular_values(matrix: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(_double(matrix))


def effective_rank(values: torch.Tensor) -> float:
    """``exp`` of the Shannon entropy of the singular values normalised to sum to 1 (0 for a zero matrix)."""
    total = float(values.sum())
    if total == 0.0:
        return 0.0
    shares = values / total
    return math.exp(float(torch.special.entr(shares).sum()))


def stable_rank(values: torch.Tensor) -> float:
    """``Σs² / max(s)²``: how many directions carry the energy, insensitive to tiny ones (0 for a zero matrix)."""
    top = float(values.max()) if values.numel() else 0.0
    return float((values**2).sum()) / top**2 if top else 0.0


def energy_rank(values: torch.Tensor, share: float = ENERGY_SHARE) -> int:
    """The fewest singular values whose squares hold ``share`` of ``Σs²`` (0 for a zero matrix)."""
    energy = values.sort(descending=True).values ** 2
    total = float(energy.sum())
    if total == 0.0:
        return 0
    held = torch.cumsum(energy, 0) / total
    return int(torch.searchsorted(held, torch.tensor(share, dtype=held.dtype) - 1e-12)) + 1


def max_cosines(directions: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """For each column of ``directions`` (unit vectors), its largest absolute cosine with a column of ``basis``."""
    return (_double(directions).T @ _double(basis)).abs().max(dim=1).values


def intruders(pretrained: torch.Tensor, tuned: torch.Tensor, top_k: int = INTRUDER_TOP_K,
              epsilon: float = INTRUDER_EPSILON) -> dict:
    """The intruder dimensions of ``tuned`` against ``pretrained``: which of its top ``top_k``
    left singular vectors have no pretrained left singular vector with ``|cos| >= epsilon``
    (``indices``, by rank), their count, and their share of ``tuned``'s spectral energy."""
    base = torch.linalg.svd(_double(pretrained), full_matrices=False).U
    left, values, _ = torch.linalg.svd(_double(tuned), full_matrices=False)
    cosines = max_cosines(left[:, :top_k], base)
    found = torch.where(cosines < epsilon)[0]
    energy = values**2
    return {"indices": found.tolist(), "count": int(found.numel()), "max_cosines": cosines.tolist(),
            "energy_share": float(energy[found].sum() / energy.sum()) if float(energy.sum()) else 0.0}


def random_intruders(pretrained: torch.Tensor, top_k: int = INTRUDER_TOP_K, epsilon: float = INTRUDER_EPSILON,
                     seed: int = 0) -> int:
    """How many of ``top_k`` random unit directions of ``pretrained``'s output dimension would count
    as intruders against it: the count chance alone gives at that dimension."""
    base = torch.linalg.svd(_double(pretrained), full_matrices=False).U
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(base.shape[0], top_k, generator=generator, dtype=torch.float64)
    directions = directions / directions.norm(dim=0, keepdim=True)
    return int((max_cosines(directions, base) < epsilon).sum())


def magnitude_direction(pretrained: torch.Tensor, tuned: torch.Tensor) -> dict:
    """DoRA's decomposition per output unit (row): ``delta_magnitude`` = mean |‖W_n‖ − ‖W0_n‖|,
    ``delta_direction`` = mean (1 − cos(W_n, W0_n))."""
    before, after = _double(pretrained), _double(tuned)
    magnitude = (after.norm(dim=1) - before.norm(dim=1)).abs().mean()
    direction = (1 - torch.nn.functional.cosine_similarity(after, before, dim=1)).mean()
    return {"delta_magnitude": float(magnitude), "delta_direction": float(direction)}


def subspace_overlap(change_a: torch.Tensor, change_b: torch.Tensor, rank: int) -> float:
    """``‖U_Aᵀ U_B‖²_F / r`` of the top-``rank`` left singular vectors of two changes of one matrix."""
    left_a = torch.linalg.svd(_double(change_a), full_matrices=False).U[:, :rank]
    left_b = torch.linalg.svd(_double(change_b), full_matrices=False).U[:, :rank]
    return float((left_a.T @ left_b).pow(2).sum()) / rank


WEIGHT_COLUMNS = ["layer", "matrix", "relative_drift", "effective_rank", "stable_rank", "rank90", "intruders",
                  "intruder_energy", "random_intruders", "delta_magnitude", "delta_direction"]


def matrix_drift(pretrained: torch.Tensor, tuned: torch.Tensor, top_k: int = INTRUDER_TOP_K,
                 epsilon: float = INTRUDER_EPSILON) -> dict:
    """Every measure above of one matrix: ``‖ΔW‖_F / ‖W0‖_F``, ΔW's spectrum shape, the intruders
    with the random baseline at the same dimension, and ΔM / ΔD."""
    before, after = _double(pretrained), _double(tuned)
    values = singular_values(after - before)
    found = intruders(before, after, top_k, epsilon)
    return {"relative_drift": float((after - before).norm() / before.norm()), "effective_rank": effective_rank(values),
            "stable_rank": stable_rank(values), "rank90": energy_rank(values), "intruders": found["count"],
            "intruder_energy": found["energy_share"], "random_intruders": random_intruders(before, top_k, epsilon),
            **magnitude_direction(before, after)}


def weight_rows(pretrained: dict[tuple[int, str], torch.Tensor], tuned: dict[tuple[int, str], torch.Tensor],
                top_k: int = INTRUDER_TOP_K, epsilon: float = INTRUDER_EPSILON) -> list[dict]:
    """One row per matrix (``{(layer, matrix): weight}`` of :func:`clipdrift.model.weights.tower_matrices`),
    with :data:`WEIGHT_COLUMNS`."""
    if set(pretrained) != set(tuned):
        raise ValueError(f"the towers differ: matrices {sorted(set(pretrained) ^ set(tuned))[:3]} are in one only")
    return [{"layer": layer, "matrix": matrix, **matrix_drift(pretrained[(layer, matrix)], tuned[(layer, matrix)],
                                                                top_k, epsilon)}
            for layer, matrix in sorted(pretrained)]
