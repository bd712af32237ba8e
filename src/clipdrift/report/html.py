"""The study report as ONE self-contained HTML page: findings, tables, figures, downloads.

The page is laid out by jinja2 templates (package data in ``report/jinja/``) with autoescape on,
so every string from the study (dataset and method names, settings, findings) is escaped by the
template and none by hand. The sections are listed once, in :data:`SECTIONS`: the table of
contents, the anchors and the sections themselves all come from that one list.

Figures are embedded as the PNG files the figure step wrote (base64), tables as HTML, every
table also as a CSV ``data:`` link, the style sheet and the one script (long tables sort and
filter in the page) inline; the page loads nothing from anywhere. The page is a pure function
of its inputs (no timestamps), so an unchanged study renders an unchanged page.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import NamedTuple

import jinja2
import pandas as pd

import clipdrift
from clipdrift.report import views
from clipdrift.report.glossary import glossary_view
from clipdrift.report.weight_views import weights_view

# The templates, by name: the code digest of the report rule reads exactly the files named here
# (clipdrift.pipeline.codedigest), and the page can include no other file.
TEMPLATE_FOLDER = "jinja"
PAGE = "report.html.j2"
TEMPLATE_FILES = (PAGE, "sections.html.j2", "macros.html.j2", "report.css", "report.js")


class ReportInputs(NamedTuple):
    tables: dict[str, pd.DataFrame]
    figures: Mapping[str, bytes | str | os.PathLike]
    findings: list[dict]
    study: dict
    pretrained: object


@dataclass(frozen=True)
class Section:
    """One section of the page: its anchor (``id``), its entry in the table of contents, its
    heading, and what it shows. ``build`` returns the view its macro (in ``sections.html.j2``,
    named like the id) lays out, or None for a section with nothing to show, which the table of
    contents lists all the same. A view's own ``heading`` replaces the default one."""

    id: str
    label: str
    heading: str
    build: Callable[[ReportInputs], dict | None]


SECTIONS: tuple[Section, ...] = (
    Section("findings", "Findings", "Findings", lambda r: views.findings_view(r.findings)),
    Section("figures", "Figures", "Figures", lambda r: views.figures_view(r.figures)),
    Section("cells", "Cells", "Cells: dataset × method × learning rate", lambda r: views.cells_view(r.tables["cells"])),
    Section("suite", "Held-out suite", "Held-out suite: retention per task",
            lambda r: views.suite_view(r.tables.get("zeroshot"), r.tables["runs"], r.pretrained)),
    Section("stats", "Comparisons", "Method comparisons at matched learning rates",
            lambda r: views.stats_view(r.tables.get("stats"))),
    Section("ranking", "Method ranking", "Methods ranked by the zero-shot they keep at matched in-domain accuracy",
            lambda r: views.ranking_view(r.tables.get("method_ranking"))),
    Section("correlations", "Correlations", "Correlations", lambda r: views.correlations_view(r.tables.get("correlations"))),
    Section("relations", "CKA vs drift", "CKA and attention drift",
            lambda r: views.relations_view(r.tables.get("cka_entropy"))),
    Section("sensitivity", "Probe sensitivity", "Probe-subset sensitivity",
            lambda r: views.sensitivity_view(r.tables.get("probe_sensitivity"))),
    Section("weights", "Weight space", "Weight space: how alike the changes are, and the intruders' sweep",
            lambda r: weights_view(r.tables.get("weight_overlap"), r.tables.get("intruder_sweep"))),
    Section("methods", "Method averages", "Methods averaged over learning rates",
            lambda r: views.methods_view(r.tables["methods"])),
    Section("paper", "Published study", "Comparison with the published study",
            lambda r: views.paper_view(r.tables, r.study, r.pretrained)),
    Section("runs", "All runs", "All runs", lambda r: views.runs_view(r.tables["runs"])),
    Section("downloads", "CSV", "Tables as CSV", lambda r: views.downloads_view(r.tables)),
    Section("study", "Study", "Study", lambda r: views.study_view(r.study, r.pretrained)),
    Section("glossary", "Glossary", "Glossary: methods, variants, metrics and statistics",
            lambda r: glossary_view(r.study, r.tables["runs"]["method"])),
)


@functools.cache
def environment() -> jinja2.Environment:
    """The templates' environment: autoescape on, an undefined name an error, not an empty string."""
    folder = resources.files("clipdrift.report").joinpath(TEMPLATE_FOLDER)
    sources = {name: folder.joinpath(name).read_text(encoding="utf-8") for name in TEMPLATE_FILES}
    return jinja2.Environment(
        loader=jinja2.DictLoader(sources),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render_report(
    tables: dict[str, pd.DataFrame],
    figures: Mapping[str, bytes | str | os.PathLike],
    findings: list[dict],
    study: dict,
    pretrained=None,
) -> str:
    """The whole report as one HTML string.

    ``tables``: the dict of :func:`clipdrift.analysis.study.build_tables` (or read back from Parquet);
    ``figures``: name -> the PNG file the figure step wrote from
    :func:`clipdrift.report.figures.make_figures` (its path or its bytes), in reading order;
    ``findings``: :func:`clipdrift.analysis.findings`; ``study``: settings to show (name,
    preset, datasets, rates, seeds…); ``pretrained``: the pretrained model over the held-out
    suite (:func:`clipdrift.analysis.suite.pretrained_suite`).
    """
    inputs = ReportInputs(tables, figures, findings, study, pretrained)
    shown = [(section, view) for section in SECTIONS if (view := section.build(inputs)) is not None]
    name = study.get("name") or study.get("study") or "study"
    return environment().get_template(PAGE).render(
        name=str(name), version=clipdrift.__version__, sections=SECTIONS, shown=shown
    )
