"""Attention statistics as pure tensor functions.

Inputs are attention probabilities as captured by :func:`clipdrift.model.backbones.capture_attention`:
``(..., tokens, tokens)`` with token 0 the CLS token and rows summing to 1. Every statistic is
computed per row of a distribution over patches (the last dimension) and keeps all leading
dimensions, so a ``(batch, heads, patches)`` input gives ``(batch, heads)`` values.

Distributions are renormalised in float64: the values feed drift percentages of a few tenths
of a percent, where float32 rounding of a 49-term sum would already be visible.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from clipdrift.measure.settings import AGGREGATIONS, ENTROPY_UNITS

# Cumulative sums of renormalised float64 rows can land a few ulps below an exact threshold
# (uniform rows over 20 patches reach 0.95 at 19 patches in exact arithmetic).
_ERF_TOLERANCE = 1e-9


def renormalise(rows: torch.Tensor) -> torch.Tensor:
    """Rows (last dimension) scaled to sum to 1, in float64."""
    rows = rows.to(torch.float64)
    return rows / rows.sum(dim=-1, keepdim=True)


def cls_patch_distribution(probs: torch.Tensor) -> torch.Tensor:
    """The CLS→patch row of ``(..., T, T)`` attention: CLS→CLS dropped, renormalised; ``(..., T-1)``."""
    return renormalise(probs[..., 0, 1:])


def patch_patch_distribution(probs: torch.Tensor) -> torch.Tensor:
    """The patch×patch block of ``(..., T, T)`` attention, rows renormalised; ``(..., T-1, T-1)``."""
    return renormalise(probs[..., 1:, 1:])


def entropy(dist: torch.Tensor, unit: str = "nats") -> torch.Tensor:
    """Shannon entropy over the last dimension (0·log 0 = 0), of the rows renormalised.

    Uses ``H = log s − Σ b log b / s`` for a row ``b`` with sum ``s``, so a block such as the
    patch×patch attention never has to be materialised renormalised (the biggest tensor here).
    """
    if unit not in ENTROPY_UNITS:
        raise ValueError(f"entropy unit {unit!r} is unknown: use one of {tuple(ENTROPY_UNITS)}")
    rows = dist.to(torch.float64)
    total = rows.sum(dim=-1)
    nats = total.log() + torch.special.entr(rows).sum(dim=-1) / total
    return nats * ENTROPY_UNITS[unit]


def effective_receptive_field(dist: torch.Tensor, mass: float = 0.95) -> torch.Tensor:
    """Smallest fraction of entries whose largest values hold ``mass`` of the distribution."""
    if not 0.0 < mass <= 1.0:
        raise ValueError(f"ERF mass must be in (0, 1], got {mass}")
    cumulative = dist.to(torch.float64).sort(dim=-1, descending=True).values.cumsum(dim=-1)
    # entries needed = (number of prefixes still short of the mass) + 1
    needed = (cumulative < mass - _ERF_TOLERANCE).sum(dim=-1) + 1
    return needed.to(torch.float64) / dist.shape[-1]


def gini(dist: torch.Tensor) -> torch.Tensor:
    """Gini coefficient of non-negative rows: 0 for uniform, (n-1)/n for one-hot."""
    values = dist.to(torch.float64).sort(dim=-1).values
    n = values.shape[-1]
    rank = torch.arange(1, n + 1, dtype=values.dtype, device=values.device)
    # sorted-ascending form of sum_ij |x_i - x_j| / (2 n sum x)
    return 2.0 * (rank * values).sum(dim=-1) / (n * values.sum(dim=-1)) - (n + 1.0) / n


def head_diversity(head_maps: torch.Tensor) -> torch.Tensor:
    """1 − mean pairwise cosine similarity of the heads' maps ``(..., heads, patches)``.

    NaN with a single head (no pairs).
    """
    heads = head_maps.shape[-2]
    unit = torch.nn.functional.normalize(head_maps.to(torch.float64), dim=-1)
    similarity = unit @ unit.transpose(-2, -1)
    upper = torch.triu_indices(heads, heads, offset=1, device=similarity.device)
    pairs = similarity[..., upper[0], upper[1]]
    return 1.0 - pairs.mean(dim=-1)


def rollout(layer_probs: Sequence[torch.Tensor], alpha: float = 0.5) -> torch.Tensor:
    """Attention rollout through the layers (Abnar & Zuidema 2020).

    ``layer_probs``: per layer, ``(batch, heads, T, T)`` probabilities in layer order. Heads are
    averaged, the residual connection is mixed in as ``alpha·A + (1 − alpha)·I`` and the
    matrices are multiplied from the first layer up; returns ``(batch, T, T)``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"rollout alpha must be in [0, 1], got {alpha}")
    result = None
    for probs in layer_probs:
        mean = probs.to(torch.float64).mean(dim=1)
        eye = torch.eye(mean.shape[-1], dtype=mean.dtype, device=mean.device)
        mixed = alpha * mean + (1.0 - alpha) * eye
        # rows of A sum to 1, so rows of the mix do too: no renormalisation needed
        result = mixed if result is None else mixed @ result
    if result is None:
        raise ValueError("rollout needs at least one layer of attention")
    return result


def distribution_stats(dist: torch.Tensor, unit: str = "nats", mass: float = 0.95) -> dict[str, torch.Tensor]:
    """Entropy, ERF and Gini of each distribution (last dimension)."""
    return {"entropy": entropy(dist, unit), "erf": effective_receptive_field(dist, mass), "gini": gini(dist)}


def aggregate_batches(batch_means: torch.Tensor, batch_counts: torch.Tensor, mode: str) -> torch.Tensor:
    """Combine per-batch means ``(n_batches, ...)`` into one value per trailing index.

    ``exact``: weighted by the images in each batch, i.e. every image weighs the same.
    ``paper``: the unweighted mean of the batch values, as the published study averaged its
    per-batch numbers (a short last batch weighs as much as a full one).
    """
    if mode == "paper":
        return batch_means.mean(dim=0)
    if mode == "exact":
        weights = batch_counts.to(batch_means.dtype).reshape(-1, *([1] * (batch_means.ndim - 1)))
        return (batch_means * weights).sum(dim=0) / weights.sum()
    raise ValueError(f"aggregation {mode!r} is unknown: use one of {AGGREGATIONS}")
