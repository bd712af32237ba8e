"""What every report figure shares: each method's look, the panels methods are drawn in, the
canvas, a legend that fits its figure and the learning-rate shades.

A study of a few methods draws them together; a study of many draws small multiples, one panel
(row) per method family, each with the reference methods (Full FT, LoRA) drawn bold beside the
family's variants. A method looks the same in every figure: its family's hue (the registry's
colour), a lighter or darker shade and a marker and dash of its own per variant.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np
import seaborn as sns
from matplotlib.colors import to_hex, to_rgb
from matplotlib.figure import Figure

from clipdrift.analysis.tables import lr_order, method_label, method_order
from clipdrift.model.methods import METHODS, REFERENCE_PAIR, family_of
from clipdrift.report.names import SHARED_PANEL_METHODS

STYLE = "whitegrid"
MAX_COLUMNS = 4
VARIANT_MARKERS = ("s", "^", "D", "v", "P", "X", "h", "<", ">", "p", "*", "d")
VARIANT_DASHES = ("--", "-.", ":", (0, (5, 1, 1, 1)))
LEGEND_FONT_PT = 9.0


@dataclass(frozen=True)
class MethodStyle:
    color: str
    marker: str
    linestyle: str | tuple
    linewidth: float
    label: str

    def line(self, **overrides) -> dict:
        """Keyword arguments of ``Axes.plot`` drawing this method."""
        return {"color": self.color, "marker": self.marker, "linestyle": self.linestyle,
                "linewidth": self.linewidth, "label": self.label, **overrides}


def _shades(colour: str, count: int) -> list[str]:
    """``count`` shades of ``colour``'s hue, from darker to lighter than the colour itself."""
    hue, lightness, saturation = colorsys.rgb_to_hls(*to_rgb(colour))
    levels = np.linspace(0.22, 0.78, count + 1) if count else []
    levels = sorted(levels, key=lambda level: abs(level - lightness))[1:] if count else []  # the base keeps its own
    return [to_hex(colorsys.hls_to_rgb(hue, level, saturation * 0.9)) for level in sorted(levels)]


def method_styles(methods) -> dict[str, MethodStyle]:
    """Every method's look in a study of ``methods``: the plain methods their registry colour,
    solid and bold; each variant a shade of its method's hue with its own marker and dash; a
    method of no known family a hue of its own."""
    ordered = method_order(methods)
    styles = {}
    unknown = [m for m in ordered if family_of(m) is None]
    for index, (name, colour) in enumerate(zip(unknown, sns.color_palette("husl", len(unknown)).as_hex())):
        styles[name] = MethodStyle(colour, VARIANT_MARKERS[index % len(VARIANT_MARKERS)], "-", 1.4, name)
    for family in METHODS:
        variants = [m for m in ordered if family_of(m) == family and m != family]
        styles[family] = MethodStyle(METHODS[family].colour, "o", "-", 2.4, method_label(family))
        for index, (name, shade) in enumerate(zip(variants, _shades(METHODS[family].colour, len(variants)))):
            styles[name] = MethodStyle(shade, VARIANT_MARKERS[index % len(VARIANT_MARKERS)],
                                       VARIANT_DASHES[index % len(VARIANT_DASHES)], 1.3, name)
    return {name: styles[name] for name in ordered}


