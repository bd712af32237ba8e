"""What every report figure shares: the method colours, the canvas, the shared legend and the
learning-rate shades."""

from __future__ import annotations

import numpy as np
import seaborn as sns
from matplotlib.figure import Figure

from clipdrift.model.methods import METHODS

STYLE = "whitegrid"


def method_color(method: str, methods: list[str]) -> str:
    """The plain methods' fixed colours; every other method (a variant) its own hue, evenly
    spaced, so a dozen variants stay apart (a fixed palette of ten would repeat)."""
    if method in METHODS:
        return METHODS[method].colour
    others = [m for m in methods if m not in METHODS]
    return sns.color_palette("husl", len(others)).as_hex()[others.index(method)]


def canvas(nrows: int, ncols: int, width: float, height: float) -> tuple[Figure, np.ndarray]:
    figure = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    with sns.axes_style(STYLE):
        axes = figure.subplots(nrows, ncols, squeeze=False)
    return figure, axes


def legend(figure: Figure, axes: np.ndarray, max_columns: int = 6) -> None:
    handles = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    # a long legend wraps into rows instead of running off the figure's sides
    figure.legend(handles.values(), handles.keys(), loc="outside lower center",
                  ncols=max(1, min(len(handles), max_columns)), frameon=False)


def lr_shades(color: str, lrs: list[str]) -> dict[str, tuple]:
    """One shade of ``color`` per learning rate, darker for higher rates."""
    palette = sns.light_palette(color, n_colors=len(lrs) + 2)[2:]
    return dict(zip(lrs, palette))
