"""Calibrate and time the synthetic world's default study (issue 5), with the real pipeline.

Pretrains the tiny backbone (or loads one), generates the world tasks, then fine-tunes it with
Full FT and LoRA over a learning-rate grid and seeds through ``clipdrift.train.engine.finetune``, and
scores each run exactly as the workflow does: test accuracy, zero-shot top-1 on
``world-cifar100`` (``clipdrift.measure.zeroshot``) and the all-layer CLS→patch attention entropy drift
(``clipdrift.measure``). Prints measured times and whether the issue's targets are met.

    python benchmarks/bench_world.py                      # the recommended default study
    python benchmarks/bench_world.py --seeds 7 --lrs 1e-4 1e-3 --tasks world-eurosat
    python benchmarks/bench_world.py --backbone /tmp/world/backbone.safetensors   # reuse

Timings on a shared machine are inflated by whatever else runs: compare the printed CPU load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import open_clip  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from clipdrift.analysis.tables import attention_summary  # noqa: E402
from clipdrift.data.classnames import template_texts  # noqa: E402
from clipdrift.data.sampling import with_probe  # noqa: E402
from clipdrift.data.world.render import WorldConfig  # noqa: E402
from clipdrift.data.world.tasks import ZEROSHOT_TASK, task_splits  # noqa: E402
from clipdrift.measure.drift import AttentionConfig, CKAConfig  # noqa: E402
from clipdrift.measure.extract import extract, probe_reference  # noqa: E402
from clipdrift.measure.tables import with_run_columns  # noqa: E402
from clipdrift.measure.zeroshot import evaluate, text_classifier  # noqa: E402
from clipdrift.model.adapters import MethodConfig, apply_method  # noqa: E402
from clipdrift.model.backbones import BackboneSpec, build_classifier  # noqa: E402
from clipdrift.train.config import TrainConfig  # noqa: E402
from clipdrift.train.engine import finetune  # noqa: E402
from clipdrift.train.pretrain import PretrainConfig, pretrain_backbone  # noqa: E402

MODEL = "clipdrift-tiny"
DEFAULT_LRS = ("1e-04", "5e-04", "1e-03", "5e-03")
DEFAULT_EPOCHS = {"world-eurosat": 4, "world-pets": 5}
DEFAULT_SIZES = {"train": 1600, "val": 400, "test": 1000}
ZEROSHOT_SIZE = 2000


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("/tmp/clipdrift-bench-world"))
    parser.add_argument("--backbone", type=Path, help="reuse a pretrained backbone.safetensors (skips pretraining)")
    parser.add_argument("--pretrain-steps", type=int, default=PretrainConfig.steps)
    parser.add_argument("--tasks", nargs="+", default=list(DEFAULT_EPOCHS))
    parser.add_argument("--methods", nargs="+", default=["full", "lora"])
    parser.add_argument("--lrs", nargs="+", default=list(DEFAULT_LRS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[7, 11, 19])
    parser.add_argument("--epochs", type=int, help="override the per-task epochs")
    parser.add_argument("--train-size", type=int, default=DEFAULT_SIZES["train"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--world-seed", type=int, default=0)
    return parser.parse_args()


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def get_backbone(args, world: WorldConfig) -> tuple[Path, dict]:
    if args.backbone:
        history_path = args.backbone.with_name("pretrain.json")
        return args.backbone, json.loads(history_path.read_text()) if history_path.exists() else {}
    clip, history = pretrain_backbone(world, PretrainConfig(steps=args.pretrain_steps), progress=sys.stderr.isatty())
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "backbone.safetensors"
    save_file(clip.state_dict(), str(path))
    (args.out / "pretrain.json").write_text(json.dumps(history, indent=2))
    return path, history


def make_tasks(args, world: WorldConfig) -> tuple[dict, float]:
    start = time.perf_counter()
    sizes = {**DEFAULT_SIZES, "train": args.train_size}
    tasks = {}
    for task in args.tasks:
        splits, manifest = task_splits(task, world, sizes)
        tasks[task] = with_probe(splits, manifest)[0]
    tasks[ZEROSHOT_TASK] = task_splits(ZEROSHOT_TASK, world, {"test": ZEROSHOT_SIZE})[0]
    return tasks, time.perf_counter() - start


def entropy_drift(model, pretrained, probe) -> float:
    """The run's entropy drift as the workflow measures it (extraction, then the run table's summary)."""
    attention, cka = AttentionConfig(), CKAConfig()
    tables = extract(model, probe_reference(pretrained, probe, attention, cka), probe, attention, cka)
    run = {"dataset": "world", "method": "run", "lr": "1e-03", "seed": 0}
    return float(attention_summary(with_run_columns(tables["attention"], run))["drift_entropy_pct"].iloc[0])


def run_one(spec, task, splits, zs, method, lr, seed, epochs, threads) -> dict:
    model = apply_method(build_classifier(spec, len(splits["train"].class_names), seed), MethodConfig(method))
    config = TrainConfig(epochs=epochs, lr=float(lr), seed=seed, num_threads=threads, device="cpu")
    start = time.perf_counter()
    result = finetune(model, splits["train"], splits["val"], config, test=splits["test"], progress=False)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    zeroshot = evaluate(model, zs["weights"], zs["split"], device="cpu")["top1"]
    drift = entropy_drift(model, zs["pretrained"], splits["probe"])
    return {
        "task": task, "method": method, "lr": lr, "seed": seed, "epochs": epochs,
        "status": result.history["status"], "test_acc": result.history["final_test_acc"],
        "best_select_acc": result.history["best_select_acc"], "zeroshot_top1": zeroshot,
        "entropy_drift_pct": drift, "finetune_s": train_s, "metrics_s": time.perf_counter() - start,
        "steps": result.history["steps"],
    }


def zeroshot_setup(spec, cifar) -> dict:
    pretrained = build_classifier(spec, 1, seed=0)
    tokenizer = open_clip.get_tokenizer(MODEL)
    weights = text_classifier(pretrained.clip, tokenizer, cifar.class_names, template_texts("single"))
    return {"weights": weights, "split": cifar, "pretrained": pretrained,
            "pretrained_top1": evaluate(pretrained, weights, cifar, device="cpu")["top1"]}


def summarise(rows: list[dict]) -> dict:
    cells = defaultdict(list)
    for row in rows:
        cells[(row["task"], row["method"], row["lr"])].append(row)
    table = {}
    for key, runs in cells.items():
        table[key] = {k: statistics.fmean(r[k] for r in runs)
                      for k in ("test_acc", "zeroshot_top1", "entropy_drift_pct", "finetune_s", "metrics_s")}
        table[key]["n"] = len(runs)
    return table


def print_table(table: dict, pretrained_top1: float) -> None:
    print(f"\npretrained zero-shot top-1 ({ZEROSHOT_TASK}, 'a photo of a {{}}'): {pretrained_top1:.3f}")
    print(f"{'task':14} {'method':6} {'lr':>8} {'n':>2} {'test acc':>8} {'zero-shot':>9} "
          f"{'H drift %':>9} {'ft s':>6} {'metric s':>8}")
    for (task, method, lr), cell in sorted(table.items(), key=lambda kv: (kv[0][0], kv[0][1], float(kv[0][2]))):
        print(f"{task:14} {method:6} {lr:>8} {cell['n']:>2} {cell['test_acc']:8.3f} {cell['zeroshot_top1']:9.3f} "
              f"{cell['entropy_drift_pct']:9.2f} {cell['finetune_s']:6.1f} {cell['metrics_s']:8.1f}")


def print_checks(table: dict, history: dict, lrs: list[str], tasks: list[str]) -> None:
    low, high = min(lrs, key=float), max(lrs, key=float)
    top1 = history.get("zeroshot", {}).get("top1")
    checks = [("pretrained zero-shot >= 0.60", top1 is not None and top1 >= 0.60, f"{top1}")]
    if history.get("time_s") is not None:
        checks.append(("pretraining <= 180 s", history["time_s"] <= 180, f"{history['time_s']:.0f} s"))
    eurosat = [c["test_acc"] for (t, m, _), c in table.items() if t == "world-eurosat" and m == "full"]
    if eurosat:
        checks.append(("Full FT >= 0.90 on world-eurosat at some rate", max(eurosat) >= 0.90, f"{max(eurosat):.3f}"))
    for task in tasks:
        full, lora = table.get((task, "full", high)), table.get((task, "lora", high))
        if full and lora:
            gap = lora["zeroshot_top1"] - full["zeroshot_top1"]
            checks.append((f"{task}: LoRA keeps more zero-shot at {high}", gap > 0.05, f"+{gap:.3f}"))
        full_low = table.get((task, "full", low))
        if full and full_low:
            checks.append((f"{task}: Full FT entropy drift at {high} < at {low}",
                           full["entropy_drift_pct"] < full_low["entropy_drift_pct"],
                           f"{full['entropy_drift_pct']:.2f} vs {full_low['entropy_drift_pct']:.2f}"))
    times = [c["finetune_s"] for c in table.values()]
    if times:
        checks.append(("mean fine-tune run <= 10 s", statistics.fmean(times) <= 10, f"{statistics.fmean(times):.1f} s"))
    print()
    for name, ok, value in checks:
        print(f"[{'PASS' if ok else 'FAIL'}] {name}: {value}")


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    world = WorldConfig(seed=args.world_seed)
    print(f"threads {args.threads}; load average at start {load_average()}")
    backbone, history = get_backbone(args, world)
    if history:
        print(f"pretraining: {history.get('time_s', float('nan')):.1f} s "
              f"(data {history.get('data_time_s', float('nan')):.1f} s), "
              f"loss {history.get('loss_first', float('nan')):.2f} -> {history.get('loss_final', float('nan')):.2f}, "
              f"zero-shot top-1 {history.get('zeroshot', {}).get('top1')}; load {load_average()}")
    spec = BackboneSpec(MODEL, str(backbone))
    tasks, data_s = make_tasks(args, world)
    print(f"world tasks generated in {data_s:.1f} s")
    zs = zeroshot_setup(spec, tasks[ZEROSHOT_TASK]["test"])
    rows = []
    study_start = time.perf_counter()
    for task in args.tasks:
        epochs = args.epochs or DEFAULT_EPOCHS[task]
        for lr in args.lrs:
            for method in args.methods:
                for seed in args.seeds:
                    row = run_one(spec, task, tasks[task], zs, method, lr, seed, epochs, args.threads)
                    rows.append(row)
                    print(f"{task} {method} lr {lr} seed {seed}: acc {row['test_acc']:.3f} zs {row['zeroshot_top1']:.3f} "
                          f"drift {row['entropy_drift_pct']:.2f}% [{row['finetune_s']:.1f} s + {row['metrics_s']:.1f} s, "
                          f"{row['steps']} steps, load {load_average()}]", flush=True)
    table = summarise(rows)
    print_table(table, zs["pretrained_top1"])
    print(f"\nfine-tunes + metrics: {time.perf_counter() - study_start:.0f} s for {len(rows)} runs")
    print_checks(table, history, args.lrs, args.tasks)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "runs.json").write_text(json.dumps({"pretrained_top1": zs["pretrained_top1"], "runs": rows}, indent=2))


if __name__ == "__main__":
    main()
