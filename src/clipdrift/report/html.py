"""The study report as ONE self-contained HTML page: findings, tables, figures, downloads.

Figures are embedded as base64 PNG, tables as HTML, every table also as a CSV ``data:`` link,
the style sheet inline; the page loads nothing from anywhere and runs no script. The page is a
pure function of its inputs (no timestamps), so an unchanged study renders an unchanged page.
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import math
from collections.abc import Callable, Iterable

import pandas as pd
from matplotlib.figure import Figure

import clipdrift
from clipdrift.analysis.findings import pct, pretrained_top1, small
from clipdrift.analysis.reference import PUBLISHED_PRETRAINED_ZEROSHOT
from clipdrift.analysis.sensitivity import sensitivity_summary
from clipdrift.analysis.tables import ACCURACY_METRICS, method_label
from clipdrift.report.names import CURVE_FIGURES, FIGURES, TRAJECTORY_FIGURES

FIGURE_CAPTIONS = {
    "lr_panels": "Per dataset (rows), against the matched learning rate: best selection accuracy, drift of the "
    "layer-mean CLS-attention entropy (% of the pretrained value) and zero-shot top-1. Lines are cell "
    "means, bands ± 1 SD over seeds, dots single seeds; the dashed line is the pretrained model's "
    "zero-shot accuracy; red crosses mark diverged runs, which no mean includes.",
    "layer_entropy_drift": "Per-layer drift of the CLS-attention entropy (% of the pretrained value), mean over "
    "seeds, for every method × learning rate. One colour scale for all panels, centred at zero.",
    "layer_erf_drift": "Per-layer drift of ERF@0.95 (the smallest fraction of patches holding 95% of the CLS "
    "attention), mean over seeds, as above.",
    "drift_vs_zeroshot": "Every non-diverged run: layer-mean entropy drift against zero-shot top-1. Colour: "
    "method; marker: learning rate. Titles give Pearson r with its 95% interval, Spearman ρ "
    "and n, pooled over both methods within the dataset.",
    "cka_profiles": "Linear CKA between the pretrained and fine-tuned CLS hidden states per layer (1 = "
    "unchanged representation), mean ± SD over seeds; darker lines are higher learning rates.",
    "frontier": "The robustness frontier: per dataset, each (method, learning rate)'s weight interpolation from the "
    "pretrained tower (alpha 0) to the run's final weights (alpha 1, filled marker): in-domain test accuracy "
    "against held-out zero-shot top-1, mean over seeds; darker lines are higher learning rates; the star is the "
    "pretrained model (its in-domain zero-shot accuracy). A curve above another at the same in-domain accuracy keeps "
    "more transfer for what it learns.",
    "trajectories": "Per kept epoch, mean over seeds: held-out zero-shot top-1 (dashed: the pretrained model; dotted: "
    "half of it) and the drift of the layer-mean CLS-attention entropy, per method × learning rate (darker = higher).",
    "indomain_vs_zeroshot": "In-domain accuracy against zero-shot accuracy of the same final weights, cell means "
    "± SD over seeds; each method's learning rates are joined in order and labelled. The "
    "pretrained model is the origin point (star) where its in-domain zero-shot accuracy is "
    "known, else the dashed line.",
}

FINDING_GROUPS = (
    ("The effect", ("headline", "highest_rate", "average_transfer")),
    ("Regimes that averages hide", ("ranking_flip", "underfit", "best_rate")),
    ("Beyond the end points: interpolation and trajectories", ("frontier", "trajectory")),
    ("Caveats", ("diverged", "permutation_power", "probe_sensitivity")),
)

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Liberation Sans",sans-serif;margin:0 auto;
max-width:1280px;padding:1.5rem 2rem;color:#222;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{border-bottom:2px solid #ddd;padding-bottom:.2rem;margin-top:2.2rem}
h3{margin-bottom:.3rem}.muted{color:#666;font-size:.9rem}
table{border-collapse:collapse;font-size:.82rem;margin:.6rem 0;font-variant-numeric:tabular-nums}
th,td{border:1px solid #ddd;padding:.25rem .5rem;text-align:right;vertical-align:top}
th{background:#f3f3f3;position:sticky;top:0}td.text,th.text{text-align:left}td.text{white-space:nowrap}
tr.diverged td{background:#fde8e8;color:#8a1c1c}tr.flag td{background:#fff6dd}
.scroll{overflow-x:auto;max-width:100%}figure{margin:1.2rem 0}figure img{max-width:100%;height:auto;
border:1px solid #eee}figcaption{font-size:.88rem;color:#444;max-width:75rem}
ul.findings li{margin:.35rem 0}.notapplicable{background:#f6f6f6;padding:.6rem 1rem;border-left:4px solid #bbb}
details summary{cursor:pointer;font-weight:600;margin:.6rem 0}a.download{margin-right:1rem}
"""


