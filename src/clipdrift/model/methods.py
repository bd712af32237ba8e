"""The fine-tuning methods, one entry each: the package's one list of their names.

Standard library only: the Snakefile reads it when it is parsed, the jobs and the report when
they run. An entry says what its method is, and the code that does it asks the entry, never the
name (adding a method is adding an entry, and teaching the code any new kind of entry):

- which weights train: the image tower's own (all of them, or only its biases: BitFit), or an
  adapter's (``adapter``: the peft config class its adapters are made from, with the keywords the
  method fixes, ``adapter_options``; the tower's base weights stay frozen);
- what a checkpoint holds (``checkpoint_groups``, of :func:`clipdrift.model.adapters.trainable_parameter_counts`'
  groups, and ``image_tower_biases``): an adapter method's checkpoint names its base and holds only what trains;
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
    adapter: str | None = None  # peft's config class (LoraConfig, VeraConfig, ...); ANY_ADAPTER: the settings name it
    adapter_options: dict = field(default_factory=dict)  # peft config keywords the method fixes (DoRA: use_dora)
    tower_weights: str = "all"  # the methods that train the tower: every weight, or "biases" only (BitFit)
    schedules_rank: bool = False  # its adapters' ranks follow a budget over the run's steps (AdaLoRA)
    probe_phase: bool = False
    config_section: str | None = None
    settings_fields: dict[str, str] = field(default_factory=dict)  # config key -> MethodConfig field
    description: str = ""  # what trains, in a sentence (the report's glossary)

    @property
    def trains_tower(self) -> bool:
        """Whether the image tower's own weights train (so that blocks of it can be frozen)."""
        return self.adapter is None


ANY_ADAPTER = "any"  # the generic peft method: its settings' ``type`` names the peft config class
_TOWER = ("image_tower", "projection", "head")
_ADAPTER = ("adapter", "projection", "head")
_LORA_FIELDS = {"r": "lora_r", "alpha": "lora_alpha", "dropout": "lora_dropout", "targets": "lora_targets",
                "train_projection": "train_projection"}
_PEFT_FIELDS = {"targets": "lora_targets", "train_projection": "train_projection", "options": "peft_options"}


def _lora_kind(name: str, label: str, colour: str, options: dict, what: str) -> Method:
    """A LoRA of peft's with one switch set: the study's ``lora`` settings, ``options`` fixed."""
    return Method(name, label, colour, _ADAPTER, adapter="LoraConfig", adapter_options=options, config_section="lora",
                  settings_fields=_LORA_FIELDS,
                  description=f"{what} (peft's LoraConfig with {', '.join(f'{k}={v!r}' for k, v in options.items())}, "
                              "the study's lora settings); the projection and the head train with it")


def _peft_kind(name: str, label: str, colour: str, adapter: str, what: str, schedules_rank: bool = False) -> Method:
    """A peft tuner of its own, with its own config section (targets, train_projection, options)."""
    fields = _PEFT_FIELDS | ({"type": "peft_type"} if adapter == ANY_ADAPTER else {})
    return Method(name, label, colour, _ADAPTER, adapter=adapter, config_section=name, settings_fields=fields,
                  schedules_rank=schedules_rank,
                  description=f"{what}; the chosen targets of every block get adapters, the projection and the head "
                              "train with them, every base weight stays frozen")


METHODS: dict[str, Method] = {entry.name: entry for entry in (
    Method("full", "Full FT", "#D55E00", _TOWER,
           description="full fine-tuning: every weight of the image tower trains, with its projection and the "
                       "classification head"),
    Method("lora", "LoRA", "#0072B2", _ADAPTER, adapter="LoraConfig", config_section="lora",
           settings_fields=_LORA_FIELDS,
           description="low-rank adapters (peft's LoRA, rank r, scale alpha / r) on the chosen attention projections "
                       "of every block train, with the projection and the head; the tower's own weights stay frozen"),
    Method("lp-ft", "LP-FT", "#009E73", _TOWER, probe_phase=True, config_section="lp_ft",
           settings_fields={"probe_epochs": "lp_epochs", "train_projection": "lp_train_projection"},
           description="linear probe, then fine-tune: for the first epochs only the head trains, then every weight "
                       "of the tower does, as in Full FT"),
    _lora_kind("dora", "DoRA", "#56B4E9", {"use_dora": True},
               "weight-decomposed LoRA: a trained magnitude per output unit and a LoRA update of the direction"),
    _lora_kind("rslora", "rsLoRA", "#332288", {"use_rslora": True}, "rank-stabilised LoRA: scale alpha / sqrt(r)"),
    _lora_kind("pissa", "PiSSA", "#88CCEE", {"init_lora_weights": "pissa"},
               "LoRA started from the pretrained matrix's top-r singular directions (the base keeps the residual)"),
    _lora_kind("olora", "OLoRA", "#44AA99", {"init_lora_weights": "olora"},
               "LoRA started from a QR decomposition of the pretrained matrix (the base keeps the residual)"),
    _peft_kind("vera", "VeRA", "#CC79A7", "VeraConfig",
               "VeRA: frozen random low-rank matrices shared by all layers, a trained scaling vector on each side"),
    _peft_kind("ia3", "(IA)³", "#E69F00", "IA3Config",
               "(IA)³: a trained vector rescales each target's output (c_proj: its input, as a feed-forward layer)"),
    _peft_kind("loha", "LoHa", "#882255", "LoHaConfig", "LoHa: a Hadamard product of two low-rank updates"),
    _peft_kind("lokr", "LoKr", "#AA4499", "LoKrConfig", "LoKr: a Kronecker product of a small and a low-rank matrix"),
    _peft_kind("oft", "OFT", "#999933", "OFTConfig", "OFT: a trained block-diagonal orthogonal rotation of each target"),
    _peft_kind("boft", "BOFT", "#DDCC77", "BOFTConfig",
               "BOFT: a butterfly product of block-diagonal orthogonal rotations of each target"),
    _peft_kind("adalora", "AdaLoRA", "#117733", "AdaLoraConfig",
               "AdaLoRA: SVD-shaped low-rank updates whose ranks are pruned from init_r to a budget of target_r per "
               "matrix by importance over the run's steps, with an orthogonality penalty", schedules_rank=True),
    _peft_kind("peft", "peft", "#888888", ANY_ADAPTER, "any other peft tuner, named by its config type"),
    Method("bitfit", "BitFit", "#000000", ("image_tower_biases", "projection", "head"), tower_weights="biases",
           description="BitFit: only the image tower's biases train, with the projection and the head"),
)}
# The two methods the study compares first (and every variant's family is drawn against).
REFERENCE_PAIR = ("full", "lora")
# The image tower's linears an adapter may target: every block's attention projections (explicit
# nn.Linear, see clipdrift.model.backbones) and its MLP's two matrices.
ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
MLP_TARGETS = ("c_fc", "c_proj")
TARGET_CHOICES = ATTENTION_TARGETS + MLP_TARGETS
# An adapter's tensor: under a target linear, neither that linear's own weight or bias nor the
# base layer peft wraps it in (q_proj.lora_A.default.weight, q_proj.ia3_l.default, ...).
_ADAPTER_TENSOR = re.compile(rf"\.(?:{'|'.join(TARGET_CHOICES)})\.(?!(?:weight|bias)$|base_layer\.)")
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
    """Whether a parameter (or buffer) of a set-up model belongs to an adapter: it sits under a
    target linear beside peft's ``base_layer`` (every peft tuner wraps a linear so)."""
    return _ADAPTER_TENSOR.search(name) is not None


