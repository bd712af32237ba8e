"""Benchmark the drift metrics on this machine (not a test: prints numbers, asserts nothing).

1. Attention capture overhead: ViT-B/32 (random weights, no download) forward at batch 32 with
   the explicit-softmax capture path vs the plain scaled-dot-product path (target ≤ 1.3×), and
   the cost of turning a batch's captured maps into every attention statistic.
2. Streamed CKA on n × 768 features: time, and peak memory measured in a fresh subprocess per
   n (target: independent of n), next to a one-shot computation that holds all features.
   Peak memory is VmHWM after resetting it through /proc/self/clear_refs (Linux only).

    python benchmarks/bench_metrics.py [--repeats 5] [--device cpu|cuda] [--threads N] [--skip-attention] [--skip-cka]

Numbers on a shared machine are inflated by contention; the ratios are what to read.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

FEATURES = 768
CKA_BATCH = 500


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def bench_attention(repeats: int, device: torch.device) -> None:
    from clipdrift.measure.drift import AttentionConfig, batch_attention_stats
    from clipdrift.model.backbones import BackboneSpec, capture_attention, convert_image_tower_attention, create_clip

    clip = create_clip(BackboneSpec("ViT-B-32-quickgelu")).to(device)
    convert_image_tower_attention(clip)
    images = torch.randn(32, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(device)
    config = AttentionConfig()
    layer_maps = []

    def plain():
        clip.encode_image(images)

    def captured():
        with capture_attention(clip) as maps:
            clip.encode_image(images)
        layer_maps[:] = [layer.pop() for layer in maps]

    def stats():
        batch_attention_stats(layer_maps, config)

    times = {"plain": [], "capture": [], "stats": []}
    with torch.no_grad():
        plain(), captured(), stats()  # warm-up
        for _ in range(repeats):  # interleaved, so load changes hit both modes alike
            times["plain"].append(_timed(plain, device))
            times["capture"].append(_timed(captured, device))
            times["stats"].append(_timed(stats, device))
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"ViT-B/32, batch 32, {device}, {torch.get_num_threads()} threads, median of {repeats}:")
    print(f"  forward, plain (SDPA)         {median['plain'] * 1e3:9.1f} ms")
    print(f"  forward, attention capture    {median['capture'] * 1e3:9.1f} ms   "
          f"ratio {median['capture'] / median['plain']:.3f} (target <= 1.3)")
    print(f"  all attention stats per batch {median['stats'] * 1e3:9.1f} ms   "
          f"(entropy/ERF/Gini/p2p/diversity maps/rollout, float64)")
    print(f"  capture + stats vs plain      ratio {(median['capture'] + median['stats']) / median['plain']:.3f}")


def _feature_batches(n: int):
    generator = torch.Generator().manual_seed(0)
    mixing = torch.randn(FEATURES, FEATURES, generator=generator) / FEATURES**0.5
    for start in range(0, n, CKA_BATCH):
        x = torch.randn(min(CKA_BATCH, n - start), FEATURES, generator=generator) + 5.0
        yield x, x @ mixing + 0.5 * torch.randn(x.shape, generator=generator)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def _reset_peak_rss_kib() -> int:
    """Reset the process's peak RSS (VmHWM) to its current RSS; returns that RSS in KiB."""
    # imports peak above what CKA needs, so the plain ru_maxrss would hide the growth
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    return _status_kib("VmRSS")


def cka_worker(n: int, mode: str) -> dict:
    """Run in a fresh process: peak RSS growth while computing CKA on n × 768 features."""
    from clipdrift.measure.cka import CKAAccumulator

    before = _reset_peak_rss_kib()
    start = time.perf_counter()
    accumulator = CKAAccumulator()
    if mode == "streamed":
        for x, y in _feature_batches(n):
            accumulator.update(x, y)
    else:  # one shot: every feature in memory at once
        pairs = list(_feature_batches(n))
        accumulator.update(torch.cat([x for x, _ in pairs]), torch.cat([y for _, y in pairs]))
    linear, debiased = accumulator.linear(), accumulator.debiased()
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM")
    state = sum(t.numel() * t.element_size() for t in vars(accumulator).values() if isinstance(t, torch.Tensor))
    state += sum(t.numel() * t.element_size() for side in (accumulator._x, accumulator._y)
                 for t in vars(side).values() if isinstance(t, torch.Tensor))
    return {"n": n, "mode": mode, "seconds": seconds, "peak_growth_mb": (peak - before) / 1024,
            "state_mb": state / 2**20, "linear": linear, "debiased": debiased}


def bench_cka() -> None:
    print(f"CKA on n x {FEATURES} features (float64 statistics, batches of {CKA_BATCH}), fresh process each:")
    for mode in ("streamed", "one-shot"):
        for n in (1_000, 10_000, 40_000) if mode == "streamed" else (1_000, 10_000):
            out = subprocess.run([sys.executable, __file__, "--cka-worker", str(n), mode],
                                 check=True, capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            print(f"  {mode:9s} n={n:6d}: {r['seconds']:6.2f} s, peak RSS growth {r['peak_growth_mb']:7.1f} MB, "
                  f"accumulator state {r['state_mb']:5.1f} MB, linear {r['linear']:.4f}, debiased {r['debiased']:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--skip-attention", action="store_true")
    parser.add_argument("--skip-cka", action="store_true")
    parser.add_argument("--cka-worker", nargs=2, metavar=("N", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cka_worker:
        print(json.dumps(cka_worker(int(args.cka_worker[0]), args.cka_worker[1])))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs visible, load average {os.getloadavg()}")
    if not args.skip_attention:
        bench_attention(args.repeats, torch.device(args.device))
    if not args.skip_cka:
        bench_cka()


if __name__ == "__main__":
    main()
