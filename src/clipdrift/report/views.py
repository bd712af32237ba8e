"""What each section of the report shows, as plain data for its template macro.

Each ``*_view`` returns a dict (the template's ``view``), or None where the section has nothing
to show. Every string in it is plain text: the templates escape it. Tables are
:class:`clipdrift.report.cells.Table` objects of formatted cells.
"""

from __future__ import annotations

import base64
import math
import os
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from clipdrift.analysis.names import metric_label, shown_in
from clipdrift.analysis.ranking import REFERENCE
from clipdrift.analysis.reference import PUBLISHED_PRETRAINED_ZEROSHOT
from clipdrift.analysis.sensitivity import sensitivity_summary
from clipdrift.analysis.tables import drop_diverged, method_label
from clipdrift.analysis.wording import pct, pretrained_top1, small
from clipdrift.report.cells import (
    format_value,
    is_missing,
    mean_sd,
    p_value,
    r_with_ci,
    summary,
    table,
    yes_no,
)
from clipdrift.report.names import FIGURES

FINDING_GROUPS = (
    ("The effect", ("headline", "highest_rate", "average_transfer")),
    ("Regimes that averages hide", ("ranking_flip", "underfit", "best_rate")),
    ("Beyond the end points: interpolation and trajectories", ("frontier", "trajectory")),
    ("Is drift causal? Regularised Full FT at matched in-domain accuracy", ("causal", "regulariser")),
    ("Every ablation against its method", ("variant_family",)),
    ("What fine-tuning does to the weights", ("weight_rank", "weight_magnitude_direction", "weight_intruders",
                                              "weight_intruder_relations", "weight_overlap", "weight_intervention")),
    ("Caveats", ("diverged", "permutation_power", "probe_sensitivity")),
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def findings_view(findings: list[dict]) -> dict:
    groups = [(title, [f for f in findings if f["kind"] in kinds]) for title, kinds in FINDING_GROUPS]
    other = [f for f in findings if not any(f["kind"] in kinds for _, kinds in FINDING_GROUPS)]
    return {"groups": [(title, items) for title, items in groups if items], "other": other}


def png_data_uri(png: bytes | str | os.PathLike) -> str:
    """A PNG (its bytes, or the path of the file) as a ``data:`` URI."""
    data = png if isinstance(png, bytes) else Path(png).read_bytes()
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError(f"not a PNG image: {png if not isinstance(png, bytes) else data[:16]!r}")
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def figures_view(figures: Mapping[str, bytes | str | os.PathLike]) -> dict:
    """The figures the figure step wrote, in the given order, each as its PNG (bytes or path)."""
    return {"figures": [
        {"name": name, "title": FIGURES[name].title if name in FIGURES else name.replace("_", " "),
         "src": png_data_uri(png), "caption": FIGURES[name].caption if name in FIGURES else ""}
        for name, png in figures.items()
    ]}


def cells_view(cells: pd.DataFrame) -> dict:
    view = [(metric_label(metric), metric) for metric in shown_in("cells") if f"{metric}_mean" in cells]
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
            + [summary(row, metric) for _, metric in view]
        )
        classes.append("flag" if row["n_diverged"] else "")
    return {"table": table(columns, rows, classes, text_columns=5)}


def methods_view(methods: pd.DataFrame) -> dict:
    view = [(metric_label(metric), metric) for metric in shown_in("cells") if f"{metric}_mean" in methods]
    columns = ["dataset", "method", "learning rates", "runs (diverged)"] + [label for label, _ in view]
    rows = []
    for _, row in methods.iterrows():
        values = [mean_sd(m, row[f"{m}_mean"], row[f"{m}_sd_across_lr"]) for _, m in view]
        rows.append(
            [row["dataset"], method_label(row["method"]), row["lrs"], f"{row['n_runs']} ({row['n_diverged']})"] + values
        )
    return {"table": table(columns, rows, text_columns=3)}


def _arm(metric: str, mean, sd, n) -> str:
    return f"{mean_sd(metric, mean, sd)} ({n})"


