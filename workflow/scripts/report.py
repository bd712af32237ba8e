"""Render the study report: figures (PNG + SVG) and one self-contained HTML page."""

from clipdrift.pipeline.jobs.warm.client import hand_over

hand_over(snakemake)  # noqa: F821 - the job server ran this job (and this process exits), or it runs here

from clipdrift.analysis.suite import pretrained_suite
from clipdrift.core.errors import UserFacingError
from clipdrift.core.io import atomic_output, read_json, read_table, write_figure
from clipdrift.pipeline.jobs.runner import run_script
from clipdrift.report.figures import make_figures
from clipdrift.report.html import render_report
from clipdrift.report.names import FIGURES


def main(smk):
    tables = {name: read_table(smk.input[name]) for name in smk.params.tables}
    pretrained = pretrained_suite([read_json(path) for path in smk.input.pretrained_zeroshot])
    pretrained["indomain"] = {s["dataset"]: s["top1"] for path in smk.input.pretrained_indomain
                              for s in read_json(path)["tasks"]}
    figures = make_figures(tables, pretrained)
    missing = [name for name in smk.params.figures if name not in figures]
    if missing:
        raise UserFacingError(f"the study's tables cannot support the figures {missing}: check the aggregate log")
    for name, figure in figures.items():
        write_figure(figure, smk.output[f"{name}_png"], smk.output[f"{name}_svg"])
        with atomic_output(smk.output[f"{name}_caption"]) as tmp:
            tmp.write_text(FIGURES[name].caption + "\n")
    pngs = {name: smk.output[f"{name}_png"] for name in figures}  # the page embeds the files just written
    html = render_report(tables, pngs, read_json(smk.input.findings), smk.params.study, pretrained)
    with atomic_output(smk.output.html) as tmp:
        tmp.write_text(html)


run_script(snakemake, main)  # noqa: F821 - injected by Snakemake