def method_groups(methods) -> list[tuple[str, list[str]]]:
    """The panels ``methods`` are drawn in: one, titled "", with every method when they are few;
    else one per family with variants (its method and variants, after the reference methods of the
    other families), titled by the family, and the methods without variants a few a panel beside
    the reference methods, titled by their names."""
    ordered = method_order(methods)
    if len(ordered) <= SHARED_PANEL_METHODS:
        return [("", ordered)]
    groups = []
    for family in [*METHODS, None]:
        members = [m for m in ordered if family_of(m) == family]
        if not members or members == [family]:
            continue
        references = [m for m in REFERENCE_PAIR if m in ordered and m not in members]
        title = f"{method_label(family)} and its variants" if family else "other methods"
        groups.append((title, method_order(references + members)))
    drawn = {m for _, members in groups for m in members}
    plain = [m for m in ordered if m not in drawn]  # methods of no variant that no panel references
    references = [m for m in REFERENCE_PAIR if m in ordered]
    others = [m for m in plain if m not in references] or plain
    for start in range(0, len(others), SHARED_PANEL_METHODS):  # many plain methods: a few a panel, beside the references
        chunk = others[start:start + SHARED_PANEL_METHODS]
        groups.append((", ".join(method_label(m) for m in chunk), method_order([*references, *chunk])))
    return groups


def cell_rows(frame) -> list[tuple[str, str]]:
    """The (method, learning rate) cells of ``frame``, in the study's order: a heatmap's rows."""
    return [(m, lr) for m in method_order(frame["method"]) for lr in lr_order(frame.loc[frame["method"] == m, "lr"])]


def panel_title(*parts: str, group: str = "") -> str:
    """A panel's title: what it shows, and on a line of its own the method group it draws."""
    return " · ".join(part for part in parts if part) + (f"\n{group}" if group else "")


def wrapped(count: int, columns: int = MAX_COLUMNS) -> tuple[int, int]:
    """Rows and columns of a grid of ``count`` panels at most ``columns`` wide."""
    columns = max(1, min(columns, count))
    return math.ceil(count / columns), columns


def canvas(nrows: int, ncols: int, width: float, height: float, sharey: bool | str = False) -> tuple[Figure, np.ndarray]:
    figure = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    with sns.axes_style(STYLE):
        axes = figure.subplots(nrows, ncols, squeeze=False, sharey=sharey)
    return figure, axes


def hide_unused(axes: np.ndarray, used: int) -> None:
    for ax in axes.flat[used:]:
        ax.set_visible(False)


def legend(figure: Figure, axes: np.ndarray | None = None, handles: list | None = None, methods=()) -> None:
    """One legend below the panels, in as many columns as the figure's width holds its longest
    entry, the figure made taller by the rows it takes: it never runs off the canvas. The entries
    of ``methods`` come first, in the study's order, then the others (references, markers)."""
    if handles is None:
        found = {}
        for ax in axes.flat:
            for handle, label in zip(*ax.get_legend_handles_labels()):
                found.setdefault(label, handle)
        first = [label for label in (method_label(m) for m in method_order(methods)) if label in found]
        labels = first + [label for label in found if label not in first]
        handles = [found[label] for label in labels]
    else:
        labels = [handle.get_label() for handle in handles]
    if not handles:
        return
    entry_pt = 2.6 * LEGEND_FONT_PT + 0.62 * LEGEND_FONT_PT * max(len(label) for label in labels) + 12
    columns = max(1, min(len(handles), int(figure.get_figwidth() * 72 // entry_pt)))
    rows = math.ceil(len(handles) / columns)
    figure.set_figheight(figure.get_figheight() + 0.3 + rows * LEGEND_FONT_PT * 1.5 / 72)
    figure.legend(handles, labels, loc="outside lower center", ncols=columns, frameon=False,
                  fontsize=LEGEND_FONT_PT)


def lr_shades(color: str, lrs: list[str]) -> dict[str, tuple]:
    """One shade of ``color`` per learning rate, darker for higher rates."""
    palette = sns.light_palette(color, n_colors=len(lrs) + 2)[2:]
    return dict(zip(lrs, palette))


def lr_lines(style: MethodStyle, lrs: list[str]) -> list[tuple[str, dict]]:
    """Per learning rate, ``Axes.plot`` keywords drawing a method's line in its rate's shade; the
    highest rate, drawn in the method's own colour, names the method in the legend."""
    shades = lr_shades(style.color, lrs)
    return [(lr, style.line(color=shade, markersize=3, label=style.label if lr == lrs[-1] else None))
            for lr, shade in shades.items()]
