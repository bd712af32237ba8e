"""A fabricated set of run results in the artifact shapes of docs/artifacts.md.

2 datasets × 2 methods × 4 learning rates × 3 seeds, built so that the analysis has something
to find: Full FT forgets zero-shot accuracy as the rate grows while LoRA keeps most of it;
LoRA underfits pets at the lowest rate and overtakes Full FT there at the highest (a ranking
flip). Two irregularities: eurosat / full / 5e-05 / seed 19 diverged (garbage numbers that
would poison a mean), and pets / lora / 1e-06 lost seed 11 (a cell with n = 2).
"""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd

from clipdrift.analysis.suite import pretrained_suite, suite_means, zeroshot_table
from clipdrift.model.methods import family_of

DATASETS = ("eurosat", "pets")
METHODS = ("full", "lora")
LRS = ("1e-06", "5e-06", "1e-05", "5e-05")
SEEDS = (7, 11, 19)
DIVERGED = ("eurosat", "full", "5e-05", 19)
MISSING = ("pets", "lora", "1e-06", 11)
PRETRAINED = {
    "task": "world-cifar100",
    "templates": "single",
    "n_templates": 1,
    "n_images": 1000,
    "top1": 0.60,
    "top5": 0.85,
    "balanced_acc": 0.60,
}
N_LAYERS, N_HEADS = 3, 2
BASELINE = {
    "entropy": 3.0,
    "erf95": 0.8,
    "gini": 0.4,
    "head_diversity": 0.3,
    "p2p_entropy": 3.5,
    "rollout_entropy": 3.6,
    "rollout_erf95": 0.9,
    "rollout_gini": 0.3,
}

# Cell means: selection accuracy, zero-shot top-1, entropy drift (% of pretrained).
SELECT = {
    "eurosat": {"full": (0.97, 0.98, 0.98, 0.97), "lora": (0.90, 0.95, 0.97, 0.98)},
    "pets": {"full": (0.88, 0.90, 0.91, 0.86), "lora": (0.20, 0.82, 0.90, 0.92)},
}
ZEROSHOT = {"full": (0.40, 0.20, 0.10, 0.05), "lora": (0.58, 0.55, 0.50, 0.45)}
DRIFT = {"full": (-0.5, -1.5, -3.0, -6.0), "lora": (0.1, 0.3, 0.5, 0.8)}


def run_keys(methods=METHODS):
    for dataset in DATASETS:
        for method in methods:
            for i, lr in enumerate(LRS):
                for seed in SEEDS:
                    if (dataset, method, lr, seed) != MISSING:
                        yield dataset, method, i, lr, seed


def _history(dataset, method, lr, seed, select, diverged):
    epochs = [
        {
            "epoch": e,
            "train_loss": 1.0 / e,
            "train_acc": select,
            "select_acc": select,
            "lr_end": float(lr),
            "time_s": 10.0,
            "images_per_s": 400.0,
        }
        for e in (1, 2)
    ]
    return {
        "dataset": dataset,
        "method": method,
        "lr": lr,
        "seed": seed,
        "status": "diverged" if diverged else "completed",
        "diverged_at_step": 37 if diverged else None,
        "selection_split": "val",
        "epochs": epochs,
        "best_epoch": 2,
        "best_select_acc": select,
        "final_select_acc": select - 0.005,
        "final_test_acc": select - 0.01,
        "trainable_params": {
            "adapter": 0 if family_of(method) == "full" else 1000,
            "projection": 100,
            "head": 50,
            "image_tower": 50000 if family_of(method) == "full" else 0,
            "total": 50150 if family_of(method) == "full" else 1150,
        },
        "train_time_s": 20.0 + seed / 10,
        "images_per_s": 400.0 - seed,
        "steps": 200,
    }


def _attention_rows(keys, drift_pct, rng):
    """Per-layer drifts that average to ``drift_pct`` over layers, per head and head-mean rows."""
    rows = []
    layer_drift = drift_pct * np.array([0.5, 1.0, 1.5])
    for metric, base in BASELINE.items():
        layers = [-1] if metric.startswith("rollout") else range(N_LAYERS)
        for layer in layers:
            factor = 1 + (layer_drift[layer] if layer >= 0 else drift_pct) / 100
            heads = [-1] if metric == "head_diversity" or layer < 0 else [-1, *range(N_HEADS)]
            for head in heads:
                # per-head values deliberately disagree with the head-mean row: the head-mean row must win
                offset = 0.0 if head == -1 else (0.5 if head == 0 else -0.3)
                for state, value in (("baseline", base + offset), ("final", base * factor + offset)):
                    rows.append(
                        {**keys, "layer": layer, "head": head, "metric": metric, "state": state, "value": value}
                    )
    return rows


def _cka_rows(keys, level):
    rows = []
    for layer in range(N_LAYERS + 1):
        for token in ("cls", "patch_mean"):
            for variant in ("linear", "debiased"):
                undefined = layer == 0 and token == "cls"
                value = np.nan if undefined else level - 0.05 * layer - (0.02 if variant == "debiased" else 0)
                rows.append(
                    {
                        **keys,
                        "layer": layer,
                        "token": token,
                        "variant": variant,
                        "value": value,
                        "defined": not undefined,
                    }
                )
    return rows