# ----------------------------------------------------------------------------- formatting


def _is_missing(value) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def format_value(metric: str, value, signed: bool = False) -> str:
    """One number as the report shows it: accuracies in percent, drifts signed, CKA to 3 places."""
    if _is_missing(value):
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
    if _is_missing(mean):
        return "–"
    spread = "" if _is_missing(sd) else f" ± {_spread(metric, sd)}"
    return format_value(metric, mean) + spread


def _summary(row: pd.Series, metric: str) -> str:
    """ "mean ± SD [low, high]" for a metric of a cell row."""
    text = mean_sd(metric, row.get(f"{metric}_mean"), row.get(f"{metric}_sd"))
    low, high = row.get(f"{metric}_ci_low"), row.get(f"{metric}_ci_high")
    if text != "–" and not _is_missing(low):
        text += f" [{format_value(metric, low)}, {format_value(metric, high)}]"
    return text


def _p(value) -> str:
    if _is_missing(value):
        return "–"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def _table(
    columns: list[str], rows: Iterable[list[str]], row_classes: Iterable[str] | None = None, text_columns: int = 0
) -> str:
    """An HTML table of already formatted cells; the first ``text_columns`` are left-aligned."""
    head = "".join(
        f'<th class="text">{html.escape(c)}</th>' if i < text_columns else f"<th>{html.escape(c)}</th>"
        for i, c in enumerate(columns)
    )
    body = []
    for row, cls in zip(rows, row_classes or itertools.repeat("")):
        cells = "".join(
            f'<td class="text">{html.escape(str(v))}</td>' if i < text_columns else f"<td>{html.escape(str(v))}</td>"
            for i, v in enumerate(row)
        )
        body.append(f'<tr class="{cls}">{cells}</tr>' if cls else f"<tr>{cells}</tr>")
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


# ------------------------------------------------------------------------------ sections


METRIC_LABELS = {
    "best_select_acc": "selection acc. (%)",
    "final_test_acc": "test acc. (%)",
    "zs_top1": "zero-shot top-1 (%)",
    "drift_entropy_pct": "entropy drift (%)",
    "drift_erf95_pct": "ERF drift (%)",
    "cka_mean": "mean CKA",
}

CELL_VIEW = tuple((label, metric) for metric, label in METRIC_LABELS.items())


def cells_section(cells: pd.DataFrame) -> str:
    view = [(label, metric) for label, metric in CELL_VIEW if f"{metric}_mean" in cells]
    columns = ["dataset", "method", "lr", "seeds used / run", "diverged (left out)"] + [label for label, _ in view]
    rows, classes = [], []
    for _, row in cells.iterrows():
        rows.append(
            [
                row["dataset"],
                method_label(row["method"]),
                row["lr"],
                f"{row['n_runs'] - row['n_diverged']} / {row['n_runs']}",
                f"{row['n_diverged']} (seed {row['diverged_seeds']})" if row["n_diverged"] else "0",
            ]
            + [_summary(row, metric) for _, metric in view]
        )
        classes.append("flag" if row["n_diverged"] else "")
    note = (
        "<p class='muted'>Mean ± SD over the seeds that did not diverge [95% percentile bootstrap interval of "
        "the mean; with a handful of seeds it is optimistic, read it with n]. Accuracies in percent, drifts in % of "
        "the pretrained value.</p>"
    )
    return (
        "<h2 id='cells'>Cells: dataset × method × learning rate</h2>"
        + note
        + _table(columns, rows, classes, text_columns=5)
    )


