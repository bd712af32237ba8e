"""The page's weight-space section: how alike runs' changes are (seed floor, between methods) and
the intruder counts across the sweep of top_k and epsilon, beside what random directions count."""

from __future__ import annotations

import pandas as pd

from clipdrift.analysis.tables import method_label
from clipdrift.report.cells import table


def weights_view(overlap: pd.DataFrame | None, sweep: pd.DataFrame | None) -> dict:
    return {"overlap": _overlap_table(overlap), "sweep": _sweep_table(sweep)}


def _cell(method: str, lr: str) -> str:
    return f"{method_label(method)} · {lr}"


def _overlap_table(overlap: pd.DataFrame | None):
    if overlap is None or overlap.empty:
        return None
    shown = overlap[overlap["kind"].isin(["seeds", "methods"])]
    columns = ["dataset", "between", "seeds", "cell a", "cell b", "pairs of runs", "overlap, mean ± SD",
               "random subspaces"]
    rows = [[r.dataset, "seeds (noise floor)" if r.kind == "seeds" else "methods", r.seeds, _cell(r.method_a, r.lr_a),
             _cell(r.method_b, r.lr_b), r.n_pairs,
             f"{r.overlap_mean:.2f}" + ("" if pd.isna(r.overlap_sd) else f" ± {r.overlap_sd:.2f}"), f"{r.chance:.2f}"]
            for r in shown.itertuples()]
    return table(columns, rows, text_columns=5)


def _sweep_table(sweep: pd.DataFrame | None):
    if sweep is None or sweep.empty:
        return None
    epsilons = sorted(sweep["epsilon"].unique())
    columns = ["dataset", "method", "lr", "top k", *(f"ε = {e:g}" for e in epsilons)]
    rows = []
    for (dataset, method, lr, top_k), group in sweep.groupby(["dataset", "method", "lr", "top_k"], sort=False):
        by_epsilon = group.set_index("epsilon")
        rows.append([dataset, method_label(method), lr, int(top_k),
                     *(f"{by_epsilon.loc[e, 'intruders_mean']:.1f} ({by_epsilon.loc[e, 'random_intruders_mean']:.0f})"
                       if e in by_epsilon.index else "–" for e in epsilons)])
    return table(columns, rows, text_columns=3)
