"""Findings computed from the tables, each with a generated sentence that carries its numbers.

Method-only averages hide the regimes of a matched-learning-rate study: a ranking that flips
between rates, a method that underfits at low rates, methods whose own best rates differ. Each
finding is a plain dict (JSON-able): ``kind``, ``dataset`` (or None), ``sentence``, ``values``.
"""

from __future__ import annotations

import math

import pandas as pd

from clipdrift.analysis.compare import comparisons
from clipdrift.analysis.frontier import frontier_findings, trajectory_findings
from clipdrift.analysis.names import metric_words
from clipdrift.analysis.sensitivity import sensitivity_summary
from clipdrift.analysis.tables import cell_table, lr_order, method_label
from clipdrift.analysis.wording import drift_sd, finding, p_text, pct, pct_sd, points, pretrained_top1, small
from clipdrift.model.methods import REFERENCE_PAIR

FLIP_METRICS = ("best_select_acc", "zs_top1")


def _cell(cells: pd.DataFrame, dataset: str, method: str, lr: str) -> pd.Series | None:
    match = cells[(cells["dataset"] == dataset) & (cells["method"] == method) & (cells["lr"] == lr)]
    return None if match.empty else match.iloc[0]


def _stat(frame: pd.DataFrame, dataset: str, lr: str, metric: str) -> pd.Series | None:
    if frame.empty:
        return None
    match = frame[(frame["dataset"] == dataset) & (frame["lr"] == lr) & (frame["metric"] == metric)]
    return None if match.empty else match.iloc[0]


def _family_size(stats: pd.DataFrame, metric: str = "zs_top1") -> int:
    return int(stats.loc[stats["metric"] == metric, "family_size"].max()) if not stats.empty else 0


def _matched_lrs(cells: pd.DataFrame, dataset: str, methods, metric: str) -> list[str]:
    """Rates where every method has at least one non-diverged value of ``metric``."""
    rows = cells[(cells["dataset"] == dataset) & cells["method"].isin(methods) & (cells[f"{metric}_n"] > 0)]
    per_lr = rows.groupby("lr")["method"].nunique()
    return lr_order(per_lr[per_lr == len(methods)].index)


# -------------------------------------------------------------------------------- findings


def _at_rate(cells, stats, dataset, methods, lr) -> tuple[str, dict]:
    """Zero-shot kept by each method at one rate, the difference with its interval, and drift."""
    a, b = methods
    ca, cb = _cell(cells, dataset, a, lr), _cell(cells, dataset, b, lr)
    test = _stat(stats, dataset, lr, "zs_top1")
    diff = cb["zs_top1_mean"] - ca["zs_top1_mean"]
    # the p-value quoted is the comparisons table's, Holm-adjusted within its family (the metric's comparisons)
    low, high, p = (test["diff_ci_low"], test["diff_ci_high"], test["p_welch_holm"]) if test is not None else (math.nan,) * 3
    interval = f"95% CI {points(low)} to {points(high)}, " if not pd.isna(low) else ""
    text = (
        f"{method_label(b)} kept {pct_sd(cb['zs_top1_mean'], cb['zs_top1_sd'])} vs "
        f"{pct_sd(ca['zs_top1_mean'], ca['zs_top1_sd'])} for {method_label(a)} "
        f"(mean ± SD over {cb['zs_top1_n']} and {ca['zs_top1_n']} seeds), "
        f"a difference of {points(diff)} points ({interval}Holm-adjusted Welch {p_text(p)})."
    )
    if "drift_entropy_pct_mean" in cells and not pd.isna(ca["drift_entropy_pct_mean"]):
        text += (
            f" Mean CLS-attention entropy drifted {drift_sd(cb['drift_entropy_pct_mean'], cb['drift_entropy_pct_sd'])} "
            f"with {method_label(b)} vs {drift_sd(ca['drift_entropy_pct_mean'], ca['drift_entropy_pct_sd'])} "
            f"with {method_label(a)}."
        )
    values = {
        "lr": lr,
        **{f"zs_top1_mean_{m}": c["zs_top1_mean"] for m, c in ((a, ca), (b, cb))},
        **{f"zs_top1_sd_{m}": c["zs_top1_sd"] for m, c in ((a, ca), (b, cb))},
        **{f"zs_top1_n_{m}": int(c["zs_top1_n"]) for m, c in ((a, ca), (b, cb))},
        "diff": diff,
        "diff_ci_low": low,
        "diff_ci_high": high,
        "p_welch_holm": p,
    }
    return text, values