def methods_section(methods: pd.DataFrame) -> str:
    view = [(label, metric) for label, metric in CELL_VIEW if f"{metric}_mean" in methods]
    columns = ["dataset", "method", "learning rates", "runs (diverged)"] + [label for label, _ in view]
    rows = []
    for _, row in methods.iterrows():
        values = [mean_sd(m, row[f"{m}_mean"], row[f"{m}_sd_across_lr"]) for _, m in view]
        rows.append(
            [row["dataset"], method_label(row["method"]), row["lrs"], f"{row['n_runs']} ({row['n_diverged']})"] + values
        )
    note = (
        "<p class='muted'>Mean of the cell means over the learning rates (the published study's average) ± SD "
        "<em>across rates</em> — not a seed spread. These averages are what the findings above warn about.</p>"
    )
    return "<h2 id='methods'>Methods averaged over learning rates</h2>" + note + _table(columns, rows, text_columns=3)


def _arm(metric: str, mean, sd, n) -> str:
    return f"{mean_sd(metric, mean, sd)} ({n})"


def _yes_no(value) -> str:
    return "–" if _is_missing(value) else ("yes" if value else "no")


def stats_section(stats: pd.DataFrame) -> str:
    if stats is None or stats.empty:
        return "<h2 id='stats'>Method comparisons</h2><p>No learning rate has two methods: nothing to compare.</p>"
    columns = ["dataset", "lr", "metric", "comparison (b vs a)", "a: mean ± SD (n)", "b: mean ± SD (n)",
               "b − a [95% CI]", "Welch t (df)", "p Welch", "p Welch, Holm", "p permutation", "p perm., Holm"]
    rows, classes = [], []
    for _, r in stats.iterrows():
        m = r["metric"]
        diff = (
            f"{format_value(m, r['diff'], True)} "
            f"[{format_value(m, r['diff_ci_low'], True)}, {format_value(m, r['diff_ci_high'], True)}]"
        )
        perm = _p(r["p_perm"]) + ("" if r["perm_exact"] else " (sampled)")
        rows.append([
            r["dataset"], r["lr"], METRIC_LABELS.get(m, m),
            f"{method_label(r['method_b'])} vs {method_label(r['method_a'])}",
            _arm(m, r["mean_a"], r["sd_a"], r["n_a"]), _arm(m, r["mean_b"], r["sd_b"], r["n_b"]), diff,
            "–" if _is_missing(r["t"]) else f"{r['t']:.2f} ({r['df']:.1f})",
            _p(r["p_welch"]), _p(r["p_welch_holm"]), perm, _p(r["p_perm_holm"]),
        ])
        classes.append("flag" if r["reject_p_welch_holm"] else "")
    pairs = "; ".join(f"{method_label(b)} vs {method_label(a)}"
                      for a, b in stats[["method_a", "method_b"]].drop_duplicates().itertuples(index=False))
    note = (
        f"<p class='muted'>Per dataset and learning rate, every pair of methods ({html.escape(pairs)}) over seeds "
        "(diverged runs left out). Welch's t-test with its 95% interval of the difference b − a; a two-sided "
        "permutation test of the mean difference, exact over all relabellings of the seeds. Holm's correction runs "
        "within each metric across the whole grid and all pairs. Highlighted: Holm-adjusted Welch p &lt; 0.05. "
        "Accuracy differences in percentage points.</p>"
    )
    return (
        "<h2 id='stats'>Method comparisons at matched learning rates</h2>"
        + note
        + _table(columns, rows, classes, text_columns=4)
    )


