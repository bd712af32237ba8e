"""The shape every per-run measurement table shares: the run's keys lead, columns carry their
documented dtypes (docs/artifacts.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

RUN_KEYS = ("dataset", "method", "lr", "seed")


def typed(frame: pd.DataFrame, dtypes: dict[str, str]) -> pd.DataFrame:
    """``frame`` with the documented dtypes of its columns."""
    return frame.astype(dtypes)


def with_run_columns(frame: pd.DataFrame, run: dict) -> pd.DataFrame:
    """``frame`` with the run's dataset/method/lr/seed as leading columns."""
    columns = {key: run[key] for key in RUN_KEYS}
    return frame.assign(**columns)[[*columns, *frame.columns]]