def headline(cells, stats, dataset, methods, pretrained, task, alpha) -> dict | None:
    """The effect over the whole grid: at how many matched rates method b kept more zero-shot
    accuracy than method a (and how many survive Holm), then the rate where the gap is widest.
    Counting over every rate keeps the statement honest; the widest gap only sizes it."""
    a, b = methods
    lrs = _matched_lrs(cells, dataset, methods, "zs_top1")
    if not lrs:
        return None
    diffs = {
        lr: _cell(cells, dataset, b, lr)["zs_top1_mean"] - _cell(cells, dataset, a, lr)["zs_top1_mean"] for lr in lrs
    }
    ahead = [lr for lr in lrs if diffs[lr] > 0]
    held = [lr for lr in ahead if (t := _stat(stats, dataset, lr, "zs_top1")) is not None and t["p_welch_holm"] < alpha]
    widest = max(lrs, key=lambda lr: abs(diffs[lr]))
    text, values = _at_rate(cells, stats, dataset, methods, widest)
    sentence = (
        f"After fine-tuning on {dataset}, {method_label(b)} kept more zero-shot top-1 accuracy on {task} than "
        f"{method_label(a)} at {len(ahead)} of {len(lrs)} matched learning rates (Welch p < {alpha} at {len(held)} of them "
        f"after Holm's correction over {_family_size(stats)} comparisons; pretrained: {pct(pretrained)}). The gap is "
        f"widest at {widest}: {text}"
    )
    return finding(
        "headline",
        dataset,
        sentence,
        task=task,
        pretrained_zs_top1=pretrained,
        lrs=lrs,
        diffs=diffs,
        ahead=ahead,
        held_after_holm=held,
        widest=values,
    )


def highest_rate(cells, stats, dataset, methods, pretrained, task) -> dict | None:
    """The same comparison at the highest matched rate, where forgetting is strongest."""
    lrs = _matched_lrs(cells, dataset, methods, "zs_top1")
    if not lrs:
        return None
    text, values = _at_rate(cells, stats, dataset, methods, lrs[-1])
    sentence = (
        f"At the highest matched learning rate ({lrs[-1]}) on {dataset}, zero-shot top-1 on {task} "
        f"(pretrained: {pct(pretrained)}): {text}"
    )
    return finding("highest_rate", dataset, sentence, task=task, pretrained_zs_top1=pretrained, **values)


def average_transfer(cells, dataset, methods, pretrained, task) -> dict | None:
    """The published study's view: zero-shot averaged over the rates (mean of cell means)."""
    a, b = methods
    lrs = _matched_lrs(cells, dataset, methods, "zs_top1")
    if not lrs:
        return None
    rows = cells[(cells["dataset"] == dataset) & cells["lr"].isin(lrs)]
    means = rows.groupby("method")["zs_top1_mean"].mean()
    kept = {m: means[m] / pretrained if pretrained > 0 else math.nan for m in methods}
    share = (
        ""
        if any(pd.isna(v) for v in kept.values())
        else (f", i.e. {100 * kept[b]:.0f}% and {100 * kept[a]:.0f}% of the pretrained model's {pct(pretrained)}")
    )
    sentence = (
        f"Averaged over the {len(lrs)} matched learning rates on {dataset}, {method_label(b)} kept "
        f"{pct(means[b])} zero-shot top-1 on {task} and {method_label(a)} {pct(means[a])}{share}. "
        f"The average hides how both depend on the rate (see the learning-rate panels)."
    )
    return finding(
        "average_transfer",
        dataset,
        sentence,
        lrs=lrs,
        task=task,
        pretrained_zs_top1=pretrained,
        **{f"zs_top1_mean_{m}": float(means[m]) for m in methods},
    )


