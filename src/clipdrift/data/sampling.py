"""Deterministic sampling: hash-ranked orders, stratified splits, the fixed class-balanced probe
subset and its sensitivity subsets, identical on every machine (no random stream involved).
"""

from __future__ import annotations

import hashlib

import torch

from clipdrift.core.errors import UserFacingError
from clipdrift.data.split import ImageSplit

PROBE_SIZE = 200


PROBE_SEED = 42


class SplitError(UserFacingError, ValueError):
    """Requested split sizes do not fit the data."""


def seeded_order(n: int, seed: int, salt: str = "") -> torch.Tensor:
    """A permutation of ``range(n)`` fixed by ``(seed, salt)``.

    Each index is ranked by a BLAKE2 hash of ``seed/salt/index`` instead of a library RNG, so
    the order is identical on every machine and every torch/numpy version: the split manifest
    can be recomputed and compared anywhere.
    """
    def key(index: int) -> bytes:
        return hashlib.blake2b(f"{seed}/{salt}/{index}".encode(), digest_size=8).digest()

    return torch.tensor(sorted(range(n), key=key), dtype=torch.long)


def _labels_list(labels) -> list[int]:
    return [int(v) for v in torch.as_tensor(labels).reshape(-1).tolist()]


def _indices_by_class(labels: list[int], seed: int, salt: str) -> dict[int, list[int]]:
    """Indices of each class, each list in the seeded order (classes in ascending order)."""
    by_class: dict[int, list[int]] = {}
    for index in seeded_order(len(labels), seed, salt).tolist():
        by_class.setdefault(labels[index], []).append(index)
    return dict(sorted(by_class.items()))


def _proportional_counts(available: dict[int, int], total: int) -> dict[int, int]:
    """Split ``total`` over classes in proportion to ``available`` (largest remainder, exact)."""
    pool = sum(available.values())
    quotas = {c: total * n / pool if pool else 0.0 for c, n in available.items()}
    counts = {c: int(q) for c, q in quotas.items()}
    # Ties in the remainder go to the lower class id, so the result never depends on dict order.
    by_remainder = sorted(quotas, key=lambda c: (-(quotas[c] - counts[c]), c))
    for c in by_remainder[: total - sum(counts.values())]:
        counts[c] += 1
    return counts


def stratified_split(labels, sizes: dict[str, int], seed: int) -> dict[str, torch.Tensor]:
    """Disjoint, class-stratified index sets of exactly ``sizes[name]`` items each.

    Splits are filled in the order of ``sizes``; each takes from every class in proportion to
    what that class still has left, so class frequencies match the whole set (up to rounding).
    Items beyond ``sum(sizes)`` are left out. Indices come back sorted.
    """
    labels = _labels_list(labels)
    for name, size in sizes.items():
        if int(size) != size or size < 0:
            raise SplitError(f"split size {name}={size!r} must be a non-negative integer")
    if sum(sizes.values()) > len(labels):
        raise SplitError(
            f"split sizes {dict(sizes)} add up to {sum(sizes.values())} but the data has only "
            f"{len(labels)} items: lower the split sizes."
        )
    remaining = _indices_by_class(labels, seed, "split")
    splits = {}
    for name, size in sizes.items():
        counts = _proportional_counts({c: len(ix) for c, ix in remaining.items()}, int(size))
        taken = []
        for c, count in counts.items():
            taken += remaining[c][:count]
            remaining[c] = remaining[c][count:]
        splits[name] = torch.tensor(sorted(taken), dtype=torch.long)
    return splits


def _balanced_counts(available: dict[int, int], n: int, class_order: list[int]) -> dict[int, int]:
    """``n`` items spread as evenly as possible over classes, capped by what each class has."""
    counts = dict.fromkeys(available, 0)
    left = min(n, sum(available.values()))
    while left > 0:
        open_classes = [c for c in class_order if counts[c] < available[c]]
        share = left // len(open_classes)
        if share == 0:  # fewer items than open classes: one more each, in the seeded class order
            for c in open_classes[:left]:
                counts[c] += 1
            break
        for c in open_classes:
            extra = min(share, available[c] - counts[c])
            counts[c] += extra
            left -= extra
    return counts


def probe_indices(labels, n: int = PROBE_SIZE, seed: int = PROBE_SEED) -> torch.Tensor:
    """A class-balanced subset of ``n`` indices, the same for every run (sorted).

    Each class gets ``n // n_classes`` items; the remainder goes one each to classes in a
    seeded order; a class with too few items gives its share to the others.
    """
    labels = _labels_list(labels)
    by_class = _indices_by_class(labels, seed, "probe")
    classes = list(by_class)
    class_order = [classes[i] for i in seeded_order(len(classes), seed, "probe-classes").tolist()]
    counts = _balanced_counts({c: len(ix) for c, ix in by_class.items()}, n, class_order)
    chosen = [index for c, count in counts.items() for index in by_class[c][:count]]
    return torch.tensor(sorted(chosen), dtype=torch.long)