def correlations_section(correlations: pd.DataFrame) -> str:
    if correlations is None or correlations.empty:
        return ""
    columns = ["dataset", "x", "y", "n", "Pearson r [95% CI]", "p", "Spearman ρ", "p"]
    rows = [
        [
            r["dataset"],
            METRIC_LABELS.get(r["x"], r["x"]),
            METRIC_LABELS.get(r["y"], r["y"]),
            r["n"],
            "–"
            if _is_missing(r["pearson_r"])
            else f"{r['pearson_r']:.2f}"
            + ("" if _is_missing(r["pearson_ci_low"]) else f" [{r['pearson_ci_low']:.2f}, {r['pearson_ci_high']:.2f}]"),
            _p(r["pearson_p"]),
            "–" if _is_missing(r["spearman_rho"]) else f"{r['spearman_rho']:.2f}",
            _p(r["spearman_p"]),
        ]
        for _, r in correlations.iterrows()
    ]
    note = (
        "<p class='muted'>Across all non-diverged runs of a dataset (both methods pooled); Fisher-z interval for r.</p>"
    )
    return "<h2 id='correlations'>Correlations</h2>" + note + _table(columns, rows, text_columns=3)


def _r_with_p(row: pd.Series) -> str:
    if _is_missing(row["r"]):
        return "–"
    return f"{row['r']:.2f} (p {_p(row['p_perm'])}{'' if row['perm_exact'] else ', sampled'})"


def _relation_rows(frame: pd.DataFrame) -> list[list[str]]:
    rows = []
    for (dataset, layer), group in frame.groupby(["dataset", "layer"], sort=True):
        by_method = group.set_index("method")
        cells = [_r_with_p(by_method.loc[m]) if m in by_method.index else "–" for m in ("pearson", "spearman")]
        rows.append([dataset, "all (run means)" if layer < 0 else str(layer), int(group["n"].max()), *cells])
    return rows


def relations_section(relations: pd.DataFrame) -> str:
    title = "<h2 id='relations'>CKA and attention drift</h2>"
    if relations is None or relations.empty:
        return title + "<p class='notapplicable'>Not computed: the study has no CKA or no attention tables.</p>"
    columns = ["dataset", "layer", "n runs", "Pearson r (p)", "Spearman ρ (p)"]
    note = (
        "<p class='muted'>Does the representation drift track the attention drift? Over the non-diverged runs of "
        "each dataset: the run's mean linear CKA of the CLS token over the blocks against its layer-mean "
        "CLS-attention entropy drift, then layer by layer: block <em>i</em>'s entropy drift against the CKA of "
        "block <em>i</em>'s own output (the same layer on both sides). Two-sided permutation p-values over "
        "re-pairings of the runs (exact where n! is small, else 20,000 random re-pairings).</p>"
    )
    same = relations[relations["pairing"].isin(["mean_over_layers", "same_layer"])]
    offset = relations[relations["pairing"] == "published_offset"]
    parts = [title, note, _table(columns, _relation_rows(same), text_columns=2)]
    if not offset.empty:
        parts.append(
            "<details><summary>The published pairing (off by one)</summary><p class='muted'>The published code "
            "paired CKA entry <em>i</em>, counting the embedding output as entry 0, with attention layer "
            "<em>i</em>: each block's attention with the <em>previous</em> block's output (layer 0 then has no "
            "defined CKA partner). Shown for comparison only.</p>"
            + _table(columns, _relation_rows(offset), text_columns=2) + "</details>"
        )
    return "".join(parts)


SENSITIVITY_VIEW = (("entropy", "mean CLS-attention entropy"), ("rollout_entropy", "rollout entropy"))


def sensitivity_section(table: pd.DataFrame) -> str:
    title = "<h2 id='sensitivity'>Probe-subset sensitivity</h2>"
    if table is None or table.empty:
        return title + ("<p class='notapplicable'>Not measured: metrics.probe_sensitivity.enabled is false for this "
                        "study.</p>")
    columns = ["dataset", "statistic", "probe subsets", "pretrained CV (%)", "fine-tuned CV, median (%)",
               "|drift| measured, median (%)", "drift SD across subsets, median", "drift the probe could explain"]
    rows = []
    for metric, label in SENSITIVITY_VIEW:
        for r in sensitivity_summary(table, metric).itertuples():
            rows.append([r.dataset, label, r.n_probes, small(r.pretrained_cv_pct), small(r.median_finetuned_cv_pct),
                         small(r.median_abs_drift), small(r.median_drift_sd), f"{r.n_explained} of {r.n_judged} runs"])
    note = (
        "<p class='muted'>The drift is measured on one fixed probe subset. Here the same statistics are measured on "
        "probe subsets of the same size drawn with other seeds: the coefficient of variation (SD / mean) of the "
        "12-layer mean statistic across subsets, and the drift recomputed on every subset (fine-tuned vs pretrained "
        "on the same images). A run's drift counts as one the probe choice alone could explain when it lies within "
        "2 SD (across subsets) of zero.</p>"
    )
    return title + note + _table(columns, rows, text_columns=2)


