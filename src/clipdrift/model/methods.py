"""The fine-tuning methods, one entry each: the package's one list of their names.

Standard library only: the Snakefile reads it when it is parsed, the jobs and the report when
they run. An entry says what its method is, and the code that does it asks the entry, never the
name (adding a method is adding an entry, and teaching the code any new kind of entry):

- which weights train: the image tower's own, or an adapter's (``adapter``: the peft tuner,
  whose parameters' names carry ``adapter_mark``; the tower's base weights stay frozen);
- what a checkpoint holds (``checkpoint_groups``, of :func:`clipdrift.model.adapters.trainable_parameter_counts`'
  groups): an adapter method's checkpoint names its base and holds only what changed;
- whether a linear-probe phase comes first (``probe_phase``: LP-FT);
- where its settings sit in a study config (``config_section``) and which :class:`MethodConfig`
  field (below: a run's method settings, with their rules) each of that section's keys sets;
- its label in tables and figures, and its colour.

Variants (``methods: [{name, method, ...}]``) are entries of a study config, not of this list.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Method:
    name: str
    label: str
    colour: str
    checkpoint_groups: tuple[str, ...]
    adapter: str | None = None
    adapter_mark: str | None = None
    probe_phase: bool = False
    config_section: str | None = None
    settings_fields: dict[str, str] = field(default_factory=dict)  # config key -> MethodConfig field
    description: str = ""  # what trains, in a sentence (the report's glossary)

    @property
    def trains_tower(self) -> bool:
        """Whether the image tower's own weights train (so that blocks of it can be frozen)."""
        return self.adapter is None


_TOWER = ("image_tower", "projection", "head")
METHODS: dict[str, Method] = {entry.name: entry for entry in (
    Method("full", "Full FT", "#D55E00", _TOWER,
           description="full fine-tuning: every weight of the image tower trains, with its projection and the "
                       "classification head"),
    Method("lora", "LoRA", "#0072B2", ("adapter", "projection", "head"), adapter="lora", adapter_mark="lora_",
           config_section="lora", settings_fields={"r": "lora_r", "alpha": "lora_alpha", "dropout": "lora_dropout",
                                                   "targets": "lora_targets", "train_projection": "train_projection"},
           description="low-rank adapters (peft's LoRA, rank r, scale alpha / r) on the chosen attention projections "
                       "of every block train, with the projection and the head; the tower's own weights stay frozen"),
    Method("lp-ft", "LP-FT", "#009E73", _TOWER, probe_phase=True, config_section="lp_ft",
           settings_fields={"probe_epochs": "lp_epochs", "train_projection": "lp_train_projection"},
           description="linear probe, then fine-tune: for the first epochs only the head trains, then every weight "
                       "of the tower does, as in Full FT"),
)}
# The two methods the study compares first (and every variant's family is drawn against).
REFERENCE_PAIR = ("full", "lora")
# What the names of every adapter's parameters carry.
ADAPTER_MARKS = tuple(entry.adapter_mark for entry in METHODS.values() if entry.adapter_mark)
# The image tower's attention projections LoRA may adapt (explicit nn.Linear in every block).
LORA_TARGET_CHOICES = ("q_proj", "k_proj", "v_proj", "out_proj")


def method(name: str) -> Method:
    """The registry entry of method ``name``; refuses an unknown name, listing the known ones."""
    if name not in METHODS:
        raise ValueError(f"method {name!r} is unknown: use one of {', '.join(METHODS)}")
    return METHODS[name]


def family_of(name: str) -> str | None:
    """The method a method or variant name belongs to: itself, or the method whose name and a dash
    begin it (``lora-r4``: LoRA; a study config names every variant so); None for any other name."""
    if name in METHODS:
        return name
    owners = [entry for entry in METHODS if name.startswith(f"{entry}-")]
    return max(owners, key=len) if owners else None


def _natural_key(name: str) -> tuple:
    # numbers as numbers: lora-r4 before lora-r16, full-apr-0.01 before full-apr-0.1 before full-apr-1
    return tuple((0, float(part), "") if index % 2 else (1, 0.0, part)
                 for index, part in enumerate(re.split(r"(\d+(?:\.\d+)?)", name)))


def lineup(names) -> list[str]:
    """The one order of methods in every table, figure and legend: each method in the registry's
    order followed by its variants in natural order, then any name of no known method."""
    names = set(names)
    families = [*METHODS, None]
    return sorted(names, key=lambda name: (families.index(family_of(name)), name not in METHODS, _natural_key(name)))