def probe_subsets(split: ImageSplit, n: int, seeds) -> dict[int, ImageSplit]:
    """The class-balanced probe of ``n`` images drawn from ``split`` with each seed (seed → subset)."""
    return {int(seed): split.subset(probe_indices(split.labels, n, int(seed))) for seed in seeds}


def class_counts(labels, n_classes: int) -> list[int]:
    """How many items of each class ``0..n_classes-1``."""
    return torch.bincount(torch.as_tensor(labels, dtype=torch.long).reshape(-1), minlength=n_classes).tolist()


def with_probe(splits: dict[str, ImageSplit], manifest: dict, *, source: str = "test",
               n: int = PROBE_SIZE, seed: int = PROBE_SEED) -> tuple[dict[str, ImageSplit], dict]:
    """Copies of ``splits`` and ``manifest`` with the class-balanced ``probe`` drawn from ``source``.

    The manifest's probe entry records its indices into ``source`` and their source ids.
    """
    if source not in splits:
        raise SplitError(f"probe source split {source!r} does not exist (have {sorted(splits)})")
    index = probe_indices(splits[source].labels, n, seed)
    probe = splits[source].subset(index)
    source_entry = manifest["splits"].get(source, {})
    entry = {
        "source_split": source,
        "seed": seed,
        "n": len(index),
        "class_counts": class_counts(probe.labels, len(probe.class_names)),
        "indices": index.tolist(),
    }
    if "ids" in source_entry:
        entry["ids"] = [source_entry["ids"][i] for i in index.tolist()]
    return {**splits, "probe": probe}, {**manifest, "splits": {**manifest["splits"], "probe": entry}}


# ---------------------------------------------------------------------------------------------
# From a dataset's official partitions to train/val/test
# ---------------------------------------------------------------------------------------------

DEFAULT_VAL_FRACTION = 0.1
SPLIT_FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}  # drawn from a dataset without an official split


def _fraction_sizes(n: int) -> dict[str, int]:
    val, test = round(SPLIT_FRACTIONS["val"] * n), round(SPLIT_FRACTIONS["test"] * n)
    return {"train": n - val - test, "val": val, "test": test}


def split_plan(labels: dict[str, list[int]], *, sizes: dict[str, int] | None = None, default_sizes=None,
               val_fraction: float = DEFAULT_VAL_FRACTION, seed: int = 0,
               wanted=("train", "val", "test")) -> dict[str, tuple[str, torch.Tensor]]:
    """Split name → (official partition it is drawn from, indices into that partition).

    ``labels``: per official partition. Official train/val/test are kept as given; a dataset with
    train (or trainval) and test gets a stratified val of ``val_fraction`` carved from its train;
    one without an official split (``all``) is drawn stratified with ``sizes`` (else
    ``default_sizes``, else 80/10/10 %). ``sizes`` on official splits take a stratified subset of
    each. Only the ``wanted`` splits are returned. A held-out task wants only its test: all of an
    unsplit source, or its official test, with ``sizes["test"]`` a cap (a stratified subset of at
    most that many; a smaller source is used whole).
    """
    if tuple(wanted) == ("test",):
        part = "all" if "all" in labels else "test"
        available = len(labels[part])
        cap = (sizes or {}).get("test")
        return {"test": _subsample(labels, part, torch.arange(available), None if cap is None else min(cap, available),
                                   seed, "test")}
    if "all" in labels:
        chosen = dict(sizes or default_sizes or _fraction_sizes(len(labels["all"])))
        if set(chosen) != {"train", "val", "test"}:
            raise SplitError(f"split sizes must name train, val and test, got {sorted(chosen)}")
        plan = {split: ("all", ix) for split, ix in stratified_split(labels["all"], chosen, seed).items()}
    else:
        plan = {split: (split, torch.arange(len(labels[split]))) for split in ("train", "val", "test") if split in labels}
        if "val" not in plan and {"train", "val"} & set(wanted):
            plan.update(_carve_val(labels, val_fraction, seed))
        plan = {split: _subsample(labels, part, index, (sizes or {}).get(split), seed, split)
                for split, (part, index) in plan.items()}
    return {split: plan[split] for split in wanted}


def _carve_val(labels: dict[str, list[int]], val_fraction: float, seed: int) -> dict[str, tuple[str, torch.Tensor]]:
    if not 0.0 <= val_fraction < 1.0:
        raise SplitError(f"val_fraction must be in [0, 1), got {val_fraction}")
    source = "trainval" if "trainval" in labels else "train"
    n = len(labels[source])
    n_val = round(val_fraction * n)
    carved = stratified_split(labels[source], {"train": n - n_val, "val": n_val}, seed)
    return {"train": (source, carved["train"]), "val": (source, carved["val"])}


def _subsample(labels, part: str, index: torch.Tensor, size: int | None, seed: int,
               split: str) -> tuple[str, torch.Tensor]:
    if size is None or size == len(index):
        return part, index
    within = torch.as_tensor(labels[part], dtype=torch.long)[index]
    if size > len(index):
        raise SplitError(f"split size {split}={size} is more than the {len(index)} images the {split} split has: "
                         "lower it (or leave it out to keep them all)")
    return part, index[stratified_split(within, {split: size}, seed)[split]]
