"""Collapse onset: when, in a run's traced CLS-attention entropy (history ``entropy_trace``), the
layer-mean entropy first falls a given share below where it started, in two conventions:

- **published** (``collapse_onset_<t>_published``): with the trace ``e[0], …, e[n-1]`` (the
  first point after the first optimiser step), the first index ``i`` with
  ``e[i] < (1 − t/100) · e[0]`` (strict, against the first trace point), reported as ``i / n``;
  the point of steepest decrease is ``argmin(numpy.gradient(e)) / n`` (``steepest_drop_published``);
- **clipdrift's** (``collapse_onset_<t>``): the first traced step whose entropy is at or below
  ``(1 − t/100)`` times the *pretrained* value (measured before any step), as that step ÷ the
  run's optimiser steps (``collapse_onset`` is the 1% one).

``t`` runs over :data:`ONSET_THRESHOLDS_PCT` (published: 0.5, 1 and 2%). NaN: never (or not traced).
"""

from __future__ import annotations

import math

import numpy as np

ONSET_THRESHOLDS_PCT = (0.5, 1.0, 2.0)
COLLAPSE_DROP = 0.01  # clipdrift's headline onset (collapse_onset) and the trace figure's line


def trace_points(history: dict) -> list[tuple[int, float]]:
    """The run's traced (step, entropy) points in order, from its epochs ([] when not traced)."""
    return [(int(step), float(value)) for epoch in history.get("epochs") or [] for step, value in
            epoch.get("entropy_trace", [])]


def collapse_onset(points: list[tuple[int, float]], pretrained: float, total_steps: int,
                   drop: float = COLLAPSE_DROP) -> float:
    """clipdrift's onset: the fraction of training (step ÷ ``total_steps``) at the first point whose
    entropy is at or below ``(1 − drop) · pretrained``; NaN when no point is."""
    threshold = (1.0 - drop) * pretrained
    return next((step / total_steps for step, value in points if value <= threshold), math.nan)


def published_onset(values: list[float], drop: float) -> float:
    """The published onset: the first index ``i`` with ``values[i] < (1 − drop) · values[0]``, as
    ``i / len(values)``; NaN when none is."""
    if not values:
        return math.nan
    threshold = (1.0 - drop) * values[0]
    return next((i / len(values) for i, value in enumerate(values) if value < threshold), math.nan)


def steepest_drop(values: list[float]) -> float:
    """The published point of steepest decrease: ``argmin(numpy.gradient(values)) / len(values)``
    (NaN with fewer than two points, where no gradient exists)."""
    if len(values) < 2:
        return math.nan
    return int(np.argmin(np.gradient(np.asarray(values, dtype=float)))) / len(values)


def threshold_label(percent: float) -> str:
    """``0.5`` -> ``0.5``, ``1.0`` -> ``1``: the threshold as the columns name it."""
    return f"{percent:g}"


def collapse_columns(history: dict) -> dict:
    """The run table's collapse columns (NaN when the run was not traced): the onsets in both
    conventions at every threshold, the published steepest-decrease point, ``collapse_onset``
    (clipdrift's, at 1%) and ``trace_min_drift_pct`` (the lowest traced entropy, % change from
    pretrained)."""
    traced = history.get("entropy_trace")
    points = trace_points(history)
    names = ["collapse_onset", "trace_min_drift_pct", "steepest_drop_published"]
    for percent in ONSET_THRESHOLDS_PCT:
        names += [f"collapse_onset_{threshold_label(percent)}", f"collapse_onset_{threshold_label(percent)}_published"]
    if not traced or not points:
        return dict.fromkeys(names, math.nan)
    pretrained, total = float(traced["pretrained"]), int(traced["total_steps"])
    values = [value for _, value in points]
    columns = {"collapse_onset": collapse_onset(points, pretrained, total),
               "trace_min_drift_pct": 100.0 * (min(values) - pretrained) / pretrained,
               "steepest_drop_published": steepest_drop(values)}
    for percent in ONSET_THRESHOLDS_PCT:
        label = threshold_label(percent)
        columns[f"collapse_onset_{label}"] = collapse_onset(points, pretrained, total, percent / 100)
        columns[f"collapse_onset_{label}_published"] = published_onset(values, percent / 100)
    return columns
