"""What one table cell of the report says: numbers formatted as the report shows them, and the
table itself as plain data (already formatted text) for the page template to lay out.

Nothing here writes HTML: the templates do, and escape every cell.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd

from clipdrift.analysis.names import METRICS
from clipdrift.analysis.tables import ACCURACY_METRICS
from clipdrift.analysis.wording import small
from clipdrift.model.methods import METHODS as METHOD_REGISTRY
from clipdrift.report.glossary import anchor


def is_missing(value) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def format_value(metric: str, value, signed: bool = False) -> str:
    """One number as the report shows it: accuracies in percent, drifts signed, CKA to 3 places."""
    if is_missing(value):
        return "–"
    sign = "+" if signed else ""
    if metric in ACCURACY_METRICS:
        return f"{100 * value:{sign}.1f}"
    if metric.startswith("drift_"):
        return f"{value:+.2f}"
    if metric == "cka_mean" or metric.startswith("cka_"):
        return f"{value:{sign}.3f}"
    if metric == "trainable_params":
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"


def _spread(metric: str, sd: float) -> str:
    """An SD as its metric is shown, but never rounded to a zero it is not."""
    if metric in ACCURACY_METRICS:
        return small(100 * sd, 1)
    if metric.startswith("drift_"):
        return small(sd)
    if metric.startswith("cka"):
        return small(sd, 3)
    return format_value(metric, sd)


def mean_sd(metric: str, mean, sd) -> str:
    """ "mean ± SD" (SD unsigned, omitted when there is none), or "–" without a mean."""
    if is_missing(mean):
        return "–"
    spread = "" if is_missing(sd) else f" ± {_spread(metric, sd)}"
    return format_value(metric, mean) + spread


def summary(row: pd.Series, metric: str) -> str:
    """ "mean ± SD [low, high]" for a metric of a cell row."""
    text = mean_sd(metric, row.get(f"{metric}_mean"), row.get(f"{metric}_sd"))
    low, high = row.get(f"{metric}_ci_low"), row.get(f"{metric}_ci_high")
    if text != "–" and not is_missing(low):
        text += f" [{format_value(metric, low)}, {format_value(metric, high)}]"
    return text


def p_value(value) -> str:
    if is_missing(value):
        return "–"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def yes_no(value) -> str:
    return "–" if is_missing(value) else ("yes" if value else "no")


def r_with_ci(r, low, high) -> str:
    """ "r [low, high]" to 2 places, the interval left out where there is none."""
    if is_missing(r):
        return "–"
    return f"{r:.2f}" + ("" if is_missing(low) else f" [{low:.2f}, {high:.2f}]")


# --------------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class Row:
    cells: tuple[str, ...]
    css_class: str = ""  # "flag" (highlighted), "diverged", or none
    links: tuple[str, ...] = ()  # per cell, the glossary entry it links to ("" for none)


@dataclass(frozen=True)
class Table:
    """A table of already formatted cells; the first ``text_columns`` are text (left-aligned);
    ``links``: per column, the glossary entry its header links to ("" for none)."""

    columns: tuple[str, ...]
    rows: tuple[Row, ...]
    text_columns: int = 0
    links: tuple[str, ...] = ()


def table(
    columns: Iterable[str], rows: Iterable[Iterable], classes: Iterable[str] | None = None, text_columns: int = 0
) -> Table:
    """A :class:`Table` of ``rows`` (each cell shown as ``str`` shows it), one CSS class per row if given."""
    rows = [tuple(str(value) for value in row) for row in rows]
    classes = [""] * len(rows) if classes is None else list(classes)
    columns = tuple(columns)
    links = tuple(anchor(column) if column in _METRIC_LABELS else "" for column in columns)
    method = columns.index("method") if "method" in columns else None
    return Table(columns, tuple(Row(cells, css, _method_link(cells, method)) for cells, css in zip(rows, classes)),
                 text_columns, links)


_METRIC_LABELS = {metric.label for metric in METRICS.values()}
_METHOD_NAMES = {entry.label: name for name, entry in METHOD_REGISTRY.items()}


def _method_link(cells: tuple[str, ...], column: int | None) -> tuple[str, ...]:
    """A method column's cell links to the method's (or variant's) glossary entry."""
    if column is None:
        return ()
    label = cells[column]
    return tuple(anchor(_METHOD_NAMES.get(label, label)) if index == column else "" for index in range(len(cells)))