def ranking_flips(cells, stats, dataset, methods, metric) -> dict | None:
    """Where the sign of mean_b − mean_a changes across the matched rates."""
    a, b = methods
    lrs = _matched_lrs(cells, dataset, methods, metric)
    diffs = {
        lr: _cell(cells, dataset, b, lr)[f"{metric}_mean"] - _cell(cells, dataset, a, lr)[f"{metric}_mean"]
        for lr in lrs
    }
    ahead_b = [lr for lr, d in diffs.items() if d > 0]
    ahead_a = [lr for lr, d in diffs.items() if d < 0]
    if not ahead_a or not ahead_b:
        return None
    resolved = []
    for lr in lrs:
        test = _stat(stats, dataset, lr, metric)
        if (
            test is not None
            and not pd.isna(test["diff_ci_low"])
            and (test["diff_ci_low"] > 0 or test["diff_ci_high"] < 0)
        ):
            resolved.append(lr)
    listed = ", ".join(f"{lr}: {points(diffs[lr])}" for lr in lrs)
    name = metric_words(metric)
    sentence = (
        f"On {dataset}, {name} ranks {method_label(a)} above {method_label(b)} at {', '.join(ahead_a)} "
        f"but {method_label(b)} above {method_label(a)} at {', '.join(ahead_b)} "
        f"({method_label(b)} − {method_label(a)}: {listed} points; Welch 95% interval excludes zero at "
        f"{', '.join(resolved) if resolved else 'none of them'}). A method-only average hides this reversal."
    )
    return finding(
        "ranking_flip",
        dataset,
        sentence,
        metric=metric,
        diffs=diffs,
        ahead_a=ahead_a,
        ahead_b=ahead_b,
        resolved=resolved,
    )


def underfit_cells(cells, dataset, methods, gap: float) -> list[dict]:
    """Cells where method b's selection accuracy is more than ``gap`` below method a's."""
    a, b = methods
    found = []
    for lr in _matched_lrs(cells, dataset, methods, "best_select_acc"):
        ca, cb = _cell(cells, dataset, a, lr), _cell(cells, dataset, b, lr)
        shortfall = ca["best_select_acc_mean"] - cb["best_select_acc_mean"]
        if shortfall > gap:
            sentence = (
                f"On {dataset} at {lr}, {method_label(b)} underfits: selection accuracy "
                f"{pct_sd(cb['best_select_acc_mean'], cb['best_select_acc_sd'])} vs "
                f"{pct_sd(ca['best_select_acc_mean'], ca['best_select_acc_sd'])} for {method_label(a)} "
                f"({points(shortfall, signed=False)} points lower; "
                f"n = {cb['best_select_acc_n']} and {ca['best_select_acc_n']})."
            )
            found.append(
                finding(
                    "underfit",
                    dataset,
                    sentence,
                    lr=lr,
                    method=b,
                    reference_method=a,
                    shortfall=shortfall,
                    select_acc=cb["best_select_acc_mean"],
                    reference_select_acc=ca["best_select_acc_mean"],
                )
            )
    return found


def _best_two(cells: pd.DataFrame, dataset: str, method: str) -> tuple[pd.Series, pd.Series | None]:
    rows = cells[(cells["dataset"] == dataset) & (cells["method"] == method) & (cells["best_select_acc_n"] > 0)]
    # stable sort on the lr-ordered table: equal means resolve to the smaller rate
    ranked = rows.sort_values("best_select_acc_mean", ascending=False, kind="stable")
    return ranked.iloc[0], (ranked.iloc[1] if len(ranked) > 1 else None)


