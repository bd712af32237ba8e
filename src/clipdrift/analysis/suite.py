"""The held-out suite: each task's zero-shot scores and retention (after ÷ pretrained), and the
suite mean that every run-level number and the frontier use.

A run's ``zeroshot/<run>.json`` holds one record per held-out task; the pretrained model's
scores are ``zeroshot/pretrained/<task>.json``. Retention is a run's top-1 on a task divided by
the pretrained model's on the same task (1 = nothing lost); the suite mean weighs every task
the same. With one task the suite mean is that task's number.
"""

from __future__ import annotations

import math

import pandas as pd

from clipdrift.analysis.tables import RUN_KEYS, ZEROSHOT_RUN_COLUMNS, normalise_keys, sort_grid

ZEROSHOT_COLUMNS = [*RUN_KEYS, "task", "templates", "top1", "top5", "balanced_acc", "pretrained_top1", "retention"]


def pretrained_suite(records: list[dict]) -> dict:
    """The pretrained model over the suite: ``tasks`` (task → top-1), the suite-mean ``top1`` and
    ``task`` (the task's name, or "the held-out suite (mean of a, b)" for several)."""
    tasks = {str(r["task"]): float(r["top1"]) for r in records}
    return {"task": suite_name(list(tasks)), "tasks": tasks, "top1": sum(tasks.values()) / len(tasks) if tasks else math.nan}


def suite_name(tasks: list[str]) -> str:
    return tasks[0] if len(tasks) == 1 else f"the held-out suite (mean of {', '.join(tasks)})"


def _ratio(value, reference) -> float:
    return float(value) / reference if reference else math.nan


def zeroshot_table(scores: list[dict], pretrained: dict) -> pd.DataFrame:
    """One row per run and held-out task (``scores``: the runs' ``zeroshot/<run>.json``)."""
    rows = [
        {**{key: record[key] for key in RUN_KEYS}, "task": str(record["task"]), "templates": record.get("templates"),
         **{key: float(record.get(key, math.nan)) for key in ("top1", "top5", "balanced_acc")},
         "pretrained_top1": pretrained["tasks"].get(str(record["task"]), math.nan),
         "retention": _ratio(record["top1"], pretrained["tasks"].get(str(record["task"])))}
        for run in scores for record in run["tasks"]
    ]
    frame = normalise_keys(pd.DataFrame(rows, columns=ZEROSHOT_COLUMNS))
    return sort_grid(frame, extra=["seed", "task"]).reset_index(drop=True) if len(frame) else frame


def suite_means(zeroshot: pd.DataFrame) -> pd.DataFrame:
    """Per run: the suite means of top-1, top-5, balanced accuracy and retention (``zs_*`` columns)."""
    if zeroshot.empty:
        return pd.DataFrame(columns=[*RUN_KEYS, *ZEROSHOT_RUN_COLUMNS])
    grouped = zeroshot.groupby(RUN_KEYS, as_index=False, sort=False)
    means = grouped.agg(zs_top1=("top1", "mean"), zs_top5=("top5", "mean"), zs_balanced=("balanced_acc", "mean"),
                        zs_retention=("retention", "mean"))
    labels = grouped.agg(zs_task=("task", lambda t: suite_name(list(t))),
                         zs_templates=("templates", lambda t: ", ".join(dict.fromkeys(map(str, t)))))
    return labels.merge(means, on=RUN_KEYS)[[*RUN_KEYS, *ZEROSHOT_RUN_COLUMNS]]


def suite_curves(curves: pd.DataFrame | None, pretrained: dict) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """(the curve points with the suite-mean zero-shot top-1 and retention - one row per point -,
    the per-task points with their retention), from the curve jobs' per-task rows."""
    if curves is None or curves.empty or "task" not in curves:
        return curves, None
    per_task = curves.assign(zs_retention=[_ratio(top1, pretrained["tasks"].get(task))
                                           for top1, task in zip(curves["zs_top1"], curves["task"])])
    keys = [column for column in curves.columns if column not in ("task", "zs_top1")
            and column not in ("indomain_acc", "drift_entropy_pct", "drift_erf_pct")]
    means = per_task.groupby(keys, as_index=False, sort=False).agg(
        indomain_acc=("indomain_acc", "first"), zs_top1=("zs_top1", "mean"), zs_retention=("zs_retention", "mean"),
        drift_entropy_pct=("drift_entropy_pct", "first"), drift_erf_pct=("drift_erf_pct", "first"))
    return means, per_task
