"""The fine-tuning methods, one entry each: the package's one list of their names.

Standard library only: the Snakefile reads it when it is parsed, the jobs and the report when
they run. An entry says what its method is, and the code that does it asks the entry, never the
name (adding a method is adding an entry, and teaching the code any new kind of entry):

- which weights train: the image tower's own, or an adapter's (``adapter``: the peft tuner,
  whose parameters' names carry ``adapter_mark``; the tower's base weights stay frozen);
- what a checkpoint holds (``checkpoint_groups``, of :func:`clipdrift.model.adapters.trainable_parameter_counts`'
  groups): an adapter method's checkpoint names its base and holds only what changed;
- whether a linear-probe phase comes first (``probe_phase``: LP-FT);
- where its settings sit in a study config (``config_section``) and which
  :class:`clipdrift.model.adapters.MethodConfig` field each of that section's keys sets;
- its label in tables and figures, and its colour.

Variants (``methods: [{name, method, ...}]``) are entries of a study config, not of this list.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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

    @property
    def trains_tower(self) -> bool:
        """Whether the image tower's own weights train (so that blocks of it can be frozen)."""
        return self.adapter is None


_TOWER = ("image_tower", "projection", "head")
METHODS: dict[str, Method] = {entry.name: entry for entry in (
    Method("full", "Full FT", "#D55E00", _TOWER),
    Method("lora", "LoRA", "#0072B2", ("adapter", "projection", "head"), adapter="lora", adapter_mark="lora_",
           config_section="lora", settings_fields={"r": "lora_r", "alpha": "lora_alpha", "dropout": "lora_dropout",
                                                   "targets": "lora_targets", "train_projection": "train_projection"}),
    Method("lp-ft", "LP-FT", "#009E73", _TOWER, probe_phase=True, config_section="lp_ft",
           settings_fields={"probe_epochs": "lp_epochs", "train_projection": "lp_train_projection"}),
)}
# The two methods the study compares first (and every variant's family is drawn against).
REFERENCE_PAIR = ("full", "lora")
# What the names of every adapter's parameters carry.
ADAPTER_MARKS = tuple(entry.adapter_mark for entry in METHODS.values() if entry.adapter_mark)


def method(name: str) -> Method:
    """The registry entry of method ``name``; refuses an unknown name, listing the known ones."""
    if name not in METHODS:
        raise ValueError(f"method {name!r} is unknown: use one of {', '.join(METHODS)}")
    return METHODS[name]


def is_adapter_parameter(name: str) -> bool:
    """Whether a parameter of a set-up model belongs to an adapter (by the marks peft gives them)."""
    return any(mark in name for mark in ADAPTER_MARKS)