def best_rates(cells, dataset, methods) -> dict | None:
    """Each method's own best rate by selection accuracy, with the runner-up for scale."""
    parts, values = [], {}
    for method in methods:
        if not ((cells["dataset"] == dataset) & (cells["method"] == method) & (cells["best_select_acc_n"] > 0)).any():
            return None
        best, second = _best_two(cells, dataset, method)
        runner = (
            f"; next best {second['lr']} at {pct_sd(second['best_select_acc_mean'], second['best_select_acc_sd'])}"
            if second is not None
            else ""
        )
        zs = f", zero-shot {pct_sd(best['zs_top1_mean'], best['zs_top1_sd'])}" if "zs_top1_mean" in best else ""
        parts.append(
            f"{method_label(method)} at {best['lr']} "
            f"(selection {pct_sd(best['best_select_acc_mean'], best['best_select_acc_sd'])}{zs}{runner})"
        )
        values[method] = {
            "lr": best["lr"],
            "select_acc": best["best_select_acc_mean"],
            "zs_top1": best.get("zs_top1_mean", math.nan),
        }
    a, b = methods
    sentence = f"On {dataset}, each method's own best rate: " + "; ".join(parts) + "."
    if values[a]["lr"] != values[b]["lr"] and not pd.isna(values[a]["zs_top1"]):
        sentence += (
            f" Compared at their own best rates, {method_label(b)} keeps "
            f"{points(values[b]['zs_top1'] - values[a]['zs_top1'])} points of zero-shot accuracy "
            f"relative to {method_label(a)}."
        )
    return finding("best_rate", dataset, sentence, best=values)


def diverged_runs(runs: pd.DataFrame) -> dict:
    bad = runs[runs["diverged"]]
    if bad.empty:
        return finding("diverged", None, "No run diverged; every run enters the means.", n=0, runs=[])
    described = [
        f"{r.dataset} · {method_label(r.method)} · {r.lr} · seed {r.seed}"
        + ("" if pd.isna(r.diverged_at_step) else f" (at step {int(r.diverged_at_step)})")
        for r in bad.itertuples()
    ]
    verb = "run diverged and is" if len(bad) == 1 else "runs diverged and are"
    sentence = f"{len(bad)} {verb} shown in the run table but left out of every mean: {'; '.join(described)}."
    return finding(
        "diverged", None, sentence, n=len(bad), runs=bad[["dataset", "method", "lr", "seed"]].to_dict("records")
    )


def permutation_power(stats: pd.DataFrame, alpha: float) -> dict | None:
    """Say so when Holm makes the exact permutation test unable to reach ``alpha`` at all."""
    if stats.empty or not stats["perm_exact"].any():
        return None
    floor = stats["p_perm_min"].min() * stats["family_size"].max()
    if floor < alpha:
        return None
    sentence = (
        f"With {int(stats['n_a'].max())} and {int(stats['n_b'].max())} seeds per method the exact permutation test cannot "
        f"give p below {stats['p_perm_min'].min():.3g}; after Holm's correction over {int(stats['family_size'].max())} "
        f"comparisons per metric no permutation result can reach {alpha}. Read the Welch tests and the intervals "
        f"together with the effect sizes."
    )
    return finding(
        "permutation_power",
        None,
        sentence,
        p_perm_min=float(stats["p_perm_min"].min()),
        family_size=int(stats["family_size"].max()),
        alpha=alpha,
    )


def probe_choice(summary: pd.DataFrame) -> list[dict]:
    """Per dataset: how much the probe subset alone moves the entropy, against the drifts measured."""
    out = []
    for row in summary.itertuples(index=False):
        sentence = (
            f"On {row.dataset}, over {row.n_probes} probe subsets the pretrained model's mean CLS-attention "
            f"entropy varies by a coefficient of variation of {small(row.pretrained_cv_pct)}% "
            f"(fine-tuned checkpoints: median {small(row.median_finetuned_cv_pct)}%). A run's entropy drift moves by a "
            f"median SD of {small(row.median_drift_sd)} points across subsets, against a median measured |drift| of "
            f"{small(row.median_abs_drift)}%: the probe choice alone could explain the drift of {row.n_explained} of "
            f"{row.n_judged} runs (|drift| within 2 SD across subsets)."
        )
        values = {k: v for k, v in row._asdict().items() if k != "dataset"}
        out.append(finding("probe_sensitivity", row.dataset, sentence, **values))
    return out


