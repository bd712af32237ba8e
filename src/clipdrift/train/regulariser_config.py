"""A regulariser's settings, and every rule about them (standard library only: the study config
is checked against them when it is read, and each fine-tune builds them again).

What each kind computes: :mod:`clipdrift.train.regularisers`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

REGULARISERS = ("apr", "entropy_floor")
# Each kind's options and their values; the first is the published definition, the default.
OPTIONS = {"apr": {"direction": ("current_first", "pretrained_first")},
           "entropy_floor": {"hinge": ("row", "layer_mean"), "layers": ("sum", "mean")}}
PUBLISHED_FLOOR_RATIO = 0.7
# The entropy floor's numeric options (a threshold in nats, or a ratio of the pretrained entropy).
FLOOR_OPTIONS = ("floor", "ratio")


@dataclass(frozen=True)
class RegulariserConfig:
    """A regulariser of the fine-tuning loss: ``kind`` (apr or entropy_floor) and its ``weight``
    (λ); APR's ``direction``; the entropy floor's ``ratio`` of the pretrained entropy (or one
    absolute ``floor`` in nats for every layer), ``hinge`` and ``layers`` (the module docstring of
    :mod:`clipdrift.train.regularisers`), and how its baseline averages the probe
    (``base_batch_size``: :func:`clipdrift.train.regularisers.layer_entropies`). An option of the
    other kind must keep its default."""

    kind: str
    weight: float
    floor: float | None = None
    ratio: float = PUBLISHED_FLOOR_RATIO
    direction: str = "current_first"
    hinge: str = "row"
    layers: str = "sum"
    base_batch_size: int | None = None

    def __post_init__(self):
        if self.kind not in REGULARISERS:
            raise ValueError(f"regulariser {self.kind!r} is unknown: use one of {REGULARISERS}")
        if not self.weight > 0:
            raise ValueError(f"regulariser weight must be > 0, got {self.weight!r}")
        if self.kind != "entropy_floor":
            for option, default in (("floor", None), ("ratio", PUBLISHED_FLOOR_RATIO)):
                if getattr(self, option) != default:
                    raise ValueError(_not_its_own(option, "entropy_floor", self.kind))
        if self.floor is not None and not self.floor >= 0:
            raise ValueError(f"floor must be >= 0 nats, got {self.floor!r}")
        if not self.ratio > 0:
            raise ValueError(f"ratio must be > 0, got {self.ratio!r}")
        if self.base_batch_size is not None and not self.base_batch_size >= 1:
            raise ValueError(f"base_batch_size must be >= 1 (or None), got {self.base_batch_size!r}")
        for kind, options in OPTIONS.items():
            for option, values in options.items():
                value = getattr(self, option)
                if value not in values:
                    raise ValueError(f"{option} {value!r} is unknown: use one of {values}")
                if kind != self.kind and value != values[0]:
                    raise ValueError(_not_its_own(option, kind, self.kind))

    def to_dict(self) -> dict:
        return asdict(self)


def _not_its_own(option: str, owner: str, kind: str) -> str:
    return f"{option} is the {owner} regulariser's option, not {kind}'s: remove regulariser.{option}"