@dataclass(frozen=True)
class MethodConfig:
    """A fine-tuning method and its settings (paper defaults).

    ``lp_epochs`` (lp-ft only, required there): the epochs of the linear-probe phase; the run
    must have more epochs than that. ``lp_train_projection``: the visual projection trains in
    the probe phase too (it always trains in the fine-tune phase, as in Full FT).
    ``train_projection`` is the adapter methods' switch; Full FT and lp-ft's fine-tune phase ignore it.
    ``lora_targets``: the linears of every block an adapter method adapts (LoRA's name, every
    adapter method's targets). ``peft_type`` (the generic ``peft`` method only, required there):
    the peft config class by name (``HRAConfig``) or by peft type (``HRA``). ``peft_options``
    (the adapter methods of their own config section): keyword arguments of that peft config
    class; peft checks them when the adapters are made (at parse time for a study).
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
    peft_type: str | None = None
    peft_options: dict = field(default_factory=dict)

    def __post_init__(self):
        entry = method(self.method)
        unknown = set(self.lora_targets) - set(TARGET_CHOICES)
        if unknown:
            raise ValueError(f"targets {sorted(unknown)} are unknown: use some of {TARGET_CHOICES}")
        if not self.lora_targets:
            raise ValueError(f"targets is empty: name at least one of {TARGET_CHOICES}")
        self._check_peft_settings(entry)
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

    def _check_peft_settings(self, entry: Method) -> None:
        if (entry.adapter == ANY_ADAPTER) != (self.peft_type is not None):
            raise ValueError(f"method {self.method!r} {'needs' if entry.adapter == ANY_ADAPTER else 'takes no'} peft "
                             "type: only the generic peft method names its peft config class (e.g. type: HRAConfig)")
        if self.peft_type is not None and (not isinstance(self.peft_type, str) or not self.peft_type):
            raise ValueError(f"the peft type must be a peft config class name (e.g. HRAConfig), got {self.peft_type!r}")
        if not isinstance(self.peft_options, dict) or not all(isinstance(key, str) for key in self.peft_options):
            raise ValueError(f"options must map peft config keywords to values, got {self.peft_options!r}")
        if self.peft_options and "options" not in entry.settings_fields:
            raise ValueError(f"method {self.method!r} takes no peft options ({sorted(self.peft_options)})")
        if self.peft_options.get("bias", "none") != "none":
            raise ValueError(f"options.bias {self.peft_options['bias']!r}: an adapter method trains no base bias here "
                             "(bias: none); BitFit is the method that trains the tower's biases")
        schedule = {"total_step"} if entry.schedules_rank else set()  # the run's own steps
        owned = sorted(set(self.peft_options) & ({"target_modules"} | set(entry.adapter_options) | schedule))
        if owned:
            raise ValueError(f"options {owned} are set by clipdrift for {entry.label}: choose the adapted linears "
                             "with targets (a rank schedule spans the run's steps; another variant of LoRA is "
                             "another method)")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> MethodConfig:
        """The config :meth:`to_dict` wrote; fields it lacks (written before they existed) take their defaults."""
        return cls(**{k: (tuple(v) if k == "lora_targets" else v) for k, v in values.items()})

    @property
    def trains_biases_only(self) -> bool:
        """Whether only the image tower's biases train (BitFit)."""
        return method(self.method).tower_weights == "biases"

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