def stats_view(stats: pd.DataFrame | None) -> dict:
    if stats is None or stats.empty:
        return {"heading": "Method comparisons", "table": None}
    columns = ["dataset", "lr", "metric", "comparison (b vs a)", "a: mean ± SD (n)", "b: mean ± SD (n)",
               "b − a [95% CI]", "Welch t (df)", "p Welch", "p Welch, Holm", "p permutation", "p perm., Holm"]
    rows, classes = [], []
    for _, r in stats.iterrows():
        m = r["metric"]
        diff = (
            f"{format_value(m, r['diff'], True)} "
            f"[{format_value(m, r['diff_ci_low'], True)}, {format_value(m, r['diff_ci_high'], True)}]"
        )
        perm = p_value(r["p_perm"]) + ("" if r["perm_exact"] else " (sampled)")
        rows.append([
            r["dataset"], r["lr"], metric_label(m),
            f"{method_label(r['method_b'])} vs {method_label(r['method_a'])}",
            _arm(m, r["mean_a"], r["sd_a"], r["n_a"]), _arm(m, r["mean_b"], r["sd_b"], r["n_b"]), diff,
            "–" if is_missing(r["t"]) else f"{r['t']:.2f} ({r['df']:.1f})",
            p_value(r["p_welch"]), p_value(r["p_welch_holm"]), perm, p_value(r["p_perm_holm"]),
        ])
        classes.append("flag" if r["reject_p_welch_holm"] else "")
    pairs = "; ".join(f"{method_label(b)} vs {method_label(a)}"
                      for a, b in stats[["method_a", "method_b"]].drop_duplicates().itertuples(index=False))
    return {"pairs": pairs, "table": table(columns, rows, classes, text_columns=4), "n": len(stats),
            "crossed": _crossed(stats)}


def _crossed(stats: pd.DataFrame) -> list[str]:
    """The comparisons that cross Holm-adjusted Welch p < 0.05, one sentence each, largest effect first."""
    crossed = stats[stats["reject_p_welch_holm"].fillna(False).astype(bool)]
    crossed = crossed.reindex(crossed["cohens_d"].abs().sort_values(ascending=False).index)
    return [f"{r['dataset']}, lr {r['lr']}: {metric_label(r['metric'])}, {method_label(r['method_b'])} vs "
            f"{method_label(r['method_a'])} {format_value(r['metric'], r['diff'], True)} "
            f"(Holm p {p_value(r['p_welch_holm'])})" for _, r in crossed.iterrows()]


def correlations_view(correlations: pd.DataFrame | None) -> dict | None:
    if correlations is None or correlations.empty:
        return None
    columns = ["dataset", "x", "y", "n", "Pearson r [95% CI]", "p", "Spearman ρ", "p"]
    rows = [
        [
            r["dataset"],
            metric_label(r["x"]),
            metric_label(r["y"]),
            r["n"],
            r_with_ci(r["pearson_r"], r["pearson_ci_low"], r["pearson_ci_high"]),
            p_value(r["pearson_p"]),
            "–" if is_missing(r["spearman_rho"]) else f"{r['spearman_rho']:.2f}",
            p_value(r["spearman_p"]),
        ]
        for _, r in correlations.iterrows()
    ]
    return {"table": table(columns, rows, text_columns=3)}


def _r_with_p(row: pd.Series) -> str:
    if is_missing(row["r"]):
        return "–"
    return f"{row['r']:.2f} (p {p_value(row['p_perm'])}{'' if row['perm_exact'] else ', sampled'})"


RELATION_COLUMNS = ("dataset", "layer", "n runs", "Pearson r (p)", "Spearman ρ (p)")


def _relation_table(frame: pd.DataFrame):
    rows = []
    for (dataset, layer), group in frame.groupby(["dataset", "layer"], sort=True):
        by_method = group.set_index("method")
        cells = [_r_with_p(by_method.loc[m]) if m in by_method.index else "–" for m in ("pearson", "spearman")]
        rows.append([dataset, "all (run means)" if layer < 0 else str(layer), int(group["n"].max()), *cells])
    return table(RELATION_COLUMNS, rows, text_columns=2)


def relations_view(relations: pd.DataFrame | None) -> dict:
    """``same``: the run means and each block with its own output; ``offset``: the published pairing, if given."""
    if relations is None or relations.empty:
        return {"same": None, "offset": None}
    same = relations[relations["pairing"].isin(["mean_over_layers", "same_layer"])]
    offset = relations[relations["pairing"] == "published_offset"]
    return {"same": _relation_table(same), "offset": None if offset.empty else _relation_table(offset)}


SENSITIVITY_VIEW = (("entropy", "mean CLS-attention entropy"), ("rollout_entropy", "rollout entropy"))


