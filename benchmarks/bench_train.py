"""Training images/s of the engine vs a bare hand-written PyTorch loop doing the same math.

Both run in this process on the same model, data and thread count: AdamW (weight decay 0.01,
one group), warmup + cosine schedule, cross-entropy, gradient clipping at 1.0, random flips and
CLIP normalisation of uint8 batches. The engine additionally checks every step for a non-finite
loss, tracks loss/accuracy, draws per-epoch orders, and updates a progress bar; its images/s
comes from its own history (training time only, evaluation excluded), the bare loop's from a
timer around its loop. Runs alternate so machine load hits both alike.

Run: ``python benchmarks/bench_train.py [--backbone clipdrift-tiny] [--images 512] [--epochs 2]``
(``--backbone ViT-B-32-quickgelu`` builds the paper's architecture with random weights; on a
CPU it is slow). Target: engine >= 0.9x the bare loop. Then the cost of each attention
regulariser (APR, entropy floor) per training step, against the plain engine, and the cost of
polling for a stop request (the SIGTERM/SIGUSR1/SIGINT handlers of a workflow fine-tune) after
every step. Target: none measurable. Last, the grace a stop needs (profiles/slurm's warning
signal comes that long before a time limit): the rest of a step, an evaluation of the selection
split, and the write of the resume state, with the state's size.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from clipdrift.data.split import ImageSplit
from clipdrift.model.adapters import MethodConfig, apply_method, trainable_parameters
from clipdrift.model.backbones import BackboneSpec, build_classifier, image_preprocess_config
from clipdrift.train.config import TrainConfig, lr_factor, warmup_steps
from clipdrift.train.engine import TrainingStopped, finetune
from clipdrift.train.evaluate import evaluate
from clipdrift.train.regulariser_config import RegulariserConfig


def make_model(backbone: str, n_classes: int, method: str):
    torch.manual_seed(0)
    return apply_method(build_classifier(BackboneSpec(backbone), n_classes, seed=0), MethodConfig(method))


def random_split(n: int, size: int, n_classes: int, seed: int) -> ImageSplit:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator)
    return ImageSplit(images, torch.randint(0, n_classes, (n,), generator=generator), [str(k) for k in range(n_classes)])


def bare_loop(model, train: ImageSplit, epochs: int, batch_size: int, lr: float, device: torch.device) -> float:
    """The same math, written the plain way; returns training images/s."""
    cfg = image_preprocess_config(model.clip)
    mean = torch.tensor(cfg["mean"], device=device).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"], device=device).view(1, 3, 1, 1)
    model.to(device).train()
    params = trainable_parameters(model)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    total = epochs * math.ceil(len(train) / batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total, warmup_steps(total, 0.05)))
    images, labels = train.images.to(device), train.labels.to(device)
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(train), generator=generator).to(device)
        for first in range(0, len(train), batch_size):
            index = order[first:first + batch_size]
            x = images[index]
            flip = (torch.rand(len(index), generator=generator) < 0.5).to(device).view(-1, 1, 1, 1)
            x = (torch.where(flip, x.flip(-1), x).float() / 255.0 - mean) / std
            loss = F.cross_entropy(model(x), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return epochs * len(train) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="clipdrift-tiny")
    parser.add_argument("--method", default="full", choices=["full", "lora"])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads for both loops")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))

    probe_model = make_model(args.backbone, 10, args.method)
    size = image_preprocess_config(probe_model.clip)["size"][0]
    train, select = random_split(args.images, size, 10, 0), random_split(64, size, 10, 1)
    # Precision as the engine would pick it; the bare loop runs fp32, so compare on CPU or with
    # --device cuda and amp off.
    config = TrainConfig(epochs=args.epochs, lr=1e-5, batch_size=args.batch_size, device=str(device), amp="off")

    engine, bare = [], []
    for _ in range(args.repeats):
        engine.append(finetune(make_model(args.backbone, 10, args.method), train, select, config,
                               progress=False).history["images_per_s"])
        bare.append(bare_loop(make_model(args.backbone, 10, args.method), train, args.epochs, args.batch_size,
                              1e-5, device))
    engine_rate, bare_rate = statistics.median(engine), statistics.median(bare)
    print(f"{args.backbone} ({args.method}), {size}px, {args.images} images x {args.epochs} epochs, batch "
          f"{args.batch_size}, {device}, fp32, torch threads {torch.get_num_threads()}")
    print(f"engine   : {engine_rate:9.1f} images/s  (runs: {', '.join(f'{v:.0f}' for v in engine)})")
    print(f"bare loop: {bare_rate:9.1f} images/s  (runs: {', '.join(f'{v:.0f}' for v in bare)})")
    print(f"ratio    : {engine_rate / bare_rate:9.2f}x  (target >= 0.9x)")
    regulariser_costs(args, train, select, config, engine_rate)
    stop_polling_cost(args, train, select, config)
    stop_grace(args, train, select, config, engine_rate)


def regulariser_costs(args, train: ImageSplit, select: ImageSplit, config: TrainConfig, plain_rate: float) -> None:
    """The cost per step of each attention regulariser: the engine's images/s with it against without.

    Both read the attention of the training forward (explicit softmax instead of the fused kernel);
    APR also runs the frozen pretrained tower on every batch.
    """
    steps = math.ceil(len(train) / args.batch_size) * args.epochs
    for kind in ("apr", "entropy_floor"):
        regularised = replace(config, regulariser=RegulariserConfig(kind, 0.1))
        rates = [finetune(make_model(args.backbone, 10, args.method), train, select, regularised,
                          progress=False, probe=select).history["images_per_s"] for _ in range(args.repeats)]
        rate = statistics.median(rates)
        extra_ms = (args.batch_size / rate - args.batch_size / plain_rate) * 1000
        print(f"{kind:13s}: {rate:9.1f} images/s  ({plain_rate / rate:.2f}x the time of a plain step, "
              f"{extra_ms:+.1f} ms per step of {args.batch_size}; {steps} steps per run)")


def stop_polling_cost(args, train: ImageSplit, select: ImageSplit, config: TrainConfig) -> None:
    """Steps with the workflow's signal handlers installed and polled after every step, against
    steps without (alternating runs, medians)."""
    from clipdrift.pipeline.jobs.signals import stop_on_signals

    plain, polled = [], []
    for _ in range(args.repeats):
        plain.append(finetune(make_model(args.backbone, 10, args.method), train, select, config,
                              progress=False).history["images_per_s"])
        with stop_on_signals() as stop:
            polled.append(finetune(make_model(args.backbone, 10, args.method), train, select, config, progress=False,
                                   stop=stop).history["images_per_s"])
    plain_rate, polled_rate = statistics.median(plain), statistics.median(polled)
    spread = (max(plain) - min(plain)) / plain_rate
    print(f"stop polling : {polled_rate:9.1f} images/s with the signal handlers vs {plain_rate:.1f} without "
          f"({polled_rate / plain_rate:.3f}x; run-to-run spread of the plain runs {100 * spread:.1f}%)")


def _stop_at_poll(number: int):
    """A stop callable that says yes the ``number``-th time it is asked, and the times it was asked."""
    asked: list[float] = []

    def stop() -> bool:
        asked.append(time.perf_counter())
        return len(asked) == number

    return stop, asked


def stop_grace(args, train: ImageSplit, select: ImageSplit, config: TrainConfig, rate: float) -> None:
    """What a stop request costs at worst: it waits for the step in progress, or for the epoch's
    last step and evaluation, then writes the resume state (weights, optimiser moments) and, after
    an improving epoch, the best weights. Measured on a stop after step 1 of epoch 2, whose store
    holds both."""
    steps = math.ceil(len(train) / config.batch_size)
    if steps < 2:
        print("stop grace   : needs >= 2 steps per epoch (--images >= 2 x --batch-size)")
        return
    writes, sizes = [], {}
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as store:
            stop, asked = _stop_at_poll(steps + 1)  # polled after each step but an epoch's last, and each epoch
            try:
                finetune(make_model(args.backbone, 10, args.method), train, select, replace(config, epochs=2),
                         resume=store, progress=False, stop=stop)
            except TrainingStopped:
                writes.append(time.perf_counter() - asked[-1])
            sizes = {f.stem: f.stat().st_size for f in Path(store).glob("*.safetensors")}
    state, best = sizes.pop("state"), sum(sizes.values())
    write_s = statistics.median(writes)
    started = time.perf_counter()
    evaluate(make_model(args.backbone, 10, args.method), select, device=config.device)
    per_image_s = (time.perf_counter() - started) / len(select)
    step_s, worst_write = config.batch_size / rate, write_s * (state + best) / state
    print(f"stop grace   : resume state {state / 1e6:.1f} MB written in {write_s:.2f} s ({state / 1e6 / write_s:.0f} MB/s; "
          f"runs: {', '.join(f'{v:.2f}' for v in writes)}), best weights {best / 1e6:.1f} MB; a step {step_s:.2f} s, "
          f"evaluation {1000 * per_image_s:.2f} ms per selection image")
    print(f"               worst case: a step + evaluating N selection images + {(state + best) / 1e6:.0f} MB "
          f"= {step_s + worst_write:.1f} s + N x {1000 * per_image_s:.2f} ms at this disk's speed")


if __name__ == "__main__":
    main()
