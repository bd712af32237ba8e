"""Collapse onset: when, in a run's traced CLS-attention entropy (history ``entropy_trace``), the
layer-mean entropy first falls :data:`COLLAPSE_DROP` below its pretrained value — as a fraction
of the run's optimiser steps (the published measure: 7% of training at 1e-4, never at 1e-5)."""

from __future__ import annotations

import math

COLLAPSE_DROP = 0.01


def trace_points(history: dict) -> list[tuple[int, float]]:
    """The run's traced (step, entropy) points in order, from its epochs ([] when not traced)."""
    return [(int(step), float(value)) for epoch in history.get("epochs") or [] for step, value in
            epoch.get("entropy_trace", [])]


def collapse_onset(points: list[tuple[int, float]], pretrained: float, total_steps: int,
                   drop: float = COLLAPSE_DROP) -> float:
    """The fraction of training (step ÷ ``total_steps``) at the first point whose entropy is at or
    below ``(1 − drop) · pretrained``; NaN when no point is (it never collapsed while traced)."""
    threshold = (1.0 - drop) * pretrained
    return next((step / total_steps for step, value in points if value <= threshold), math.nan)


def collapse_columns(history: dict) -> dict:
    """The run table's collapse columns: ``collapse_onset`` (NaN: never, or not traced) and
    ``trace_min_drift_pct`` (the lowest traced entropy, % change from pretrained; NaN: not traced)."""
    traced = history.get("entropy_trace")
    points = trace_points(history)
    if not traced or not points:
        return {"collapse_onset": math.nan, "trace_min_drift_pct": math.nan}
    pretrained = float(traced["pretrained"])
    lowest = min(value for _, value in points)
    return {"collapse_onset": collapse_onset(points, pretrained, int(traced["total_steps"])),
            "trace_min_drift_pct": 100.0 * (lowest - pretrained) / pretrained}