def suite_view(zeroshot: pd.DataFrame | None, runs: pd.DataFrame, pretrained) -> dict:
    """Per (dataset, method, lr): each held-out task's retention and the suite mean, mean ± SD over
    the seeds that did not diverge."""
    zeroshot = None if zeroshot is None else drop_diverged(zeroshot, runs)
    if zeroshot is None or zeroshot.empty:
        return {"table": None, "pretrained": []}
    tasks = list(dict.fromkeys(zeroshot["task"]))
    per_run = zeroshot.pivot_table(index=["dataset", "method", "lr", "seed"], columns="task", values="retention",
                                   dropna=False)
    per_run = per_run[tasks].assign(**({"suite mean": per_run[tasks].mean(axis=1)} if len(tasks) > 1 else {}))
    cells = per_run.groupby(level=["dataset", "method", "lr"], sort=False).agg(["mean", "std"])
    columns = ["dataset", "method", "lr", *(f"{task} retention (%)" for task in per_run.columns)]
    rows = [[dataset, method_label(method), lr,
             *(mean_sd("zs_retention", cells.loc[(dataset, method, lr), (task, "mean")],
                       cells.loc[(dataset, method, lr), (task, "std")]) for task in per_run.columns)]
            for dataset, method, lr in cells.index]
    known = (pretrained or {}).get("tasks", {}) if isinstance(pretrained, dict) else {}
    return {"table": table(columns, rows, text_columns=3),
            "pretrained": [{"task": task, "top1": pct(known[task])} for task in tasks if task in known]}


def sensitivity_view(sensitivity: pd.DataFrame | None) -> dict:
    if sensitivity is None or sensitivity.empty:
        return {"table": None}
    columns = ["dataset", "statistic", "probe subsets", "pretrained CV (%)", "fine-tuned CV, median (%)",
               "|drift| measured, median (%)", "drift SD across subsets, median", "drift the probe could explain"]
    rows = []
    for metric, label in SENSITIVITY_VIEW:
        for r in sensitivity_summary(sensitivity, metric).itertuples():
            rows.append([r.dataset, label, r.n_probes, small(r.pretrained_cv_pct), small(r.median_finetuned_cv_pct),
                         small(r.median_abs_drift), small(r.median_drift_sd), f"{r.n_explained} of {r.n_judged} runs"])
    return {"table": table(columns, rows, text_columns=2)}


PAPER_COLUMNS = ("metric", "published", "reproduced mean ± SD", "n", "difference", "within SD", "within range")


def _paper_table(frame: pd.DataFrame, keys: list[str], highlight: bool):
    rows, classes = [], []
    definitions = "definition" in frame
    for _, r in frame.iterrows():
        m = r["metric"]
        rows.append(
            [r[k] if k != "method" else method_label(r[k]) for k in keys]
            + ([r["definition"]] if definitions else [])
            + [
                metric_label(m),
                format_value(m, r["published"]),
                mean_sd(m, r["reproduced_mean"], r["reproduced_sd"]),
                r["reproduced_n"],
                format_value(m, r["difference"], True),
                yes_no(r["within_sd"]),
                yes_no(r["within_range"]),
            ]
        )
        classes.append("" if not highlight or is_missing(r["within_sd"]) or r["within_sd"] else "flag")
    columns = [*keys, *(["definition"] if definitions else []), *PAPER_COLUMNS]
    return table(columns, rows, classes, text_columns=len(keys) + 1 + definitions)


def paper_correlations_table(frame: pd.DataFrame):
    columns = ["dataset", "x", "y", "published r (n)", "measured r [95% CI]", "n", "difference", "published inside CI"]
    rows, classes = [], []
    for _, r in frame.iterrows():
        rows.append([r["dataset"], metric_label(r["x"]), metric_label(r["y"]),
                     f"{r['published_r']:.2f} ({r['published_n']})",
                     r_with_ci(r["measured_r"], r["pearson_ci_low"], r["pearson_ci_high"]), r["measured_n"],
                     "–" if is_missing(r["difference"]) else f"{r['difference']:+.2f}", yes_no(r["within_ci"])])
        classes.append("" if is_missing(r["within_ci"]) or r["within_ci"] else "flag")
    return table(columns, rows, classes, text_columns=3)


