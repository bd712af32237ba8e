"""Centred kernel alignment (Kornblith et al. 2019) between paired features, streamed.

Both variants are computed from sufficient statistics in the feature-space form, so memory is
``O(d_x² + d_y² + d_x·d_y)`` whatever the number of images, and a probe of any size can be fed
batch by batch:

- linear CKA: ``‖C_xyᵀ‖²_F / (‖C_xx‖_F ‖C_yy‖_F)`` with ``C`` the centred cross-products;
- debiased CKA: the same ratio of the unbiased HSIC estimator (Song et al. 2012) on linear
  kernels. Its terms (Gram matrices with zeroed diagonals) expand into sums of per-image
  products, which accumulate just as well.

Everything is float64. Features are shifted by the first batch's mean before accumulating:
CKA is invariant to translation, and the shift keeps ``Σxxᵀ − n·x̄x̄ᵀ`` from cancelling
catastrophically when the features sit far from the origin (CLIP's residual stream does).

CKA is 0/0 when either representation is constant over the images (the embedding layer's CLS
token is the same for every image): such pairs report ``defined = False`` and NaN.
"""

from __future__ import annotations

import math

import torch

from clipdrift.measure.settings import CKA_VARIANTS

# Relative variance below which a representation counts as constant. float32 noise on a
# constant vector gives ~1e-14; any representation that carries signal is many orders above.
CONSTANT_TOLERANCE = 1e-10


class _Moments:
    """Running sums for one side (x or y): n-free pieces that do not depend on the other side."""

    def __init__(self, first: torch.Tensor):
        dim = first.shape[1]
        self.shift = first.mean(dim=0)
        zeros = dict(dtype=torch.float64, device=first.device)
        self.sum = torch.zeros(dim, **zeros)  # Σ a
        self.gram = torch.zeros(dim, dim, **zeros)  # Σ a aᵀ
        self.sq = torch.zeros((), **zeros)  # Σ |a|²
        self.quartic = torch.zeros((), **zeros)  # Σ |a|⁴
        self.weighted_self = torch.zeros(dim, **zeros)  # Σ |a|² a

    def update(self, a: torch.Tensor, sq_norms: torch.Tensor) -> None:
        self.sum += a.sum(dim=0)
        self.gram += a.T @ a
        self.sq += sq_norms.sum()
        self.quartic += (sq_norms * sq_norms).sum()
        self.weighted_self += sq_norms @ a