def _paper_rows(frame: pd.DataFrame, keys: list[str]) -> tuple[list[list[str]], list[str]]:
    rows, classes = [], []
    for _, r in frame.iterrows():
        m = r["metric"]
        rows.append(
            [r[k] if k != "method" else method_label(r[k]) for k in keys]
            + [
                METRIC_LABELS.get(m, m),
                format_value(m, r["published"]),
                mean_sd(m, r["reproduced_mean"], r["reproduced_sd"]),
                r["reproduced_n"],
                format_value(m, r["difference"], True),
                _yes_no(r["within_sd"]),
                _yes_no(r["within_range"]),
            ]
        )
        classes.append("" if _is_missing(r["within_sd"]) or r["within_sd"] else "flag")
    return rows, classes


def paper_section(tables: dict, study: dict, pretrained) -> str:
    title = "<h2 id='paper'>Comparison with the published study</h2>"
    if "paper_cells" not in tables or tables["paper_cells"] is None:
        preset = study.get("preset") or study.get("name") or "this study"
        return title + (
            f"<p class='notapplicable'>Does not apply: this study ({html.escape(str(preset))}) is not the "
            "published paper matrix, so its numbers are not comparable with the published ones.</p>"
        )
    note = (
        "<p class='muted'>Published values in the report's units (accuracies in %, drifts in % of pretrained). "
        "Like with like: the reproduced SDs here are population SDs (ddof 0), as the published ones are; the rest "
        "of this report shows sample SDs. <em>within SD</em>: the published value lies within one seed SD of the "
        "reproduced mean; <em>within range</em>: within the reproduced seeds' min–max. Highlighted: outside one "
        "SD.</p>"
    )
    parts = [title, note]
    names = study.get("zeroshot_class_names")
    if names:
        parts.append(f"<p>Zero-shot prompts used the <strong>{html.escape(str(names))}</strong> class names"
                     + (" (the published spellings: underscores kept, “cra” for crab)." if names == "published"
                        else " (not the published spellings: expect small differences in zero-shot accuracy).")
                     + "</p>")
    reference = pretrained_top1(pretrained)
    if not math.isnan(reference):
        parts.append(
            f"<p>Pretrained zero-shot top-1: reproduced {pct(reference)}, published "
            f"{pct(PUBLISHED_PRETRAINED_ZEROSHOT)} "
            f"(difference {100 * (reference - PUBLISHED_PRETRAINED_ZEROSHOT):+.2f} points).</p>"
        )
    columns = ["metric", "published", "reproduced mean ± SD", "n", "difference", "within SD", "within range"]
    rows, classes = _paper_rows(tables["paper_cells"], ["dataset", "method", "lr"])
    parts += ["<h3>Per cell</h3>", _table(["dataset", "method", "lr"] + columns, rows, classes, text_columns=4)]
    if tables.get("paper_methods") is not None:
        rows, _ = _paper_rows(tables["paper_methods"], ["dataset", "method"])
        parts += [
            "<h3>Averaged over the learning rates (n = rates)</h3>",
            _table(["dataset", "method"] + columns, rows, text_columns=3),
        ]
    if tables.get("paper_correlations") is not None:
        parts += ["<h3>Correlations within each dataset (Pearson r over its runs)</h3>",
                  paper_correlations_table(tables["paper_correlations"])]
    return "".join(parts)