def is_adapter_parameter(name: str) -> bool:
    """Whether a parameter of a set-up model belongs to an adapter (by the marks peft gives them)."""
    return any(mark in name for mark in ADAPTER_MARKS)


@dataclass(frozen=True)
class MethodConfig:
    """A fine-tuning method and its settings (paper defaults).

    ``lp_epochs`` (lp-ft only, required there): the epochs of the linear-probe phase; the run
    must have more epochs than that. ``lp_train_projection``: the visual projection trains in
    the probe phase too (it always trains in the fine-tune phase, as in Full FT).
    ``train_projection`` is LoRA's switch; Full FT and lp-ft's fine-tune phase ignore it.
    ``freeze_blocks`` (Full FT and lp-ft): the first ``freeze_blocks`` residual blocks of the
    image tower stay frozen, as the published ablation froze encoder layers 0..k-1 (the embedding
    stage still trains); 0 trains the whole tower. ``freeze_embeddings``: the embedding stage
    (patch embedding, class and position embeddings, pre-norm) stays frozen too (clipdrift's
    earlier freezing, not the published one).
    """

    method: str = "full"
    lora_r: int = 8
    lora_alpha: float = 16
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    train_projection: bool = True
    lp_epochs: int | None = None
    lp_train_projection: bool = False
    freeze_blocks: int = 0
    freeze_embeddings: bool = False

    def __post_init__(self):
        entry = method(self.method)
        unknown = set(self.lora_targets) - set(LORA_TARGET_CHOICES)
        if unknown:
            raise ValueError(f"lora targets {sorted(unknown)} are unknown: use some of {LORA_TARGET_CHOICES}")
        if self.lora_r < 1:
            raise ValueError(f"lora r must be >= 1, got {self.lora_r}")
        if self.lp_epochs is not None and (isinstance(self.lp_epochs, bool) or not isinstance(self.lp_epochs, int)
                                           or self.lp_epochs < 1):
            raise ValueError(f"lp_epochs must be an integer >= 1, got {self.lp_epochs!r}")
        if entry.probe_phase and self.lp_epochs is None:
            raise ValueError(f"method {self.method!r} needs lp_epochs: the number of linear-probe epochs (>= 1) "
                             "before the fine-tune phase")
        if isinstance(self.freeze_blocks, bool) or not isinstance(self.freeze_blocks, int) or self.freeze_blocks < 0:
            raise ValueError(f"freeze_blocks must be an integer >= 0, got {self.freeze_blocks!r}")
        if (self.freeze_blocks or self.freeze_embeddings) and not entry.trains_tower:
            towers = ", ".join(name for name, other in METHODS.items() if other.trains_tower)
            raise ValueError(f"freeze_blocks and freeze_embeddings are for the methods that train the tower ({towers}): "
                             f"{entry.label} already freezes every base weight (choose its blocks with "
                             f"{entry.config_section}.targets)")
        if not isinstance(self.freeze_embeddings, bool):
            raise ValueError(f"freeze_embeddings must be true or false, got {self.freeze_embeddings!r}")
        if not isinstance(self.lp_train_projection, bool):
            raise ValueError(f"lp_train_projection must be true or false, got {self.lp_train_projection!r}")
        object.__setattr__(self, "lora_targets", tuple(self.lora_targets))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> MethodConfig:
        """The config :meth:`to_dict` wrote; fields it lacks (written before they existed) take their defaults."""
        return cls(**{k: (tuple(v) if k == "lora_targets" else v) for k, v in values.items()})

    @property
    def probes_first(self) -> bool:
        """Whether the run starts with a linear-probe phase (lp-ft)."""
        return method(self.method).probe_phase

    def fits(self, epochs: int) -> bool:
        """Whether a run of ``epochs`` epochs has room for this method: with a probe phase, at least
        one fine-tune epoch after it."""
        return not self.probes_first or epochs > self.lp_epochs

    def phase(self, epoch: int) -> str | None:
        """lp-ft: the phase of (1-based) ``epoch``, ``probe`` up to ``lp_epochs`` then ``finetune``;
        None for the other methods, which have one phase."""
        if not self.probes_first:
            return None
        return "probe" if epoch <= self.lp_epochs else "finetune"