PROBE_SEEDS = (7, 21, 42, 123, 777)
PROBE_NOISE = 0.01  # relative spread of the entropy over probe subsets


def fabricate_sensitivity(attention: pd.DataFrame) -> pd.DataFrame:
    """Probe-sensitivity rows consistent with ``attention``: each probe subset scales both model
    states of a dataset by the same factor, plus a small run-specific wobble of the final state."""
    rng = np.random.default_rng(1)
    factors = {(d, s): 1 + PROBE_NOISE * rng.standard_normal() for d in DATASETS for s in PROBE_SEEDS}
    head_mean = attention[(attention["head"] == -1) & attention["metric"].isin(["entropy", "rollout_entropy"])]
    means = head_mean.groupby(["dataset", "method", "lr", "seed", "metric", "state"])["value"].mean()
    rows = []
    for (dataset, method, lr, seed, metric, state), value in means.items():
        for probe_seed in PROBE_SEEDS:
            wobble = 1 + (0.002 * rng.standard_normal() if state == "final" else 0.0)
            rows.append({"dataset": dataset, "method": method, "lr": lr, "seed": seed, "probe_seed": probe_seed,
                         "state": state, "metric": metric, "value": value * factors[(dataset, probe_seed)] * wobble})
    return pd.DataFrame(rows)


def zeroshot_means(scores: list[dict], pretrained: dict = PRETRAINED):
    """The per-run suite means of zero-shot score files (what the run table joins)."""
    return suite_means(zeroshot_table(scores, pretrained_suite([pretrained])))


def fabricate(methods=METHODS):
    """(histories, zeroshot score files, attention, cka) for the fabricated study; ``methods``
    other than Full FT and LoRA (variants: ``full-…``, ``lora-…``) score as their method does,
    each a little off it."""
    rng = np.random.default_rng(0)
    histories, zeroshot, attention, cka = [], [], [], []
    for dataset, method, i, lr, seed in run_keys(methods):
        keys = {"dataset": dataset, "method": method, "lr": lr, "seed": seed}
        diverged = (dataset, method, lr, seed) == DIVERGED
        family, shift = family_of(method), 0.01 * methods.index(method) * (method not in METHODS)
        select = 0.10 if diverged else float(np.clip(SELECT[dataset][family][i] - shift + rng.normal(0, 0.01), 0, 1))
        zs = 0.01 if diverged else float(np.clip(ZEROSHOT[family][i] + shift + rng.normal(0, 0.02), 0, 1))
        drift = 80.0 if diverged else DRIFT[family][i] * (1 + 10 * shift) + rng.normal(0, 0.1)
        histories.append(_history(dataset, method, lr, seed, select, diverged))
        zeroshot.append({"tasks": [
            {
                **keys,
                "task": PRETRAINED["task"],
                "templates": "single",
                "n_templates": 1,
                "n_images": 1000,
                "top1": zs,
                "top5": min(1.0, zs + 0.2),
                "balanced_acc": zs,
            }
        ]})
        attention += _attention_rows(keys, drift, rng)
        level = 0.99 - 0.02 * i - (0.1 if family == "full" else 0) + rng.normal(0, 0.005)
        cka += _cka_rows(keys, 0.2 if diverged else level)
    return histories, zeroshot, pd.DataFrame(attention), pd.DataFrame(cka)


def fabricate_curves(runs: pd.DataFrame) -> pd.DataFrame:
    """The curves table of the non-diverged runs: each run interpolated from the pretrained
    model (alpha 0) to itself, and its two epochs."""
    rows = []
    for run in runs[~runs["diverged"]].itertuples():
        keys = {"dataset": run.dataset, "method": run.method, "lr": run.lr, "seed": run.seed}
        for kind, point, share in [("alpha", a, a) for a in (0.0, 0.5, 1.0)] + [("epoch", e, e / 2) for e in (1, 2)]:
            top1 = PRETRAINED["top1"] + share * (run.zs_top1 - PRETRAINED["top1"])
            indomain = 0.1 + share * (run.final_test_acc - 0.1)
            rows.append({**keys, "kind": kind, "point": float(point), "indomain_acc": indomain, "zs_top1": top1,
                         "drift_entropy_pct": share * run.drift_entropy_pct,
                         "drift_erf_pct": share * run.drift_erf95_pct, "zs_retention": top1 / PRETRAINED["top1"]})
    return pd.DataFrame(rows)


def fabricate_traces(runs: pd.DataFrame, points: int = 10) -> pd.DataFrame:
    """The entropy traces of the non-diverged runs: each falls linearly to its final drift."""
    rows = []
    for run in runs[~runs["diverged"]].itertuples():
        for step in range(1, points + 1):
            drift = run.drift_entropy_pct * step / points
            rows.append({"dataset": run.dataset, "method": run.method, "lr": run.lr, "seed": run.seed, "step": step,
                         "fraction": step / points, "entropy": BASELINE["entropy"] * (1 + drift / 100),
                         "drift_pct": drift})
    return pd.DataFrame(rows)


