"""Images/s of the cached loader vs decoding the image files every epoch.

Fabricates an EuroSAT-like directory (64x64 JPEGs in torchvision's real layout), then times one
training epoch of input batches, resized to the protocol's 224 px, two ways:

- decode: torchvision's EuroSAT + Resize/CenterCrop/flip/ToTensor/Normalize through a
  DataLoader, i.e. reading and decoding every JPEG every epoch;
- cached: ``clipdrift.data.real.prepare_real_dataset`` once (timed separately, it is paid once per
  study), then the training engine's loader (``clipdrift.train.batches.CachedBatches``) over the uint8
  cache.

Run: ``python benchmarks/bench_data.py [--per-class 40] [--size 224] [--workers 0]``.
On a shared machine the numbers move with the load; the ratio is what matters (target >= 10x).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clipdrift.data.real import prepare_real_dataset
from clipdrift.train.batches import CachedBatches

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fakedata import EUROSAT_CLASSES, class_colour  # noqa: E402

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def fabricate(root: Path, per_class: int) -> None:
    """Noisy 64x64 JPEGs (noise makes JPEG decoding cost what it does on real photos)."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(EUROSAT_CLASSES):
        folder = root / "eurosat" / "2750" / name
        folder.mkdir(parents=True, exist_ok=True)
        for item in range(per_class):
            pixels = np.array(class_colour(label, len(EUROSAT_CLASSES))) + rng.integers(-40, 40, (64, 64, 3))
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{name}_{item + 1}.jpg", quality=90)


def decode_epoch(root: Path, size: int, batch_size: int, workers: int) -> float:
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    transform = transforms.Compose([
        transforms.Resize(size, interpolation=transforms.InterpolationMode.BILINEAR),
        transforms.CenterCrop(size),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(MEAN, STD),
    ])
    loader = DataLoader(datasets.EuroSAT(root, transform=transform), batch_size=batch_size, shuffle=True,
                        num_workers=workers)
    seen, start = 0, time.perf_counter()
    for images, _ in loader:
        seen += len(images)
    return seen / (time.perf_counter() - start)


def cached_epoch(batches: CachedBatches, n: int, batch_size: int) -> float:
    generator = torch.Generator().manual_seed(0)
    order, flips = torch.randperm(n, generator=generator), torch.rand(n, generator=generator) < 0.5
    start = time.perf_counter()
    for first in range(0, n, batch_size):
        images, _ = batches.take(order[first:first + batch_size], flips[first:first + batch_size])
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers for the decode path")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (1 avoids OpenMP spin-waiting on a loaded, shared machine)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        fabricate(root, args.per_class)
        n = args.per_class * len(EUROSAT_CLASSES)
        start = time.perf_counter()
        splits, _ = prepare_real_dataset("eurosat", root, image_size=args.size,
                                         split_sizes={"train": n, "val": 0, "test": 0})
        build = time.perf_counter() - start
        batches = CachedBatches(splits["train"], torch.device("cpu"), False, torch.tensor(MEAN), torch.tensor(STD))
        decode, cached = [], []
        for _ in range(args.repeats):  # interleaved, so load on the machine hits both alike
            decode.append(decode_epoch(root, args.size, args.batch_size, args.workers))
            cached.append(cached_epoch(batches, n, args.batch_size))
    decode_rate, cached_rate = float(np.median(decode)), float(np.median(cached))
    print(f"images: {n} EuroSAT-like 64x64 JPEGs -> {args.size}px, batch {args.batch_size}, "
          f"torch threads {torch.get_num_threads()}, decode workers {args.workers}")
    print(f"cache build (once per study): {build:.2f} s = {n / build:.0f} images/s")
    print(f"decode every epoch : {decode_rate:10.0f} images/s  (median of {args.repeats})")
    print(f"cached loader      : {cached_rate:10.0f} images/s  (median of {args.repeats})")
    print(f"speed-up           : {cached_rate / decode_rate:10.1f}x  (target >= 10x)")


if __name__ == "__main__":
    main()
