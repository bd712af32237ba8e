"""The figures and the self-contained HTML report, built from the fabricated runs; the page is
opened in a real headless browser (Debian's chromium) that must load every image and log no
console message."""

import base64
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from markupsafe import escape

from clipdrift.analysis.findings import findings
from clipdrift.analysis.reference import ablation_comparison, load_reference, paper_comparison
from clipdrift.analysis.sensitivity import sensitivity_summary
from clipdrift.analysis.study import build_tables
from clipdrift.analysis.tables import method_label
from clipdrift.core.io import read_table, write_figure, write_table
from clipdrift.report.cells import mean_sd
from clipdrift.report.figures import indomain_vs_zeroshot, make_figures
from clipdrift.report.html import SECTIONS, render_report
from clipdrift.report.names import FIGURES

from fabricated_study import DIVERGED, PRETRAINED, fabricate, fabricate_intervention, fabricate_weights

ROOT = Path(__file__).resolve().parents[1]
MEASURED = ("always", "weights", "weight_pairs", "intervention")  # the fabricated study has no curves, no trace
STUDY = {"name": "fabricated", "preset": "unit-test", "datasets": ["eurosat", "pets"], "seeds": [7, 11, 19]}


@pytest.fixture(scope="module")
def tables():
    study = fabricate()
    weights, sweep, overlap = fabricate_weights(study[0])
    runs = build_tables(*study, pretrained_zeroshot=[PRETRAINED])["runs"]
    return build_tables(*study, pretrained_zeroshot=[PRETRAINED], weights=weights, intruder_sweep=sweep,
                        weight_overlap=overlap, intervention=fabricate_intervention(runs))


@pytest.fixture(scope="module")
def figures(tables):
    return make_figures(tables, PRETRAINED)


@pytest.fixture(scope="module")
def found(tables):
    return findings(tables["runs"], PRETRAINED)


@pytest.fixture(scope="module")
def pngs(figures, tmp_path_factory):
    """The figures as the report rule writes them; the page embeds these very files."""
    folder = tmp_path_factory.mktemp("figures")
    for name, figure in figures.items():
        write_figure(figure, folder / f"{name}.png")
    return {name: folder / f"{name}.png" for name in figures}


@pytest.fixture(scope="module")
def page(tables, pngs, found):
    return render_report(tables, pngs, found, STUDY, PRETRAINED)


# ---------------------------------------------------------------------------------- figures


def test_every_figure_is_built(figures):
    # no curves, no trace; the weight-space drift and the intervention measured
    assert list(figures) == [name for name in FIGURES if FIGURES[name].needs in MEASURED]
    panels = figures["lr_panels"]
    assert len([ax for ax in panels.axes if ax.get_xscale() == "log"]) == 2 * 3  # datasets × metrics


