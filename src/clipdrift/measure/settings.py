"""What a measurement job is told, torch-free: the attention statistics' and CKA's settings and
the curves' points. The study's planner builds these from the config (so their rules run when a
config is read, before any job) and the jobs rebuild them from the dicts they are given."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

AGGREGATIONS = ("exact", "paper")
ENTROPY_UNITS = {"nats": 1.0, "bits": 1.0 / math.log(2.0)}
CKA_VARIANTS = ("linear", "debiased")
CKA_TOKENS = ("cls", "patch_mean")


@dataclass(frozen=True)
class AttentionConfig:
    """How attention statistics are computed and aggregated over the probe images.

    ``aggregation``: ``exact`` weighs every image the same; ``paper`` reproduces the published
    numbers, the unweighted mean of per-batch values over batches of ``batch_size`` (32), with
    head diversity computed on each batch's mean maps. ``batch_size`` is also the forward batch.
    """

    aggregation: str = "exact"
    batch_size: int = 32
    rollout_alpha: float = 0.5
    erf_mass: float = 0.95
    entropy_unit: str = "nats"
    device: str | None = None  # None: CUDA when available, else CPU

    def __post_init__(self):
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"attention aggregation {self.aggregation!r} is unknown: use one of {AGGREGATIONS}")
        if self.entropy_unit not in ENTROPY_UNITS:
            raise ValueError(f"attention entropy_unit {self.entropy_unit!r} is unknown: use one of {tuple(ENTROPY_UNITS)}")
        if self.batch_size < 1:
            raise ValueError(f"attention batch_size must be >= 1, got {self.batch_size}")
        if not 0.0 <= self.rollout_alpha <= 1.0:
            raise ValueError(f"attention rollout_alpha must be in [0, 1], got {self.rollout_alpha}")
        if not 0.0 < self.erf_mass <= 1.0:
            raise ValueError(f"attention erf_mass must be in (0, 1], got {self.erf_mass}")

    @property
    def erf_name(self) -> str:
        return f"erf{self.erf_mass * 100:g}"

    def to_dict(self) -> dict:
        """The settings a job is given (the device is the job's own choice)."""
        return {key: value for key, value in asdict(self).items() if key != "device"}


@dataclass(frozen=True)
class CKAConfig:
    """Which CKA values to compute: ``token`` is ``"cls"``, ``"patch_mean"`` or a tuple of them."""

    token: str | tuple[str, ...] = CKA_TOKENS
    variants: tuple[str, ...] = CKA_VARIANTS
    batch_size: int = 64
    device: str | None = None  # None: CUDA when available, else CPU

    def __post_init__(self):
        tokens = (self.token,) if isinstance(self.token, str) else tuple(self.token)
        object.__setattr__(self, "token", tokens)
        object.__setattr__(self, "variants", (self.variants,) if isinstance(self.variants, str) else tuple(self.variants))
        if not tokens or set(tokens) - set(CKA_TOKENS):
            raise ValueError(f"cka token {self.token!r} is not valid: use some of {CKA_TOKENS}")
        if not self.variants or set(self.variants) - set(CKA_VARIANTS):
            raise ValueError(f"cka variants {self.variants!r} are not valid: use some of {CKA_VARIANTS}")
        if self.batch_size < 1:
            raise ValueError(f"cka batch_size must be >= 1, got {self.batch_size}")

    @property
    def tokens(self) -> tuple[str, ...]:
        return self.token

    def to_dict(self) -> dict:
        return {key: value for key, value in asdict(self).items() if key != "device"}


@dataclass(frozen=True)
class CurveSettings:
    """What a run's curves measure: the interpolation weights ``alphas`` (0 = pretrained,
    1 = fine-tuned) and the kept ``epochs``, each point scored in-domain (``eval_batch_size``),
    on the held-out tasks (``zeroshot``: each task's settings) and by its attention drift."""

    alphas: tuple[float, ...]
    epochs: tuple[int, ...]
    attention: AttentionConfig
    eval_batch_size: int
    zeroshot: dict = field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.attention, dict):  # as the workflow's params and to_dict() write it
            object.__setattr__(self, "attention", AttentionConfig(**self.attention))
        object.__setattr__(self, "alphas", tuple(sorted(float(a) for a in self.alphas)))
        object.__setattr__(self, "epochs", tuple(sorted(int(e) for e in self.epochs)))
        outside = [a for a in self.alphas if not 0.0 <= a <= 1.0]
        if outside:
            raise ValueError(f"curves alphas {outside} lie outside [0, 1] (0: pretrained, 1: fine-tuned)")
        if any(e < 1 for e in self.epochs):
            raise ValueError(f"curves epochs {list(self.epochs)} must be >= 1 (epoch 1 is the first trained)")
        if self.eval_batch_size < 1:
            raise ValueError(f"curves eval_batch_size must be >= 1, got {self.eval_batch_size}")

    def to_dict(self) -> dict:
        return {"alphas": list(self.alphas), "epochs": list(self.epochs), "attention": self.attention.to_dict(),
                "eval_batch_size": self.eval_batch_size, "zeroshot": self.zeroshot}