def findings(
    runs: pd.DataFrame,
    pretrained_zeroshot=None,
    methods: tuple[str, str] = REFERENCE_PAIR,
    underfit_gap: float = 0.10,
    alpha: float = 0.05,
    sensitivity: pd.DataFrame | None = None,
    curves: pd.DataFrame | None = None,
    family: pd.DataFrame | None = None,
) -> list[dict]:
    """All findings for the study, in reading order: per dataset the headline effect, the
    average over rates, ranking flips, underfit cells and best rates; then diverged runs, the
    power caveat and what the probe choice alone could explain. ``pretrained_zeroshot`` is
    the pretrained model over the suite (or its top-1); ``sensitivity`` the probe-sensitivity table.
    ``family``: the study's comparisons table, whose Holm correction (within each metric, over every
    comparison the study makes) every quoted p-value takes; without it, the pair's own comparisons."""
    cells = cell_table(runs, ci_metrics=())
    family = comparisons(runs, metrics=[m for m in ("best_select_acc", "zs_top1") if m in runs], pairs=[methods],
                         alpha=alpha) if family is None else family
    stats = family if family.empty else family[(family["method_a"] == methods[0]) & (family["method_b"] == methods[1])]
    pretrained = pretrained_top1(pretrained_zeroshot)
    task = _task_name(runs, pretrained_zeroshot)
    out: list[dict] = []
    for dataset in sorted(runs["dataset"].unique()):
        if not _matched_lrs(cells, dataset, methods, "best_select_acc"):
            continue  # one method only, or no rate where both finished: nothing to compare
        out += _dataset_findings(cells, stats, dataset, methods, pretrained, task, underfit_gap, alpha)
    out += [diverged_runs(runs), permutation_power(stats, alpha)]
    if sensitivity is not None and not sensitivity.empty:
        out += probe_choice(sensitivity_summary(sensitivity))
    if curves is not None and not curves.empty:
        out += frontier_findings(curves, methods) + trajectory_findings(curves, pretrained)
    return [f for f in out if f is not None]


def _dataset_findings(cells, stats, dataset, methods, pretrained, task, underfit_gap, alpha) -> list[dict | None]:
    out: list[dict | None] = []
    if "zs_top1_mean" in cells:
        effect = headline(cells, stats, dataset, methods, pretrained, task, alpha)
        top = highest_rate(cells, stats, dataset, methods, pretrained, task)
        if effect and top and effect["values"]["widest"]["lr"] == top["values"]["lr"]:
            top = None  # the headline already gives the highest rate's numbers
        out += [effect, top, average_transfer(cells, dataset, methods, pretrained, task)]
    out += [ranking_flips(cells, stats, dataset, methods, m) for m in FLIP_METRICS if f"{m}_mean" in cells]
    a, b = methods
    no_underfit = finding(
        "underfit",
        dataset,
        f"On {dataset}, {method_label(b)}'s selection accuracy is never more than "
        f"{100 * underfit_gap:.0f} points below {method_label(a)}'s at the same rate.",
        lr=None,
        gap=underfit_gap,
    )
    out += underfit_cells(cells, dataset, methods, underfit_gap) or [no_underfit]
    out.append(best_rates(cells, dataset, methods))
    return out


def _task_name(runs: pd.DataFrame, pretrained) -> str:
    if isinstance(pretrained, dict) and pretrained.get("task"):
        return str(pretrained["task"])
    tasks = runs["zs_task"].dropna().unique() if "zs_task" in runs else []
    return str(tasks[0]) if len(tasks) else "the zero-shot task"