class CKAAccumulator:
    """Streaming linear and debiased CKA between paired feature batches.

    >>> acc = CKAAccumulator()
    >>> for x, y in batches:          # (b, d_x) and (b, d_y), same images in the same order
    ...     acc.update(x, y)
    >>> acc.linear(), acc.debiased(), acc.defined
    """

    def __init__(self):
        self.n = 0
        self._x: _Moments | None = None
        self._y: _Moments | None = None

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
            raise ValueError(
                f"CKA needs paired (n, d) features of the same images, got {tuple(x.shape)} and {tuple(y.shape)}"
            )
        x, y = x.detach().to(torch.float64), y.detach().to(torch.float64)
        if self._x is None:
            self._x, self._y = _Moments(x), _Moments(y)
            self.cross = torch.zeros(x.shape[1], y.shape[1], dtype=torch.float64, device=x.device)
            self.cross_sq = torch.zeros((), dtype=torch.float64, device=x.device)
            self.x_by_y_sq = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
            self.y_by_x_sq = torch.zeros(y.shape[1], dtype=torch.float64, device=x.device)
        x, y = x - self._x.shift, y - self._y.shift
        x_sq, y_sq = (x * x).sum(dim=1), (y * y).sum(dim=1)
        self._x.update(x, x_sq)
        self._y.update(y, y_sq)
        self.cross += x.T @ y  # Σ x yᵀ
        self.cross_sq += (x_sq * y_sq).sum()  # Σ |x|²|y|²
        self.x_by_y_sq += y_sq @ x  # Σ |y|² x
        self.y_by_x_sq += x_sq @ y  # Σ |x|² y
        self.n += x.shape[0]

    @property
    def defined(self) -> bool:
        """False when either representation is constant over the images (CKA is 0/0)."""
        return self.n >= 2 and not (_is_constant(self._x, self.n) or _is_constant(self._y, self.n))

    def linear(self) -> float:
        """Linear CKA, NaN where undefined."""
        if not self.defined:
            return math.nan
        xy = _centred(self.cross, self._x.sum, self._y.sum, self.n)
        xx = _centred(self._x.gram, self._x.sum, self._x.sum, self.n)
        yy = _centred(self._y.gram, self._y.sum, self._y.sum, self.n)
        return float(xy.square().sum() / (xx.norm() * yy.norm()))

    def debiased(self) -> float:
        """Debiased CKA (unbiased HSIC estimator), NaN where undefined or for fewer than 4 images."""
        if not self.defined or self.n < 4:
            return math.nan
        x, y, n = self._x, self._y, self.n
        hsic_xy = _unbiased_hsic(self.cross, x.sum, y.sum, x.sq, y.sq, self.cross_sq, self.x_by_y_sq, self.y_by_x_sq, n)
        hsic_xx = _unbiased_hsic(x.gram, x.sum, x.sum, x.sq, x.sq, x.quartic, x.weighted_self, x.weighted_self, n)
        hsic_yy = _unbiased_hsic(y.gram, y.sum, y.sum, y.sq, y.sq, y.quartic, y.weighted_self, y.weighted_self, n)
        if hsic_xx <= 0 or hsic_yy <= 0:  # the unbiased estimate can go non-positive on tiny samples
            return math.nan
        return float(hsic_xy / math.sqrt(hsic_xx * hsic_yy))

    def value(self, variant: str) -> float:
        if variant == "linear":
            return self.linear()
        if variant == "debiased":
            return self.debiased()
        raise ValueError(f"CKA variant {variant!r} is unknown: use one of {CKA_VARIANTS}")


def _is_constant(moments: _Moments | None, n: int) -> bool:
    if moments is None:
        return True
    mean = moments.sum / n
    total_variance = (torch.diagonal(moments.gram).sum() / n - mean.square().sum()).clamp_min(0.0)
    # mean square norm of the original (unshifted) features, the scale the variance is judged by
    scale = (moments.shift + mean).square().sum() + total_variance
    return bool(total_variance <= CONSTANT_TOLERANCE * scale)


def _centred(cross: torch.Tensor, sum_a: torch.Tensor, sum_b: torch.Tensor, n: int) -> torch.Tensor:
    return cross - torch.outer(sum_a, sum_b) / n


def _unbiased_hsic(cross, sum_a, sum_b, sq_a, sq_b, cross_sq, a_by_b_sq, b_by_a_sq, n) -> float:
    """Unbiased HSIC of linear kernels K = AAᵀ, L = BBᵀ, up to the factor 1/(n(n−3)) that cancels.

    With K̃, L̃ the kernels with zeroed diagonals:
      tr(K̃L̃)   = ‖Σ a bᵀ‖² − Σ|a|²|b|²
      1ᵀK̃1     = |Σ a|² − Σ|a|²
      1ᵀK̃L̃1    = (Σa)ᵀ(Σ a bᵀ)(Σb) − (Σa)·(Σ|b|² a) − (Σb)·(Σ|a|² b) + Σ|a|²|b|²
    """
    trace_kl = cross.square().sum() - cross_sq
    sum_k = sum_a.square().sum() - sq_a
    sum_l = sum_b.square().sum() - sq_b
    sum_kl = sum_a @ cross @ sum_b - sum_a @ a_by_b_sq - sum_b @ b_by_a_sq + cross_sq
    return float(trace_kl + sum_k * sum_l / ((n - 1) * (n - 2)) - 2.0 * sum_kl / (n - 2))


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of paired features ``(n, d_x)``, ``(n, d_y)`` in one call (NaN if undefined)."""
    accumulator = CKAAccumulator()
    accumulator.update(x, y)
    return accumulator.linear()


def debiased_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Debiased linear CKA of paired features in one call (NaN if undefined or n < 4)."""
    accumulator = CKAAccumulator()
    accumulator.update(x, y)
    return accumulator.debiased()
