"""How findings are worded and stored: numbers as the report prints them, and a finding as the
plain JSON-able dict every finding is (``kind``, ``dataset`` or None, ``sentence``, ``values``,
NaN as None)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd


def pct(value: float) -> str:
    return "n/a" if pd.isna(value) else f"{100 * value:.1f}%"


def points(value: float, signed: bool = True) -> str:
    return "n/a" if pd.isna(value) else (f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}")


def pct_sd(mean: float, sd: float) -> str:
    """An accuracy as "61.2% ± 3.1" (SD in percentage points), or with "(one seed)"."""
    if pd.isna(mean):
        return "n/a"
    return f"{pct(mean)} ± {small(100 * sd, 1)}" if not pd.isna(sd) else f"{pct(mean)} (one seed)"


def drift_sd(mean: float, sd: float) -> str:
    if pd.isna(mean):
        return "n/a"
    return f"{mean:+.2f}% ± {small(sd)}" if not pd.isna(sd) else f"{mean:+.2f}% (one seed)"


def small(value: float, places: int = 2) -> str:
    """A spread to ``places`` decimals, or to one significant digit where that would read as 0."""
    return f"{value:.{places}f}" if value == 0 or abs(value) >= 0.5 * 10**-places else f"{value:.1g}"


def p_text(p: float) -> str:
    if pd.isna(p):
        return "p not computable (fewer than two seeds per method)"
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


def pretrained_top1(pretrained) -> float:
    """The pretrained zero-shot top-1 from a score record or the suite (dict), a number, or None."""
    if pretrained is None:
        return math.nan
    if isinstance(pretrained, dict):
        return float(pretrained.get("top1", math.nan))
    return float(pretrained)


def plain(value):
    """JSON-ready: numpy scalars to Python, NaN to None (JSON has no NaN), recursively."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (np.generic,)):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def finding(kind: str, dataset: str | None, sentence: str, **values) -> dict:
    return {"kind": kind, "dataset": dataset, "sentence": sentence, "values": plain(values)}