def test_figures_are_written_as_png_and_reproducible_svg(tables, tmp_path):
    """A rerun of the report rule on the same tables rewrites identical files."""
    for name in ("a", "b"):
        figure = indomain_vs_zeroshot(tables["cells"], PRETRAINED)
        write_figure(figure, tmp_path / f"{name}.png", tmp_path / f"{name}.svg")
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = (tmp_path / "a.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "<dc:date>" not in svg
    assert svg == (tmp_path / "b.svg").read_text()
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert not list(tmp_path.glob(".*.tmp"))


def test_every_figure_drawn_has_a_title_and_a_caption_and_the_page_shows_them(figures, page):
    assert set(figures) <= set(FIGURES) and all(FIGURES[name].title and FIGURES[name].caption for name in figures)
    for name in figures:
        assert str(escape(FIGURES[name].caption)) in page and str(escape(FIGURES[name].title)) in page, name


# ------------------------------------------------------------------------------------- page


def test_a_small_spread_is_never_shown_as_zero():
    assert mean_sd("drift_entropy_pct", 0.78, 0.0043) == "+0.78 ± 0.004"
    assert mean_sd("zs_top1", 0.5, 0.0004) == "50.0 ± 0.04"
    assert mean_sd("zs_top1", 0.5, 0.02) == "50.0 ± 2.0"
    assert mean_sd("cka_mean", 0.9, float("nan")) == "0.900"


def test_every_link_in_the_page_lands_on_an_anchor_and_every_shown_metric_links_to_the_glossary(page):
    from clipdrift.analysis.names import METRICS, shown_in
    from clipdrift.report.glossary import anchor

    ids = set(re.findall(r"""\bid=['"]([^'"]+)['"]""", page))
    targets = set(re.findall(r"""href=['"]#([^'"]+)['"]""", page))
    assert targets and targets <= ids, targets - ids
    assert {anchor(METRICS[m].label) for m in shown_in("runs")} <= targets
    assert {"g-holm", "g-retention", "g-bootstrap-interval", "g-full", "g-lora"} <= ids
    assert {"g-full", "g-lora"} <= targets  # the method column's names link to their entries


def test_page_is_self_contained(page, figures):
    assert page.startswith("<!DOCTYPE html>")
    external = re.findall(r"""(?:src|href)\s*=\s*['"](?!data:|#)([^'"]*)""", page)
    assert external == []
    assert "<link" not in page and "url(" not in page
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", page, flags=re.S)
    assert [attributes for attributes, _ in scripts] == [""]  # one inline script, loading nothing
    assert not re.search(r"fetch|XMLHttpRequest|import\(|src\s*=", scripts[0][1])
    images = re.findall(r"<img [^>]*src='data:image/png;base64,", page)
    assert len(images) == len(figures)


def test_page_embeds_the_png_files_the_figure_step_wrote(page, pngs, tables, found):
    for name, path in pngs.items():
        src = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
        assert f"<figure id='fig-{name}'>" in page and f"src='{src}'" in page
    as_bytes = {name: path.read_bytes() for name, path in pngs.items()}
    assert render_report(tables, as_bytes, found, STUDY, PRETRAINED) == page
    svg = next(iter(pngs.values())).with_suffix(".svg")
    svg.write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    with pytest.raises(ValueError, match="not a PNG"):
        render_report(tables, {"lr_panels": svg}, found, STUDY, PRETRAINED)


def test_contents_anchors_and_sections_come_from_one_list(page):
    ids = [section.id for section in SECTIONS]
    nav = re.search(r"<nav>(.*?)</nav>", page).group(1)
    assert re.findall(r"<a href='#([^']+)'>", nav) == ids
    assert re.findall(r"<h2 id='([^']+)'>", page) == ids  # the fabricated study has something for every section
    assert len(set(ids)) == len(ids)


def test_every_string_from_the_study_is_escaped(tables, found):
    marked = {name: frame.replace("eurosat", "euro<sat>&'") if frame is not None and "dataset" in frame else frame
              for name, frame in tables.items()}
    study = {"name": "<b>bold</b>", "preset": "<i>preset</i>", "config": {"note": "<script>x</script>"}}
    sentences = [dict(f, sentence=f["sentence"] + " <em>raw</em>") for f in found]
    page = render_report(marked, {}, sentences, study, PRETRAINED)
    assert "euro<sat>" not in page and "euro&lt;sat&gt;&amp;&#39;" in page
    for raw in ("<b>bold</b>", "<i>preset</i>", "<script>x", "<em>raw</em>"):
        assert raw not in page
    assert page.count("<script>") == 1  # the page's own
    assert "&lt;b&gt;bold&lt;/b&gt;" in page and "&lt;script&gt;x&lt;/script&gt;" in page


def test_page_shows_the_diverged_run_as_such(page, tables):
    dataset, _, lr, seed = DIVERGED
    rows = re.findall(r'<tr class="diverged">(.*?)</tr>', page)
    assert len(rows) == 1
    assert f">{dataset}<" in rows[0] and f">{lr}<" in rows[0] and f">{seed}<" in rows[0]
    assert "DIVERGED at step 37" in rows[0]


def _row(page, *cells):
    """The rest of the first row whose text cells are ``cells`` (a cell may be a link to the glossary)."""
    pattern = "".join(rf'<td class="text">(?:<a href="#[^"]+">)?{re.escape(c)}(?:</a>)?</td>' for c in cells)
    rows = re.findall(rf"<tr[^>]*>{pattern}(.*?)</tr>", page)
    assert len(rows) >= 1, cells
    return rows[0]


def test_page_cell_means_leave_the_diverged_run_out(page, tables):
    dataset, method, lr, _ = DIVERGED
    cells = tables["cells"]
    cell = cells[(cells["dataset"] == dataset) & (cells["method"] == method) & (cells["lr"] == lr)].iloc[0]
    row = _row(page, dataset, "Full FT", lr, "2 / 3", "1 (seed 19)")
    assert f"{100 * cell['zs_top1_mean']:.1f} ± {100 * cell['zs_top1_sd']:.1f}" in row
    assert f"{100 * cell['best_select_acc_mean']:.1f} ± {100 * cell['best_select_acc_sd']:.1f}" in row


def test_page_states_the_findings(page, found):
    for finding in found:
        assert str(escape(finding["sentence"])) in page
    assert "LoRA kept" in page and "(pretrained: 60.0%" in page


def test_paper_section_only_for_the_paper_preset(page, tables, figures, found):
    assert "Does not apply" in page and "unit-test" in page
    paper = dict(
        tables,
        paper_cells=paper_comparison(tables["cells"], load_reference()),
        paper_methods=paper_comparison(tables["methods"], load_reference("methods")),
    )
    with_paper = render_report(paper, {}, found, {"name": "paper", "preset": "paper"}, PRETRAINED)
    assert "Does not apply" not in with_paper
    row = _row(with_paper, "eurosat", "Full FT", "1e-06", "zero-shot top-1 (%)")
    assert ">15.9<" in row  # the published 15.90% for that cell
    assert "published 60.2%" in with_paper
    assert "The authors' ablations" not in with_paper  # no ablation table given
    paper["paper_ablations"] = ablation_comparison(tables["cells"], load_reference("ablations"), {"full": True})
    with_ablations = render_report(paper, {}, found, {"name": "paper", "preset": "paper"}, PRETRAINED)
    assert "The authors' ablations" in with_ablations
    ablation_part = with_ablations.split("The authors' ablations", 1)[1]
    assert ">12.7<" in _row(ablation_part, "eurosat", "Full FT", "1e-05", "published", "zero-shot top-1 (%)")
    paper["paper_ablations"] = ablation_comparison(tables["cells"], load_reference("ablations"), {"full": False})
    other = render_report(paper, {}, found, {"name": "paper", "preset": "paper"}, PRETRAINED)
    other_row = _row(other.split("The authors' ablations", 1)[1], "eurosat", "Full FT", "1e-05",
                     "not the published definition", "zero-shot top-1 (%)")
    assert ">12.7<" in other_row and "±" not in other_row  # the published value alone: nothing set beside it


def test_tables_read_back_from_parquet_render_the_same(tables, found, tmp_path):
    """The report rule reads the aggregate rule's Parquet tables: dtypes must survive."""
    back = {}
    for name, frame in tables.items():
        write_table(frame, tmp_path / f"{name}.parquet")
        back[name] = read_table(tmp_path / f"{name}.parquet")
    assert findings(back["runs"], PRETRAINED) == found
    assert list(make_figures(back, PRETRAINED)) == [name for name in FIGURES if FIGURES[name].needs in MEASURED]
    assert render_report(back, {}, found, STUDY, PRETRAINED) == render_report(tables, {}, found, STUDY, PRETRAINED)


# ---------------------------------------------------------------------------------- browser


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail("CI is set but chromium is missing: install Debian's chromium (apt-get install chromium)")
    pytest.skip("chromium is not installed (allowed only outside CI)")


# Records, after the load event, how many images there are and how many failed to decode.
PROBE = """<script>window.addEventListener('load', () => {
  const images = Array.from(document.images);
  document.body.dataset.images = images.length;
  document.body.dataset.broken = images.filter(i => !(i.complete && i.naturalWidth > 0)).length;
  document.body.dataset.height = document.documentElement.scrollHeight;
  // the runs table: sorted by its seed column with a click, then filtered to one dataset
  const table = document.querySelector('#runs + details div.scroll table');
  const column = Array.from(table.tHead.rows[0].cells).findIndex(h => h.textContent.trim() === 'seed');
  table.tHead.rows[0].cells[column].click();
  const seeds = Array.from(table.tBodies[0].rows).map(r => parseFloat(r.cells[column].textContent));
  document.body.dataset.sorted = Number(seeds.every((v, i) => i === 0 || seeds[i - 1] <= v));
  const filter = table.parentNode.previousElementSibling;
  filter.value = 'pets';
  filter.dispatchEvent(new Event('input'));
  const rows = Array.from(table.tBodies[0].rows);
  document.body.dataset.shown = rows.filter(r => !r.hidden).length;
  document.body.dataset.pets = rows.filter(r => r.textContent.includes('pets')).length;
  document.body.dataset.all = rows.length;
});</script>"""


def _run_chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    command = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        *args,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def _console_messages(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def test_page_opens_in_headless_chromium(page, figures, tmp_path):
    binary = _chromium()
    index = tmp_path / "index.html"
    index.write_text(page)
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", PROBE + "</body>"))

    dom = _run_chromium(
        binary,
        tmp_path / "profile",
        "--window-size=1280,900",
        "--virtual-time-budget=10000",
        "--dump-dom",
        probe.as_uri(),
    )
    body = re.search(r"<body([^>]*)>", dom.stdout).group(1)
    attributes = dict(re.findall(r'data-(\w+)="(\d+)"', body))
    assert int(attributes["images"]) == len(figures) and int(attributes["broken"]) == 0, attributes
    assert _console_messages(dom.stderr) == []
    # the long runs table sorts by a click on a header and filters by a text, in the page
    assert attributes["sorted"] == "1" and attributes["shown"] == attributes["pets"] != attributes["all"], attributes

    screenshot = tmp_path / "report.png"
    height = min(int(attributes["height"]), 16000)
    shot = _run_chromium(
        binary,
        tmp_path / "profile",
        f"--window-size=1280,{height}",
        "--virtual-time-budget=10000",
        f"--screenshot={screenshot}",
        index.as_uri(),
    )
    assert _console_messages(shot.stderr) == []
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 50_000
    print(f"report screenshot: {screenshot}")


def test_the_published_analyses_render_even_on_a_study_too_small_for_them():
    histories, zeroshot, attention, cka = fabricate()
    keep = [(h["dataset"], h["method"], h["lr"], h["seed"]) for h in histories
            if h["seed"] == 7 and h["lr"] in ("1e-06", "5e-06")]  # two runs per method and dataset
    subset = [h for h in histories if (h["dataset"], h["method"], h["lr"], h["seed"]) in keep]
    scores = [run for run in zeroshot if tuple(run["tasks"][0][k] for k in ("dataset", "method", "lr", "seed")) in keep]
    tables = build_tables(subset, scores, attention, cka, compare_with_paper=True)
    html = render_report(tables, {}, findings(tables["runs"], PRETRAINED), STUDY, PRETRAINED)
    assert "id='relations'" in html and "Not measured" in html  # no sensitivity tables given: said so
    assert "Correlations within each dataset" in html


def test_the_report_shows_the_probe_sensitivity_and_cka_relations():
    from fabricated_study import fabricate_sensitivity

    study = fabricate()
    tables = build_tables(*study, sensitivity=fabricate_sensitivity(study[2]))
    found = findings(tables["runs"], PRETRAINED, sensitivity=tables["probe_sensitivity"])
    html = render_report(tables, {}, found, STUDY, PRETRAINED)
    summary = sensitivity_summary(tables["probe_sensitivity"]).set_index("dataset")
    assert f"{summary.loc['pets', 'n_explained']} of {summary.loc['pets', 'n_judged']} runs" in html
    assert "The published pairing (off by one)" in html and "data-kind='probe_sensitivity'" in html


def test_plain_methods_keep_their_colours_and_every_variant_gets_its_own():
    from clipdrift.model.methods import METHODS
    from clipdrift.report.plotting import method_styles

    methods = ["full", "lora", *(f"full-v{k}" for k in range(12)), "mine", "yours"]
    styles = method_styles(methods)
    assert [styles[m].color for m in ("full", "lora")] == [METHODS["full"].colour, METHODS["lora"].colour]
    assert len({(styles[m].color, styles[m].marker) for m in methods}) == len(methods)
    assert len({styles[m].color for m in methods if m.startswith("full-")}) == 12  # a shade each


def test_the_suite_figure_says_so_when_retention_is_undefined(tables):
    from clipdrift.report.suite_figures import suite_retention

    zeroshot = tables["zeroshot"].assign(retention=float("nan"), pretrained_top1=0.0)
    figure = suite_retention(zeroshot)
    assert "Retention is undefined" in figure.axes[0].texts[0].get_text()
    drawn = suite_retention(tables["zeroshot"])
    assert len(drawn.axes) == tables["zeroshot"]["dataset"].nunique() * tables["zeroshot"]["task"].nunique()


def test_a_metric_and_a_figure_added_to_their_registries_alone_are_tabled_tested_drawn_and_reported(monkeypatch, tmp_path):
    """One entry each: a metric the runs table already computes but no report table showed
    (``final_select_acc``), and a figure with its drawing. (A method: tests/test_adapters.py.)"""
    from matplotlib.figure import Figure as MplFigure

    from clipdrift.analysis import names as metric_names
    from clipdrift.report import figures as figures_module
    from clipdrift.report import names as figure_names

    metric = metric_names.Metric("last-epoch selection accuracy", "last select acc. (%)", "higher is better",
                                 shown=("cells", "runs"), compared=True, interval=True)
    monkeypatch.setitem(metric_names.METRICS, "final_select_acc", metric)

    def throwaway(runs, pretrained):
        figure = MplFigure(figsize=(3, 2))
        figure.add_subplot().plot(runs["lr_value"].to_numpy(), runs["final_select_acc"].to_numpy(), ".")
        return figure

    monkeypatch.setattr(figures_module, "throwaway", throwaway, raising=False)
    monkeypatch.setitem(figure_names.FIGURES, "throwaway", figure_names.Figure(
        "A throwaway figure", "Its caption, shown under it.", draw="throwaway", reads=("runs", "pretrained")))

    tables = build_tables(*fabricate(), pretrained_zeroshot=[PRETRAINED])
    assert "final_select_acc_ci_low" in tables["cells"]  # its interval
    assert "final_select_acc" in set(tables["stats"]["metric"])  # tested between the methods per cell
    assert "throwaway" in figure_names.study_figures(curves=False, trajectories=False, traced=False)
    drawn = make_figures(tables, PRETRAINED)
    assert list(drawn)[-1] == "throwaway"
    write_figure(drawn["throwaway"], tmp_path / "throwaway.png")
    page = render_report(tables, {"throwaway": tmp_path / "throwaway.png"}, findings(tables["runs"], PRETRAINED),
                         STUDY, PRETRAINED)
    assert "A throwaway figure" in page and "Its caption, shown under it." in page
    assert page.count(str(escape(metric.label))) >= 3  # cells, methods and runs tables


# ------------------------------------------------------------------ a study of many methods


def _ablation_methods() -> list[str]:
    """The method names of the ablation preset, read from it."""
    import yaml

    entries = yaml.safe_load((ROOT / "configs/ablations.yaml").read_text())["methods"]
    return [entry if isinstance(entry, str) else entry["name"] for entry in entries]


@pytest.fixture(scope="module")
def many_methods():
    from fabricated_study import fabricate_curves, fabricate_traces

    methods = _ablation_methods()
    study = fabricate(methods)
    weights, sweep, overlap = fabricate_weights(study[0])
    runs = build_tables(*study, pretrained_zeroshot=[PRETRAINED])["runs"]
    tables = build_tables(*study, pretrained_zeroshot=[PRETRAINED], weights=weights, intruder_sweep=sweep,
                          weight_overlap=overlap, intervention=fabricate_intervention(runs))
    tables["curves"], tables["traces"] = fabricate_curves(tables["runs"]), fabricate_traces(tables["runs"])
    return methods, tables, make_figures(tables, PRETRAINED)


def _outside_the_canvas(figure) -> list[str]:
    """Every legend, axis label and title of ``figure`` that does not lie inside its canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure).draw()
    renderer, canvas_box = figure.canvas.get_renderer(), figure.bbox
    artists = [*figure.legends, *(ax.get_legend() for ax in figure.axes)]
    artists += [text for ax in figure.axes if ax.get_visible() for text in (ax.xaxis.label, ax.yaxis.label, ax.title)]
    outside = []
    for artist in artists:
        if artist is None or not artist.get_visible() or getattr(artist, "get_text", lambda: "x")() == "":
            continue
        box = artist.get_window_extent(renderer)
        if box.x0 < -0.5 or box.y0 < -0.5 or box.x1 > canvas_box.x1 + 0.5 or box.y1 > canvas_box.y1 + 0.5:
            outside.append(f"{type(artist).__name__} {getattr(artist, 'get_text', str)()!r} at {box.bounds}")
    return outside


def test_a_fourteen_method_study_draws_every_figure_with_its_legend_and_labels_inside_the_canvas(many_methods):
    methods, _, figures = many_methods
    assert len(methods) == 14
    assert set(figures) == {name for name in FIGURES if FIGURES[name].needs != "trajectories"} | {"trajectories"}
    for name, figure in figures.items():
        assert _outside_the_canvas(figure) == [], name


def test_a_figure_that_would_not_fit_is_caught():
    """The check above sees a legend wider than its figure (as the old drift-vs-zero-shot legend was)."""
    from matplotlib.figure import Figure as MplFigure

    figure = MplFigure(figsize=(3, 2), layout="constrained")
    figure.add_subplot().plot([0, 1], [0, 1], label="a label far too long for a three-inch-wide figure to hold")
    figure.legend(loc="outside lower center", ncols=3)
    assert _outside_the_canvas(figure)


def test_many_methods_are_drawn_as_small_multiples_by_family_with_the_references_in_every_panel(many_methods):
    from clipdrift.report.plotting import method_groups

    methods, _, figures = many_methods
    groups = method_groups(methods)
    assert [title for title, _ in groups] == ["Full FT and its variants", "LoRA and its variants"]
    assert all({"full", "lora"} <= set(members) for _, members in groups)
    assert sorted(m for _, members in groups for m in members if m not in ("full", "lora")) == sorted(
        set(methods) - {"full", "lora"})
    titles = [ax.get_title() for ax in figures["drift_vs_zeroshot"].axes if ax.get_visible()]
    assert len(titles) == 2 * 2 and sum("LoRA and its variants" in t for t in titles) == 2  # 2 datasets × 2 families
    grid = figures["cka_profiles"].axes[0].get_gridspec()  # 2 datasets × 14 methods, wrapped at four a row
    assert (grid.nrows, grid.ncols) == (7, 4) and sum(ax.get_visible() for ax in figures["cka_profiles"].axes) == 28


def test_every_method_of_a_study_has_a_look_of_its_own_the_same_in_every_figure(many_methods):
    from matplotlib.colors import to_hex

    from clipdrift.model.methods import METHODS
    from clipdrift.report.plotting import method_styles

    methods, _, figures = many_methods
    styles = method_styles(methods)
    assert len({(style.color, style.marker) for style in styles.values()}) == len(methods)
    assert styles["full"].color == METHODS["full"].colour and styles["lora"].color == METHODS["lora"].colour
    assert styles["full"].linewidth > max(styles[m].linewidth for m in methods if m not in METHODS)  # bold references
    for name in ("lr_panels", "trajectories", "collapse_traces"):
        drawn = {line.get_label(): (line.get_color(), line.get_marker()) for ax in figures[name].axes
                 for line in ax.get_lines() if line.get_label() in {s.label for s in styles.values()}}
        assert drawn and all(drawn[s.label][1] == s.marker or name == "collapse_traces"
                             for s in styles.values() if s.label in drawn), name
        if name != "collapse_traces":  # the legend's line is the method's own colour (the highest rate's shade)
            assert all(to_hex(drawn[s.label][0]) == to_hex(s.color) for s in styles.values()), name


def test_one_method_order_everywhere_methods_then_their_variants_in_natural_order(many_methods, tmp_path):
    from clipdrift.analysis.tables import method_order

    methods, tables, figures = many_methods
    order = method_order(methods)
    assert order[:5] == ["full", "full-apr-0.01", "full-apr-0.1", "full-apr-1", "full-floor-0.01"]
    assert order[order.index("lora"):] == ["lora", "lora-qkvo", "lora-r4", "lora-r16"]
    for name in ("cells", "methods", "stats", "zeroshot"):
        seen = list(dict.fromkeys(tables[name]["method"] if name != "stats" else tables[name]["method_b"]))
        assert seen == [m for m in order if m in seen], name
    labels = [text.get_text() for text in figures["lr_panels"].legends[0].get_texts()]
    assert labels[:len(order)] == [method_label(m) for m in order]
    assert set(labels[len(order):]) == {"pretrained", "diverged run (left out)"}


def test_a_table_too_large_for_the_page_links_to_its_file_beside_the_report():
    import pandas as pd

    from clipdrift.report.views import INLINE_CSV_BYTES, downloads_view

    small, large = pd.DataFrame({"x": [1, 2]}), pd.DataFrame({"x": range(INLINE_CSV_BYTES // 4)})
    links = {link["name"]: link for link in downloads_view({"small": small, "weights": large})["links"]}
    assert links["small"]["inline"] and links["small"]["href"].startswith("data:text/csv;base64,")
    assert not links["weights"]["inline"] and links["weights"]["href"] == "../tables/weights.csv"


def test_a_study_of_one_run_per_dataset_has_no_overlap_figure():
    from clipdrift.report.names import study_figures

    both = study_figures(curves=False, trajectories=False, traced=False, weights=True, runs_per_dataset=2)
    one = study_figures(curves=False, trajectories=False, traced=False, weights=True, runs_per_dataset=1)
    assert "overlap_matrix" in both and set(both) - set(one) == {"overlap_matrix"}
