"""Small-sample statistics on plain arrays: bootstrap intervals, Welch and exact permutation
tests, Holm's step-down correction, correlations with intervals, one-way and repeated-measures
ANOVA, and the published per-layer paired test.

Cells hold a handful of seeds (5 in the published study), so every function reports n and
returns NaN instead of a number where the sample cannot support one.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import stats

# Beyond this many distinct relabellings the permutation test samples instead of enumerating
# (5 + 5 seeds have 252; 10 + 10 have 184,756).
MAX_EXACT_PERMUTATIONS = 200_000
RANDOM_PERMUTATIONS = 20_000


def _finite(values) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    return values[np.isfinite(values)]


def bootstrap_ci(values, confidence: float = 0.95, n_resamples: int = 9999, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (non-finite values dropped).

    With a handful of seeds a percentile interval is narrower than the truth (it cannot see
    spread the sample missed); the report shows it next to SD and n, never alone. Returns NaNs
    for fewer than two values; a constant sample gives the degenerate interval (v, v).
    """
    values = _finite(values)
    if len(values) < 2:
        return math.nan, math.nan
    if np.ptp(values) == 0:
        return float(values[0]), float(values[0])
    result = stats.bootstrap(
        (values,),
        np.mean,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method="percentile",
        vectorized=True,
        rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values; NaN entries are not tests and stay NaN.

    Sorted ascending, the i-th smallest of m p-values is multiplied by (m − i) (0-based i),
    then made monotone with a running maximum and capped at 1.
    """
    pvalues = np.asarray(pvalues, dtype=float)
    adjusted = np.full_like(pvalues, np.nan)
    tested = np.flatnonzero(np.isfinite(pvalues))
    order = tested[np.argsort(pvalues[tested], kind="stable")]
    m = len(order)
    scaled = pvalues[order] * (m - np.arange(m))
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return adjusted


def welch(a, b, confidence: float = 0.95) -> dict:
    """Welch's t-test of mean(b) − mean(a) with its confidence interval (NaN for n < 2)."""
    a, b = _finite(a), _finite(b)
    out = {
        "diff": float(np.mean(b) - np.mean(a)) if len(a) and len(b) else math.nan,
        "t": math.nan,
        "df": math.nan,
        "p_welch": math.nan,
        "diff_ci_low": math.nan,
        "diff_ci_high": math.nan,
    }
    if len(a) < 2 or len(b) < 2 or (np.ptp(a) == 0 and np.ptp(b) == 0):
        return out  # no variance estimate: a t statistic would be undefined or infinite
    with warnings.catch_warnings():
        # one arm without spread (every seed's LoRA change has rank r) is a valid Welch test; scipy warns
        warnings.filterwarnings("ignore", "Precision loss occurred", RuntimeWarning)
        result = stats.ttest_ind(b, a, equal_var=False)
        interval = result.confidence_interval(confidence)
    out.update(
        t=float(result.statistic),
        df=float(result.df),
        p_welch=float(result.pvalue),
        diff_ci_low=float(interval.low),
        diff_ci_high=float(interval.high),
    )
    return out


def cohens_d(a, b) -> float:
    """Cohen's d of b against a: (mean(b) − mean(a)) / the pooled SD (ddof 1); NaN for n < 2 or no spread."""
    a, b = _finite(a), _finite(b)
    if len(a) < 2 or len(b) < 2:
        return math.nan
    pooled = ((len(a) - 1) * np.var(a, ddof=1) + (len(b) - 1) * np.var(b, ddof=1)) / (len(a) + len(b) - 2)
    return float((np.mean(b) - np.mean(a)) / math.sqrt(pooled)) if pooled > 0 else math.nan


def one_way_anova(groups: list) -> dict:
    """One-way ANOVA across ``groups`` (scipy's F test): F, its p and the group count; NaN where a
    group has fewer than two values or no group varies."""
    groups = [_finite(g) for g in groups]
    if len(groups) < 2 or any(len(g) < 2 for g in groups) or all(np.ptp(g) == 0 for g in groups):
        return {"f": math.nan, "p_anova": math.nan, "n_groups": len(groups)}
    result = stats.f_oneway(*groups)
    return {"f": float(result.statistic), "p_anova": float(result.pvalue), "n_groups": len(groups)}


def repeated_measures_anova(values) -> dict:
    """One-factor repeated-measures ANOVA of ``values`` (subjects × levels, e.g. seeds × layer
    groups): F = MS_levels / MS_error with (k − 1, (k − 1)(n − 1)) degrees of freedom, so each
    subject is compared with itself. NaN with fewer than two subjects, a missing value or no
    error variance. With two levels F is the paired t statistic squared."""
    table = np.asarray(values, dtype=float)
    n, k = table.shape if table.ndim == 2 else (0, 0)
    if n < 2 or k < 2 or not np.isfinite(table).all():
        return {"f": math.nan, "p_anova": math.nan, "n_groups": k}
    grand = table.mean()
    ss_levels = n * ((table.mean(axis=0) - grand) ** 2).sum()
    ss_subjects = k * ((table.mean(axis=1) - grand) ** 2).sum()
    ss_error = ((table - grand) ** 2).sum() - ss_levels - ss_subjects
    df_levels, df_error = k - 1, (k - 1) * (n - 1)
    if not ss_error > 1e-12 * max(1.0, ss_levels):
        return {"f": math.nan, "p_anova": math.nan, "n_groups": k}
    f = (ss_levels / df_levels) / (ss_error / df_error)
    return {"f": float(f), "p_anova": float(stats.f.sf(f, df_levels, df_error)), "n_groups": k}


def paired_over_layers(a, b) -> dict:
    """The published regulariser test: paired t over matched per-layer values of two runs
    (scipy's ttest_rel) and Cohen's d of the two sets of layer values (pooled SD, ddof 1).
    NaN with fewer than two pairs or no variation."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    if len(a) < 2 or np.ptp(b - a) == 0:
        return {"t_paired": math.nan, "p_paired": math.nan, "cohens_d_layers": cohens_d(a, b), "n_layers": len(a)}
    result = stats.ttest_rel(b, a)
    return {"t_paired": float(result.statistic), "p_paired": float(result.pvalue), "cohens_d_layers": cohens_d(a, b),
            "n_layers": len(a)}


def _mean_difference(b, a, axis):
    return np.mean(b, axis=axis) - np.mean(a, axis=axis)


def _permutation_test(data: tuple, statistic, permutation_type: str, exact: bool, seed: int):
    """scipy's two-sided permutation test: every permutation when ``exact``, else a seeded sample."""
    return stats.permutation_test(data, statistic, permutation_type=permutation_type, vectorized=True,
                                  n_resamples=np.inf if exact else RANDOM_PERMUTATIONS, alternative="two-sided",
                                  rng=np.random.default_rng(seed))


def permutation(a, b, seed: int = 0) -> dict:
    """Two-sided permutation test of mean(b) − mean(a) over relabellings of the pooled seeds:
    exact (every relabelling) when there are at most ``MAX_EXACT_PERMUTATIONS``.

    ``p_perm_min`` is the smallest p-value the test can produce at these sample sizes (2 / the
    number of relabellings): with 5 + 5 seeds it is 0.0079, which matters after Holm.
    """
    a, b = _finite(a), _finite(b)
    out = {"p_perm": math.nan, "p_perm_min": math.nan, "perm_exact": False, "n_permutations": 0}
    if len(a) < 1 or len(b) < 1 or len(a) + len(b) < 3:
        return out
    count = math.comb(len(a) + len(b), len(a))
    exact = count <= MAX_EXACT_PERMUTATIONS
    result = _permutation_test((b, a), _mean_difference, "independent", exact, seed)
    n_permutations = count if exact else RANDOM_PERMUTATIONS + 1
    out.update(
        p_perm=float(result.pvalue),
        p_perm_min=min(1.0, 2.0 / n_permutations),
        perm_exact=exact,
        n_permutations=n_permutations,
    )
    return out


def correlation(x, y, confidence: float = 0.95) -> dict:
    """Pearson r with its Fisher-z interval and Spearman ρ, on pairs where both are finite."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    out = {
        "n": len(x),
        "pearson_r": math.nan,
        "pearson_ci_low": math.nan,
        "pearson_ci_high": math.nan,
        "pearson_p": math.nan,
        "spearman_rho": math.nan,
        "spearman_p": math.nan,
    }
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return out
    pearson = stats.pearsonr(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # n == 3: the interval is undefined and scipy warns
        interval = pearson.confidence_interval(confidence) if len(x) > 3 else None
    spearman = stats.spearmanr(x, y)
    out.update(
        pearson_r=float(pearson.statistic),
        pearson_p=float(pearson.pvalue),
        spearman_rho=float(spearman.statistic),
        spearman_p=float(spearman.pvalue),
    )
    if interval is not None:
        out.update(pearson_ci_low=float(interval.low), pearson_ci_high=float(interval.high))
    return out


CORRELATION_METHODS = ("pearson", "spearman")


def _correlation_statistic(method: str):
    def pearson(x, y, axis=-1):
        x = x - x.mean(axis=axis, keepdims=True)
        y = y - y.mean(axis=axis, keepdims=True)
        return (x * y).sum(axis=axis) / np.sqrt((x * x).sum(axis=axis) * (y * y).sum(axis=axis))

    if method == "pearson":
        return pearson
    if method == "spearman":
        # Spearman's rho is Pearson's r of the ranks; permuting pairings permutes ranks alike
        return lambda x, y, axis=-1: pearson(stats.rankdata(x, axis=axis), stats.rankdata(y, axis=axis), axis)
    raise ValueError(f"correlation method {method!r} is unknown: use one of {CORRELATION_METHODS}")


def permutation_correlation(x, y, method: str = "pearson", seed: int = 0) -> dict:
    """Pearson r or Spearman ρ with a two-sided permutation p-value over re-pairings of ``y``
    with ``x``: exact (all n! pairings) when there are at most ``MAX_EXACT_PERMUTATIONS``,
    else Monte-Carlo with ``RANDOM_PERMUTATIONS`` (seeded). Pairs with a non-finite value
    are dropped first; NaN where fewer than 3 pairs remain or a side is constant.
    """
    statistic = _correlation_statistic(method)
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    out = {"n": len(x), "r": math.nan, "p_perm": math.nan, "perm_exact": False, "n_permutations": 0}
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return out
    exact = math.factorial(len(x)) <= MAX_EXACT_PERMUTATIONS
    result = _permutation_test((x, y), statistic, "pairings", exact, seed)
    out.update(
        r=float(result.statistic),
        p_perm=float(result.pvalue),
        perm_exact=exact,
        n_permutations=math.factorial(len(x)) if exact else RANDOM_PERMUTATIONS + 1,
    )
    return out