def paper_correlations_table(frame: pd.DataFrame) -> str:
    columns = ["dataset", "x", "y", "published r (n)", "measured r [95% CI]", "n", "difference", "published inside CI"]
    rows, classes = [], []
    for _, r in frame.iterrows():
        measured = "–" if _is_missing(r["measured_r"]) else f"{r['measured_r']:.2f}" + (
            "" if _is_missing(r["pearson_ci_low"]) else f" [{r['pearson_ci_low']:.2f}, {r['pearson_ci_high']:.2f}]")
        rows.append([r["dataset"], METRIC_LABELS.get(r["x"], r["x"]), METRIC_LABELS.get(r["y"], r["y"]),
                     f"{r['published_r']:.2f} ({r['published_n']})", measured, r["measured_n"],
                     "–" if _is_missing(r["difference"]) else f"{r['difference']:+.2f}", _yes_no(r["within_ci"])])
        classes.append("" if _is_missing(r["within_ci"]) or r["within_ci"] else "flag")
    return _table(columns, rows, classes, text_columns=3)


RUN_VIEW = (
    ("best sel. acc.", "best_select_acc"),
    ("final test acc.", "final_test_acc"),
    ("zs top-1", "zs_top1"),
    ("zs top-5", "zs_top5"),
    ("zs balanced", "zs_balanced"),
    ("entropy drift", "drift_entropy_pct"),
    ("ERF drift", "drift_erf95_pct"),
    ("Gini drift", "drift_gini_pct"),
    ("head div. drift", "drift_head_diversity_pct"),
    ("rollout entropy drift", "drift_rollout_entropy_pct"),
    ("p2p entropy drift", "drift_p2p_entropy_pct"),
    ("mean CKA", "cka_mean"),
    ("trainable params", "trainable_params"),
    ("train time (s)", "train_time_s"),
    ("images/s", "images_per_s"),
)


def runs_section(runs: pd.DataFrame) -> str:
    view = [(label, metric) for label, metric in RUN_VIEW if metric in runs]
    columns = ["dataset", "method", "lr", "seed", "status"] + [label for label, _ in view]
    rows, classes = [], []
    for _, r in runs.iterrows():
        status = r["status"]
        if r["diverged"]:
            step = r.get("diverged_at_step")
            status = "DIVERGED" + ("" if _is_missing(step) else f" at step {int(step)}") + " — left out of means"
        rows.append(
            [r["dataset"], method_label(r["method"]), r["lr"], r["seed"], status]
            + [format_value(metric, r[metric]) for _, metric in view]
        )
        classes.append("diverged" if r["diverged"] else "")
    n_bad = int(runs["diverged"].sum())
    return (
        f"<h2 id='runs'>All runs</h2><details{' open' if n_bad else ''}><summary>{len(runs)} runs, {n_bad} diverged "
        "(highlighted)</summary><p class='muted'>Accuracies in %, drifts in % of the pretrained value.</p>"
        + _table(columns, rows, classes, text_columns=5)
        + "</details>"
    )


def findings_section(findings: list[dict]) -> str:
    parts = ["<h2 id='findings'>Findings</h2>"]
    for title, kinds in FINDING_GROUPS:
        items = [f for f in findings if f["kind"] in kinds]
        if items:
            parts.append(
                f"<h3>{title}</h3><ul class='findings'>"
                + "".join(f"<li data-kind='{html.escape(f['kind'])}'>{html.escape(f['sentence'])}</li>" for f in items)
                + "</ul>"
            )
    other = [f for f in findings if not any(f["kind"] in kinds for _, kinds in FINDING_GROUPS)]
    if other:
        parts.append(
            "<ul class='findings'>" + "".join(f"<li>{html.escape(f['sentence'])}</li>" for f in other) + "</ul>"
        )
    return "".join(parts)


def figure_png(figure: Figure, dpi: int = 110) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def figures_section(figures: dict[str, Figure]) -> str:
    parts = ["<h2 id='figures'>Figures</h2>"]
    for name, figure in figures.items():
        title = {**FIGURES, **CURVE_FIGURES, **TRAJECTORY_FIGURES}.get(name, name.replace("_", " "))
        data = base64.b64encode(figure_png(figure)).decode("ascii")
        parts.append(
            f"<figure id='fig-{html.escape(name)}'><h3>{html.escape(title)}</h3>"
            f"<img alt='{html.escape(title)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{html.escape(FIGURE_CAPTIONS.get(name, ''))}</figcaption></figure>"
        )
    return "".join(parts)