def paper_view(tables: dict, study: dict, pretrained) -> dict:
    """``applies`` false (with the study's ``preset``) unless the study is the published paper matrix."""
    if "paper_cells" not in tables or tables["paper_cells"] is None:
        return {"applies": False, "name": str(study.get("name") or "this study"),
                "preset": str(study.get("preset") or "none")}
    reference = pretrained_top1(pretrained)
    names = study.get("zeroshot_class_names")
    optional = {name: tables.get(name) for name in ("paper_methods", "paper_correlations", "paper_ablations")}
    ablations = optional["paper_ablations"]
    ablations = None if ablations is None or not (ablations["definition"] != "not run").any() else ablations
    return {
        "applies": True,
        "class_names": str(names) if names else None,
        "published_class_names": names == "published",
        "pretrained": None if math.isnan(reference) else {
            "reproduced": pct(reference),
            "published": pct(PUBLISHED_PRETRAINED_ZEROSHOT),
            "difference": f"{100 * (reference - PUBLISHED_PRETRAINED_ZEROSHOT):+.2f}",
        },
        "cells": _paper_table(tables["paper_cells"], ["dataset", "method", "lr"], highlight=True),
        "methods": None if optional["paper_methods"] is None
        else _paper_table(optional["paper_methods"], ["dataset", "method"], highlight=False),
        "correlations": None if optional["paper_correlations"] is None
        else paper_correlations_table(optional["paper_correlations"]),
        "ablations": None if ablations is None else _paper_table(ablations, ["dataset", "method", "lr"], highlight=False),
    }


def runs_view(runs: pd.DataFrame) -> dict:
    view = [(metric_label(metric), metric) for metric in shown_in("runs") if metric in runs]
    columns = ["dataset", "method", "lr", "seed", "status"] + [label for label, _ in view]
    rows, classes = [], []
    for _, r in runs.iterrows():
        status = r["status"]
        if r["diverged"]:
            step = r.get("diverged_at_step")
            status = "DIVERGED" + ("" if is_missing(step) else f" at step {int(step)}") + " — left out of means"
        rows.append(
            [r["dataset"], method_label(r["method"]), r["lr"], r["seed"], status]
            + [format_value(metric, r[metric]) for _, metric in view]
        )
        classes.append("diverged" if r["diverged"] else "")
    return {"n_runs": len(runs), "n_diverged": int(runs["diverged"].sum()),
            "table": table(columns, rows, classes, text_columns=5)}


# A table whose CSV is larger stays beside the report (tables/<name>.csv) instead of inside the page: the
# per-matrix weight tables of a real tower run to megabytes
INLINE_CSV_BYTES = 256 * 1024


def downloads_view(tables: dict[str, pd.DataFrame]) -> dict:
    """Every table as a CSV ``data:`` link, or for a large one a link to its file beside the report."""
    links = []
    for name, frame in tables.items():
        if frame is None:
            continue
        text = frame.to_csv(index=False).encode()
        inline = len(text) <= INLINE_CSV_BYTES
        links.append({"name": name, "inline": inline,
                      "href": "data:text/csv;base64," + base64.b64encode(text).decode("ascii") if inline
                      else f"../tables/{name}.csv"})
    return {"links": links}


def study_view(study: dict, pretrained) -> dict | None:
    """The study's settings as a two-column table; nested settings (a whole config) flattened
    to dotted keys so every value is one readable row."""
    rows = [[key, value] for key, value in _flatten({k: v for k, v in study.items() if k != "variants"})]
    reference = pretrained_top1(pretrained)
    if not math.isnan(reference):
        task = pretrained.get("task", "zero-shot task") if isinstance(pretrained, dict) else "zero-shot task"
        rows.append(["pretrained zero-shot top-1", f"{pct(reference)} on {task}"])
    return {"table": table(["setting", "value"], rows, text_columns=2)} if rows else None


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


def ranking_view(ranking: pd.DataFrame | None) -> dict:
    """The methods per dataset in rank order of the zero-shot they keep against Full FT's
    interpolation at their own in-domain accuracy, with what they cost."""
    if ranking is None or ranking.empty:
        return {"table": None}
    columns = ["dataset", "rank", "method", "zero-shot kept vs Full FT (points)", "rates matched",
               metric_label("best_select_acc"), metric_label("zs_top1"), metric_label("trainable_params"),
               metric_label("images_per_s")]
    rows = [[row.dataset, row.rank, method_label(row.method),
             "reference" if row.method == REFERENCE else
             ("no match" if is_missing(row.zs_kept) else f"{100 * row.zs_kept:+.1f}"),
             f"{row.rates_matched}/{row.rates}", pct(row.best_select_acc), pct(row.zs_top1),
             format_value("trainable_params", getattr(row, "trainable_params", math.nan)),
             format_value("images_per_s", getattr(row, "images_per_s", math.nan))]
            for row in ranking.itertuples()]
    return {"table": table(columns, rows, text_columns=3)}