WEIGHT_SETTINGS = {"top_k": 5, "epsilon": 0.5, "top_k_sweep": [3, 5], "epsilon_sweep": [0.3, 0.5],
                   "energy_share": 0.9, "overlap_rank": 3, "epochs": [1, 2]}
_TOWER = [(0, "q_proj"), (0, "c_fc"), (1, "q_proj"), (1, "c_fc"), (-1, "proj")]


def fabricate_weights(histories: list[dict]):
    """(weights, intruder_sweep, weight_overlap) of the fabricated runs, measured by clipdrift's own
    code on a 5-matrix tower of 24 × 24 random matrices: Full FT changes every matrix at full rank,
    LoRA the q matrices at rank 2 and the projection (one direction per dataset and method that
    every seed shares, plus the seed's own); both grow with the rate. A diverged run's weights are
    not finite."""
    import torch

    from clipdrift.measure.settings import WeightSettings
    from clipdrift.measure.weight_drift import pretrained_bases, subspace_overlaps, weight_drift

    settings = WeightSettings(**WEIGHT_SETTINGS)
    generator = torch.Generator().manual_seed(0)
    pretrained = {key: torch.randn(24, 24, generator=generator, dtype=torch.float64) for key in _TOWER}
    bases = pretrained_bases(pretrained)
    tables, spaces = ([], []), []
    for history in histories:
        keys = {key: history[key] for key in ("dataset", "method", "lr", "seed")}
        tuned = _tuned_tower(pretrained, keys, history.get("status") == "diverged")
        epochs = [(epoch, lambda share=epoch / 3, tuned=tuned: {k: pretrained[k] + share * (tuned[k] - pretrained[k])
                                                                 for k in tuned})
                  for epoch in settings.epochs]
        drift, sweep, subspaces = weight_drift(pretrained, tuned, 3, epochs, bases, settings)
        for table, frame in zip(tables, (drift, sweep)):
            table.append(frame.assign(**keys))
        spaces.append((keys, subspaces))
    return pd.concat(tables[0], ignore_index=True), pd.concat(tables[1], ignore_index=True), subspace_overlaps(spaces)


def _tuned_tower(pretrained, keys, diverged):
    import torch

    shared = torch.Generator().manual_seed(zlib.crc32(f"{keys['dataset']}/{family_of(keys['method'])}".encode()))
    own = torch.Generator().manual_seed(int(keys["seed"]) * 1000 + LRS.index(keys["lr"]))
    scale = 0.02 * (1 + LRS.index(keys["lr"]))
    tuned = {}
    for key, weight in pretrained.items():
        if family_of(keys["method"]) == "lora":
            if key[1] == "c_fc":
                tuned[key] = weight.clone()
                continue
            direction = torch.randn(24, 2, generator=shared, dtype=torch.float64) + 0.5 * torch.randn(
                24, 2, generator=own, dtype=torch.float64)
            change = 15 * scale * direction @ torch.randn(2, 24, generator=own, dtype=torch.float64)
        else:
            change = scale * (torch.randn(24, 24, generator=shared, dtype=torch.float64)
                              + torch.randn(24, 24, generator=own, dtype=torch.float64))
        tuned[key] = weight + change
    if diverged:
        tuned[_TOWER[0]] = torch.full((24, 24), float("nan"), dtype=torch.float64)
    return tuned


INTERVENTION_KEEPS = (0.0, 0.5, 1.0)
INTERVENTION_GAIN = {"intruders": 0.10, "uniform": 0.04}  # zero-shot top-1 given back at keep 0 (LoRA; Full FT half)


def fabricate_intervention(runs: pd.DataFrame) -> pd.DataFrame:
    """The intervention rows of the non-diverged runs: removing intruders (keep 0) gives back
    INTERVENTION_GAIN[kind] of zero-shot top-1 (half that for Full FT) and costs in-domain accuracy
    alike, linearly in 1 − keep; at keep 1 both kinds are the run."""
    rows = []
    for run in runs[~runs["diverged"]].itertuples():
        share = 1.0 if family_of(run.method) == "lora" else 0.5
        for kind, gain in INTERVENTION_GAIN.items():
            for keep in INTERVENTION_KEEPS:
                back = share * gain * (1 - keep)
                rows.append({"dataset": run.dataset, "method": run.method, "lr": run.lr, "seed": run.seed,
                             "kind": kind, "keep": keep, "task": PRETRAINED["task"], "weight_distance": 0.1 * keep,
                             "indomain_acc": run.final_test_acc - back / 2, "zs_top1": run.zs_top1 + back,
                             "drift_entropy_pct": run.drift_entropy_pct * keep, "drift_erf_pct": 0.0})
    return pd.DataFrame(rows)