def downloads_section(tables: dict[str, pd.DataFrame]) -> str:
    links = []
    for name, frame in tables.items():
        if frame is None:
            continue
        data = base64.b64encode(frame.to_csv(index=False).encode()).decode("ascii")
        links.append(
            f"<a class='download' download='{html.escape(name)}.csv' href='data:text/csv;base64,{data}'>"
            f"{html.escape(name)}.csv</a>"
        )
    return "<h2 id='downloads'>Tables as CSV</h2><p>" + "".join(links) + "</p>"


def study_section(study: dict, pretrained) -> str:
    """The study's settings as a two-column table; nested settings (a whole config) flattened
    to dotted keys so every value is one readable row."""
    rows = [[key, value] for key, value in _flatten(study)]
    reference = pretrained_top1(pretrained)
    if not math.isnan(reference):
        task = pretrained.get("task", "zero-shot task") if isinstance(pretrained, dict) else "zero-shot task"
        rows.append(["pretrained zero-shot top-1", f"{pct(reference)} on {task}"])
    return "<h2 id='study'>Study</h2>" + _table(["setting", "value"], rows, text_columns=2) if rows else ""


def _flatten(settings: dict, prefix: str = "") -> list[tuple[str, str]]:
    rows = []
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            rows += _flatten(value, f"{name}.")
        else:
            rows.append((name, _plain(value)))
    return rows


def _plain(value) -> str:
    if isinstance(value, (list, tuple)):
        return "; ".join(_plain(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={_plain(v)}" for k, v in value.items()) or "{}"
    return str(value)


SECTIONS: tuple[tuple[str, str], ...] = (
    ("findings", "Findings"),
    ("figures", "Figures"),
    ("cells", "Cells"),
    ("stats", "Comparisons"),
    ("correlations", "Correlations"),
    ("relations", "CKA vs drift"),
    ("sensitivity", "Probe sensitivity"),
    ("methods", "Method averages"),
    ("paper", "Published study"),
    ("runs", "All runs"),
    ("downloads", "CSV"),
    ("study", "Study"),
)


def render_report(
    tables: dict[str, pd.DataFrame], figures: dict[str, Figure], findings: list[dict], study: dict, pretrained=None
) -> str:
    """The whole report as one HTML string.

    ``tables``: the dict of :func:`clipdrift.analysis.build_tables` (or read back from Parquet);
    ``figures``: :func:`clipdrift.report.figures.make_figures`; ``findings``:
    :func:`clipdrift.analysis.findings`; ``study``: settings to show (name, preset, datasets,
    rates, seeds…); ``pretrained``: ``zeroshot/pretrained.json``.
    """
    name = study.get("name") or study.get("study") or "study"
    sections: list[Callable[[], str]] = [
        lambda: findings_section(findings),
        lambda: figures_section(figures),
        lambda: cells_section(tables["cells"]),
        lambda: stats_section(tables.get("stats")),
        lambda: correlations_section(tables.get("correlations")),
        lambda: relations_section(tables.get("cka_entropy")),
        lambda: sensitivity_section(tables.get("probe_sensitivity")),
        lambda: methods_section(tables["methods"]),
        lambda: paper_section(tables, study, pretrained),
        lambda: runs_section(tables["runs"]),
        lambda: downloads_section(tables),
        lambda: study_section(study, pretrained),
    ]
    nav = " · ".join(f"<a href='#{anchor}'>{label}</a>" for anchor, label in SECTIONS)
    body = "".join(section() for section in sections)
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>clipdrift report: {html.escape(str(name))}</title><style>{CSS}</style></head><body>"
        f"<h1>clipdrift: Full FT vs LoRA at matched learning rates — {html.escape(str(name))}</h1>"
        f"<p class='muted'>Generated by clipdrift {clipdrift.__version__}. At each matched learning rate: what "
        f"in-domain accuracy each method buys, how much zero-shot transfer it keeps, how far its attention drifts.</p>"
        f"<nav>{nav}</nav>{body}</body></html>\n"
    )