@dataclass(frozen=True)
class WeightSettings:
    """What a run's weight-space drift measures: intruders among the top ``top_k`` left singular
    vectors at cosine ``epsilon``, and at every ``top_k_sweep`` × ``epsilon_sweep``; ΔW's rank
    holding ``energy_share`` of its energy; the top ``overlap_rank`` directions of ΔW compared
    between runs; at the drift checkpoint and at the kept ``epochs``."""

    top_k: int
    epsilon: float
    top_k_sweep: tuple[int, ...]
    epsilon_sweep: tuple[float, ...]
    energy_share: float
    overlap_rank: int
    epochs: tuple[int, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "top_k_sweep", tuple(sorted(int(k) for k in self.top_k_sweep)))
        object.__setattr__(self, "epsilon_sweep", tuple(sorted(float(e) for e in self.epsilon_sweep)))
        object.__setattr__(self, "epochs", tuple(sorted(int(e) for e in self.epochs)))
        if min((self.top_k, self.overlap_rank, *self.top_k_sweep)) < 1:
            raise ValueError("top_k, top_k_sweep and overlap_rank count directions: each must be >= 1")
        if not all(0.0 < e <= 1.0 for e in (self.epsilon, *self.epsilon_sweep)):
            raise ValueError("epsilon and epsilon_sweep are cosines: each must be in (0, 1]")
        if not 0.0 < self.energy_share <= 1.0:
            raise ValueError(f"energy_share must be in (0, 1], got {self.energy_share}")

    def to_dict(self) -> dict:
        return {**asdict(self), "top_k_sweep": list(self.top_k_sweep), "epsilon_sweep": list(self.epsilon_sweep),
                "epochs": list(self.epochs)}


@dataclass(frozen=True)
class InterventionSettings:
    """What a run's intruder intervention scores: each share ``keeps`` of its intruder dimensions
    (at ``top_k`` and ``epsilon``) kept, against its uniform control, every state scored like a
    curve point (``attention``, ``eval_batch_size``, ``zeroshot``: each held-out task's settings)."""

    keeps: tuple[float, ...]
    top_k: int
    epsilon: float
    attention: AttentionConfig
    eval_batch_size: int
    zeroshot: dict = field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.attention, dict):
            object.__setattr__(self, "attention", AttentionConfig(**self.attention))
        object.__setattr__(self, "keeps", tuple(sorted(float(k) for k in self.keeps)))
        if not self.keeps or not all(0.0 <= k <= 1.0 for k in self.keeps):
            raise ValueError(f"intervention lambdas {list(self.keeps)} must lie in [0, 1] (the share of the "
                             "intruders kept: 1 = the run, 0 = none left)")

    def to_dict(self) -> dict:
        return {"keeps": list(self.keeps), "top_k": self.top_k, "epsilon": self.epsilon,
                "attention": self.attention.to_dict(), "eval_batch_size": self.eval_batch_size,
                "zeroshot": self.zeroshot}
