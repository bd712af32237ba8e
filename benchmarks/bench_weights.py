"""Benchmark the weight-space drift of one ViT-B/32 checkpoint (not a test: prints numbers,
asserts nothing). Random weights, no download: the pretrained tower is a random ViT-B/32, the
"fine-tuned" one a Full FT-like change to every matrix (1% noise) and a LoRA-like rank-8 change of
the q and v matrices; the SVD cost depends only on the shapes (12 blocks x 6 matrices + the
projection: 73 matrices of 768 x 768, 3072 x 768, 768 x 3072 and 512 x 768).

1. The study's pretrained bases (once per study): every pretrained matrix's SVD.
2. One run's weights job at its drift checkpoint: every measure with the k x epsilon sweep (3 x 5)
   and the overlap subspaces; then per kept epoch (no sweep).
3. The same on float32 (what a GPU computes in), and on --device cuda where there is one, with
   the largest difference from float64 in each measure.

    python benchmarks/bench_weights.py [--device cpu|cuda] [--threads N] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

SETTINGS = {"top_k": 10, "epsilon": 0.5, "top_k_sweep": [5, 10, 20], "epsilon_sweep": [0.3, 0.4, 0.5, 0.6, 0.7],
            "energy_share": 0.9, "overlap_rank": 8}


def _towers():
    from clipdrift.model.backbones import BackboneSpec, build_classifier
    from clipdrift.model.weights import tower_matrices

    pretrained = tower_matrices(build_classifier(BackboneSpec("ViT-B-32-quickgelu"), 10, seed=0))
    generator = torch.Generator().manual_seed(0)
    full = {key: weight + 0.01 * weight.std() * torch.randn(weight.shape, generator=generator)
            for key, weight in pretrained.items()}
    lora = {key: weight + (0.05 * torch.randn(weight.shape[0], 8, generator=generator)
                           @ torch.randn(8, weight.shape[1], generator=generator) * weight.std()
                           if key[1] in ("q_proj", "v_proj") else 0) for key, weight in pretrained.items()}
    return pretrained, full, lora


def _timed(fn, device, repeats):
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    from clipdrift.measure import weights
    from clipdrift.measure.settings import WeightSettings
    from clipdrift.measure.weight_drift import pretrained_bases, weight_drift

    settings, no_sweep = WeightSettings(**SETTINGS), WeightSettings(**{**SETTINGS, "top_k_sweep": [10],
                                                                       "epsilon_sweep": [0.5]})
    pretrained, full, lora = _towers()
    print(f"ViT-B/32 image tower: {len(pretrained)} matrices, {sum(w.numel() for w in pretrained.values()) / 1e6:.1f}M "
          f"weights; device {device}, {args.threads} threads, median of {args.repeats}")
    seconds, bases = _timed(lambda: pretrained_bases(pretrained, device), device, args.repeats)
    print(f"pretrained bases (once per study, {weights.working_dtype(device)}): {seconds:.1f} s")
    tables = {}
    for name, tuned in (("Full FT", full), ("LoRA r8 on q, v", lora)):
        seconds, tables[name] = _timed(lambda tuned=tuned: weight_drift(pretrained, tuned, 1, [], bases, settings, device),
                                       device, args.repeats)
        epoch, _ = _timed(lambda tuned=tuned: weight_drift(pretrained, tuned, 1, [], bases, no_sweep, device),
                          device, args.repeats)
        print(f"{name}: drift checkpoint with the sweep {seconds:.1f} s; each kept epoch ~{epoch:.1f} s")
    if device.type == "cpu":
        original = weights.working_dtype
        weights.working_dtype = lambda _device: torch.float32
        try:
            seconds, single = _timed(lambda: weight_drift(pretrained, full, 1, [], bases, settings, device), device, 1)
        finally:
            weights.working_dtype = original
        exact = tables["Full FT"][0]
        worst = {column: float(((single[0][column] - exact[column]).abs() / exact[column].abs().clip(lower=1e-12)).max())
                 for column in ("relative_drift", "intruder_energy", "delta_magnitude", "delta_direction")}
        counts = {column: int((single[0][column] != exact[column]).sum()) for column in ("rank90", "intruders")}
        print(f"float32 on the CPU (a GPU's precision): {seconds:.1f} s; largest relative difference from float64 "
              + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()) + "; matrices whose counts differ "
              + ", ".join(f"{k} {v}" for k, v in counts.items()))


if __name__ == "__main__":
    main()
