"""What fine-tuning did to a weight matrix, as pure tensor functions.

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

Precision: float64 on the CPU; on a GPU float32 (``working_dtype``), where the cosines, shares and
relative drifts agree with float64 to 1e-4 and the counts and ranks exactly unless a value sits
within that of its threshold (``tests/test_weights.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch

INTRUDER_TOP_K = 10
INTRUDER_EPSILON = 0.5
ENERGY_SHARE = 0.9
RANDOM_SEED = 0  # the random baseline's directions: the same for every run of a study
FLOAT32_TOLERANCE = 1e-4


def working_dtype(device: torch.device | str) -> torch.dtype:
    """float64 where it is cheap (the CPU), float32 on an accelerator (see the module's tolerance)."""
    return torch.float64 if torch.device(device).type == "cpu" else torch.float32


def _working(matrix: torch.Tensor) -> torch.Tensor:
    return matrix.detach().to(working_dtype(matrix.device))


def singular_values(matrix: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(_working(matrix))


def left_basis(matrix: torch.Tensor) -> torch.Tensor:
    """Every left singular vector of ``matrix`` (columns, by singular value): what intruders are measured against."""
    return torch.linalg.svd(_working(matrix), full_matrices=False).U


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
    return int(torch.searchsorted(held, torch.tensor(share, dtype=held.dtype, device=held.device) - 1e-12)) + 1


def max_cosines(directions: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """For each column of ``directions`` (unit vectors), its largest absolute cosine with a column of ``basis``."""
    directions = _working(directions)
    return (directions.T @ basis.to(directions)).abs().max(dim=1).values


def _intruders_among(left: torch.Tensor, values: torch.Tensor, base: torch.Tensor, top_k: int, epsilon: float) -> dict:
    cosines = max_cosines(left[:, :top_k], base)
    found = torch.where(cosines < epsilon)[0]
    energy = values**2
    return {"indices": found.tolist(), "count": int(found.numel()), "max_cosines": cosines.tolist(),
            "energy_share": float(energy[found].sum() / energy.sum()) if float(energy.sum()) else 0.0}


def intruders(pretrained: torch.Tensor, tuned: torch.Tensor, top_k: int = INTRUDER_TOP_K,
              epsilon: float = INTRUDER_EPSILON) -> dict:
    """The intruder dimensions of ``tuned`` against ``pretrained``: which of its top ``top_k``
    left singular vectors have no pretrained left singular vector with ``|cos| >= epsilon``
    (``indices``, by rank), their count, and their share of ``tuned``'s spectral energy."""
    return MatrixChange(pretrained, tuned).intruders(top_k, epsilon)


def random_intruders(base: torch.Tensor, top_k: int = INTRUDER_TOP_K, epsilon: float = INTRUDER_EPSILON,
                     seed: int = RANDOM_SEED) -> int:
    """How many of ``top_k`` random unit directions would count as intruders against the left
    singular vectors ``base`` (:func:`left_basis`): the count chance alone gives at that dimension."""
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(base.shape[0], top_k, generator=generator, dtype=torch.float64).to(base)
    directions = directions / directions.norm(dim=0, keepdim=True)
    return int((max_cosines(directions, base) < epsilon).sum())


def magnitude_direction(pretrained: torch.Tensor, tuned: torch.Tensor) -> dict:
    """DoRA's decomposition per output unit (row): ``delta_magnitude`` = mean |‖W_n‖ − ‖W0_n‖|,
    ``delta_direction`` = mean (1 − cos(W_n, W0_n))."""
    before, after = _working(pretrained), _working(tuned).to(pretrained.device)
    magnitude = (after.norm(dim=1) - before.norm(dim=1)).abs().mean()
    # 1 − cos(a, b) = ‖a/‖a‖ − b/‖b‖‖² / 2, without the cancellation of 1 − cos near 0 (float32 on a GPU)
    unit = torch.nn.functional.normalize
    direction = (unit(after, dim=1) - unit(before, dim=1)).pow(2).sum(dim=1).mean() / 2
    return {"delta_magnitude": float(magnitude), "delta_direction": float(direction)}


def subspace_overlap(change_a: torch.Tensor, change_b: torch.Tensor, rank: int) -> float:
    """``‖U_Aᵀ U_B‖²_F / r`` of the top-``rank`` left singular vectors of two changes of one matrix."""
    return basis_overlap(left_basis(change_a)[:, :rank], left_basis(change_b)[:, :rank])


def basis_overlap(left_a: torch.Tensor, left_b: torch.Tensor) -> float:
    """``‖U_Aᵀ U_B‖²_F / r`` of two sets of ``r`` orthonormal columns (:attr:`MatrixChange.delta_basis`)."""
    rank = min(left_a.shape[1], left_b.shape[1])
    if rank == 0:
        return math.nan
    left_a = _working(left_a[:, :rank])
    return float((left_a.T @ left_b[:, :rank].to(left_a)).pow(2).sum()) / rank


@dataclass
class MatrixChange:
    """One matrix before and after fine-tuning, each decomposition every measure reads computed
    once. ``base``: the pretrained left singular vectors when already known (the study computes
    them once, :func:`left_basis`)."""

    pretrained: torch.Tensor
    tuned: torch.Tensor
    base: torch.Tensor | None = None

    def __post_init__(self):
        self.pretrained = _working(self.pretrained)
        self.tuned = _working(self.tuned).to(self.pretrained.device)
        if self.pretrained.shape != self.tuned.shape:
            raise ValueError(f"the matrices differ in shape: {tuple(self.pretrained.shape)} and {tuple(self.tuned.shape)}")
        self.base = left_basis(self.pretrained) if self.base is None else self.base.to(self.pretrained)

    @cached_property
    def delta(self) -> torch.Tensor:
        return self.tuned - self.pretrained

    @cached_property
    def unchanged(self) -> bool:
        """Fine-tuning left the matrix as it was (a matrix no adapter adapts): no SVD is needed."""
        return bool(torch.equal(self.tuned, self.pretrained))

    @cached_property
    def delta_svd(self) -> tuple[torch.Tensor, torch.Tensor]:
        """ΔW's left singular vectors and singular values (none for no change)."""
        if self.unchanged:
            return self.delta.new_zeros(self.delta.shape[0], 0), self.delta.new_zeros(0)
        left, values, _ = torch.linalg.svd(self.delta, full_matrices=False)
        return left, values

    @cached_property
    def tuned_svd(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The fine-tuned matrix's left singular vectors, singular values and right singular vectors (rows)."""
        return tuple(torch.linalg.svd(self.tuned, full_matrices=False))

    @cached_property
    def finite(self) -> bool:
        return bool(torch.isfinite(self.tuned).all())

    def intruders(self, top_k: int = INTRUDER_TOP_K, epsilon: float = INTRUDER_EPSILON) -> dict:
        if self.unchanged:  # W0 against itself: each direction is one of its own (|cos| 1), no intruder
            return {"indices": [], "count": 0, "max_cosines": [1.0] * min(top_k, *self.tuned.shape),
                    "energy_share": 0.0}
        return _intruders_among(*self.tuned_svd[:2], self.base, top_k, epsilon)

    def intruder_part(self, top_k: int = INTRUDER_TOP_K, epsilon: float = INTRUDER_EPSILON) -> torch.Tensor:
        """``Σ s_j u_j v_jᵀ`` over the intruder dimensions ``j`` of the fine-tuned matrix (zero if none)."""
        found = self.intruders(top_k, epsilon)["indices"]
        if not found:
            return torch.zeros_like(self.tuned)
        left, values, right = self.tuned_svd
        return (left[:, found] * values[found]) @ right[found]

    def delta_basis(self, rank: int) -> torch.Tensor:
        """ΔW's top-``rank`` left singular vectors (fewer where ΔW's rank is lower; none for no change)."""
        if not self.finite:
            return self.delta.new_zeros(self.delta.shape[0], 0)
        left, values = self.delta_svd
        kept = int((values > values.max() * 1e-9).sum()) if values.numel() and float(values.max()) > 0 else 0
        return left[:, :min(rank, kept)]

    def drift(self, top_k: int = INTRUDER_TOP_K, epsilon: float = INTRUDER_EPSILON,
              share: float = ENERGY_SHARE) -> dict:
        """Every measure of the module at one ``top_k`` and ``epsilon``: :data:`DRIFT_COLUMNS` (NaN
        for weights that are not finite: a diverged run's)."""
        if not self.finite:
            return dict.fromkeys(DRIFT_COLUMNS, math.nan)
        values = self.delta_svd[1]
        found = self.intruders(top_k, epsilon)
        return {"relative_drift": float(self.delta.norm() / self.pretrained.norm()),
                "effective_rank": effective_rank(values), "stable_rank": stable_rank(values),
                "rank90": energy_rank(values, share), "intruders": found["count"],
                "intruder_energy": found["energy_share"], "random_intruders": random_intruders(self.base, top_k, epsilon),
                **magnitude_direction(self.pretrained, self.tuned)}

    def sweep(self, top_ks, epsilons) -> list[dict]:
        """The intruders and their random baseline at every ``top_k`` × ``epsilon``: :data:`SWEEP_COLUMNS`."""
        rows = []
        if not self.finite:
            return [{"top_k": int(k), "epsilon": float(e), **dict.fromkeys(SWEEP_COLUMNS[2:], math.nan)}
                    for k in top_ks for e in epsilons]
        for top_k in top_ks:
            for epsilon in epsilons:
                found = self.intruders(top_k, epsilon)
                rows.append({"top_k": int(top_k), "epsilon": float(epsilon), "intruders": found["count"],
                             "intruder_energy": found["energy_share"],
                             "random_intruders": random_intruders(self.base, top_k, epsilon)})
        return rows


DRIFT_COLUMNS = ["relative_drift", "effective_rank", "stable_rank", "rank90", "intruders", "intruder_energy",
                 "random_intruders", "delta_magnitude", "delta_direction"]
SWEEP_COLUMNS = ["top_k", "epsilon", "intruders", "intruder_energy", "random_intruders"]
WEIGHT_COLUMNS = ["layer", "matrix", *DRIFT_COLUMNS]


def matrix_drift(pretrained: torch.Tensor, tuned: torch.Tensor, top_k: int = INTRUDER_TOP_K,
                 epsilon: float = INTRUDER_EPSILON) -> dict:
    """Every measure of one matrix (:meth:`MatrixChange.drift`)."""
    return MatrixChange(pretrained, tuned).drift(top_k, epsilon)


def tower_changes(pretrained: dict, tuned: dict, bases: dict | None = None) -> dict:
    """``{(layer, matrix): MatrixChange}`` of two towers' matrices (:func:`clipdrift.model.weights.tower_matrices`),
    with the pretrained bases when given."""
    if set(pretrained) != set(tuned):
        raise ValueError(f"the towers differ: matrices {sorted(set(pretrained) ^ set(tuned))[:3]} are in one only")
    if bases is not None and set(bases) != set(pretrained):
        raise ValueError(f"the pretrained bases do not match the tower: {sorted(set(bases) ^ set(pretrained))[:3]} "
                         "differ (were they computed for another backbone?)")
    return {key: MatrixChange(pretrained[key], tuned[key], None if bases is None else bases[key])
            for key in sorted(pretrained)}


def weight_rows(pretrained: dict, tuned: dict, top_k: int = INTRUDER_TOP_K, epsilon: float = INTRUDER_EPSILON,
                bases: dict | None = None, share: float = ENERGY_SHARE) -> list[dict]:
    """One row per matrix (``{(layer, matrix): weight}``), with :data:`WEIGHT_COLUMNS`."""
    return [{"layer": layer, "matrix": matrix, **change.drift(top_k, epsilon, share)}
            for (layer, matrix), change in tower_changes(pretrained, tuned, bases).items()]
