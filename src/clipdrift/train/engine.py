"""The fine-tuning engine: (model, image splits, config) → history, best and final weights.

The protocol (the paper preset; docs/design.md): AdamW with one parameter group and weight decay
0.01; a per-step schedule of linear warmup over 5% of the steps then cosine to zero; cross-entropy; gradient-norm
clipping at 1.0; bf16 (or fp16) autocast on CUDA and fp32 on CPU; evaluation on the selection
split after every epoch; the best (strictly better accuracy) and the final weights.

Reliability:

- Determinism: data order and flips come from ``(seed, epoch)``, dropout from the seeded
  global RNG, so the same seed on the CPU gives identical histories and weights.
- Resume: after every epoch the weights, optimiser moments, step counter (the schedule is a
  function of it) and RNG states go to a :class:`clipdrift.train.resume.ResumeStore`; a rerun of a
  killed run continues from its last completed epoch and ends where an uninterrupted run does.
- LP-FT (``method=MethodConfig("lp-ft", ...)``): one optimiser over every parameter the
  method ever trains; at the start of every epoch the phase follows from the epoch number
  (probe up to ``lp_epochs``: head only, the encoder frozen; then Full FT), so a resumed run
  lands in its phase. The warm-up and schedule span the whole run: the encoder starts training
  at the schedule's learning rate of the switch step.
- Divergence: a non-finite loss (or gradient norm) stops the run before the update that would
  poison the weights; the history says ``diverged`` and at which step, and the outputs are
  still produced, so a study with one exploding learning rate completes and reports it.

No Snakemake, no argparse, no file I/O beyond the resume store the caller hands in.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from clipdrift.core.device import deterministic, full_fp32, resolve_device, seeded
from clipdrift.core.errors import UserFacingError
from clipdrift.core.io import ArtifactError
from clipdrift.data.split import ImageSplit, to_model_input
from clipdrift.model.adapters import MethodConfig, set_lp_ft_phase, trainable_parameter_counts, trainable_parameters
from clipdrift.model.backbones import CLIPClassifier, image_preprocess_config
from clipdrift.train.resume import ResumeStore

log = logging.getLogger(__name__)

AMP_CHOICES = ("auto", "bf16", "fp16", "off")
SELECTION_SPLITS = ("val", "test")
HISTORY_PARAM_GROUPS = ("adapter", "projection", "head", "image_tower", "total")
# AdamW's own defaults, written out because the protocol fixes them (one parameter group).
ADAMW_BETAS = (0.9, 0.999)
ADAMW_EPS = 1e-8
_RESUME_KIND = "clipdrift-finetune-resume"


class TrainConfigError(UserFacingError, ValueError):
    """A training setting is invalid or does not fit the model or data."""


@dataclass(frozen=True)
class TrainConfig:
    """One fine-tuning run (paper defaults).

    ``amp``: mixed precision of the training steps on CUDA: ``auto`` = bf16 on GPUs of compute
    capability >= 8.0, fp16 below; ``fp16`` always runs with a GradScaler (unscaled before
    clipping); ``off`` = fp32. The CPU trains in fp32 whatever ``amp`` says, unless
    ``cpu_autocast`` (test-only: runs the very autocast and GradScaler lines a GPU runs, so a CPU
    test exercises them). ``eval_amp``: evaluate (selection, test accuracy) under the training
    autocast; by default evaluation is fp32, as published.
    ``device``: ``auto`` = CUDA when available. ``num_threads``: CPU threads for this run
    (``None`` keeps torch's setting; bitwise CPU determinism needs the same thread count).
    ``data_on_device``: keep the uint8 training images on the GPU (``None`` = when they take
    under a quarter of its free memory). ``deterministic``: deterministic kernels
    (:func:`clipdrift.core.device.deterministic`), so that the same seed gives the same numbers and a
    resumed run equals an uninterrupted one on a GPU as on the CPU (where that always holds).

    Schedule: linear warm-up over ``warmup_fraction`` of all steps, then cosine to zero, per
    optimiser step. The warm-up and schedule span the whole run, whatever the method: an lp-ft
    run follows Full FT's schedule step for step, and its encoder starts training, when the
    probe phase ends, at the schedule's learning rate of that step (no second warm-up; AdamW's
    moments of the encoder start from zero there, their bias correction from its first step).
    """

    epochs: int
    lr: float
    batch_size: int = 64
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    grad_clip: float | None = 1.0
    seed: int = 0
    amp: str = "auto"
    device: str = "auto"
    num_threads: int | None = None
    eval_batch_size: int = 256
    hflip: bool = True
    selection_split: str = "val"
    data_on_device: bool | None = None
    eval_amp: bool = False
    cpu_autocast: bool = False
    deterministic: bool = False

    def __post_init__(self):
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.eval_batch_size >= 1, f"eval_batch_size must be >= 1, got {self.eval_batch_size}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (0 <= self.warmup_fraction < 1, f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}"),
            (self.grad_clip is None or self.grad_clip > 0, f"grad_clip must be > 0 or None, got {self.grad_clip}"),
            (self.amp in AMP_CHOICES, f"amp {self.amp!r} is unknown: use one of {AMP_CHOICES}"),
            (self.selection_split in SELECTION_SPLITS,
             f"selection_split {self.selection_split!r} is unknown: use one of {SELECTION_SPLITS}"),
            (self.num_threads is None or self.num_threads >= 1, f"num_threads must be >= 1, got {self.num_threads}"),
        ]
        for ok, message in checks:
            if not ok:
                raise TrainConfigError(message)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FinetuneResult:
    """The history (docs/artifacts.md) and the trainable weights of the best and final epochs.

    The states map parameter names to CPU tensors; :meth:`load_into` puts one into the model
    (which holds the final weights when :func:`finetune` returns).
    """

    history: dict
    best_state: dict[str, torch.Tensor]
    final_state: dict[str, torch.Tensor]

    def load_into(self, model: CLIPClassifier, which: str = "best") -> CLIPClassifier:
        states = {"best": self.best_state, "final": self.final_state}
        if which not in states:
            raise ValueError(f"which must be 'best' or 'final', got {which!r}")
        _load_params(model, states[which])
        return model


# ---------------------------------------------------------------------------------------------
# Schedule
# ---------------------------------------------------------------------------------------------

def warmup_steps(total_steps: int, fraction: float) -> int:
    return int(fraction * total_steps)


def lr_factor(step: int, total_steps: int, n_warmup: int) -> float:
    """Multiplier of the base lr at optimiser step ``step`` (0-based).

    Linear warmup from 0 over ``n_warmup`` steps, then cosine to 0 at ``total_steps`` — the
    formula of transformers' ``get_cosine_schedule_with_warmup``, which the published code used.
    """
    if step < n_warmup:
        return step / max(1, n_warmup)
    progress = (step - n_warmup) / max(1, total_steps - n_warmup)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


# ---------------------------------------------------------------------------------------------
# Run set-up
# ---------------------------------------------------------------------------------------------

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# bf16 runs natively from Ampere (compute capability 8.0) on; older GPUs only emulate it, slowly
# (torch.cuda.is_bf16_supported() counts the emulation), so they get fp16 with a GradScaler.
NATIVE_BF16_CAPABILITY = (8, 0)


def choose_amp(amp: str, device_type: str, capability: tuple[int, int] | None = None) -> str:
    """The training precision ``amp`` means on a device: ``fp32``, ``bf16`` or ``fp16``.

    ``capability``: the CUDA device's compute capability (decides ``auto`` there).
    """
    if amp not in AMP_CHOICES:
        raise TrainConfigError(f"amp {amp!r} is unknown: use one of {AMP_CHOICES}")
    if amp == "off":
        return "fp32"
    if amp != "auto":
        return amp
    if device_type == "cuda":
        return "bf16" if capability is not None and tuple(capability) >= NATIVE_BF16_CAPABILITY else "fp16"
    return "bf16"


@dataclass(frozen=True)
class Precision:
    """How a run computes: its training steps (``train``) and its evaluations (``eval``)."""

    train: str
    eval: str
    device_type: str

    @property
    def scaled(self) -> bool:
        """fp16 gradients underflow without loss scaling; bf16 and fp32 need none."""
        return self.train == "fp16"

    def train_autocast(self):
        return _autocast(self.device_type, self.train)

    def eval_autocast(self):
        return _autocast(self.device_type, self.eval)


def _autocast(device_type: str, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=_AUTOCAST_DTYPES[precision])


def resolve_precision(amp: str, device: torch.device, *, eval_amp: bool = False, cpu_autocast: bool = False) -> Precision:
    """The run's :class:`Precision` on ``device`` (the CPU trains in fp32 unless ``cpu_autocast``)."""
    if device.type == "cuda":
        train = choose_amp(amp, "cuda", torch.cuda.get_device_capability(device))
    elif cpu_autocast:
        train = choose_amp(amp, device.type)
    else:
        choose_amp(amp, device.type)  # refuses an unknown amp here too
        train = "fp32"
    return Precision(train=train, eval=train if eval_amp else "fp32", device_type=device.type)


@contextlib.contextmanager
def _torch_threads(n: int | None):
    if n is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _check_inputs(model: CLIPClassifier, config: TrainConfig, splits: dict[str, ImageSplit | None]) -> None:
    expected = tuple(image_preprocess_config(model.clip)["size"])
    for name, split in splits.items():
        if split is None:
            continue
        if len(split) == 0:
            raise TrainConfigError(
                f"the {name} split is empty" + (
                    f": selection_split is {config.selection_split!r}; give that split images "
                    "(e.g. a non-zero val size) or select on the other split" if name == "select" else "")
            )
        if tuple(split.images.shape[-2:]) != expected:
            raise TrainConfigError(
                f"the {name} images are {tuple(split.images.shape[-2:])} but the model expects {expected}: "
                f"prepare the data with image_size={expected[0]}"
            )
        top = int(split.labels.max())
        if int(split.labels.min()) < 0 or top >= model.n_classes:
            raise TrainConfigError(
                f"the {name} labels reach {top} but the model's head has {model.n_classes} classes: "
                "build the classifier with n_classes = the dataset's number of classes"
            )


def keeps_data_on_device(n_bytes: int, free_bytes: int | None, override: bool | None) -> bool:
    """Whether the uint8 training images live on the GPU: as ``override`` says, else when they
    take under a quarter of the free GPU memory (``free_bytes``; None: there is no GPU)."""
    if free_bytes is None:
        return False
    if override is not None:
        return override
    return n_bytes < free_bytes // 4


def _free_gpu_memory(device: torch.device) -> int | None:
    return torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None


class _CopyFence:
    """Orders reuse of the pinned staging buffer after the asynchronous copy out of it.

    ``take`` copies a batch host-to-device with ``non_blocking=True`` from one reused pinned
    buffer; the next ``take`` must not overwrite that buffer before the copy has finished. An
    event recorded after each copy is waited on before the next gather. Without a pinned buffer
    (the CPU, or data already on the GPU) there is no asynchronous copy: ``event`` is None and
    both calls do nothing.
    """

    def __init__(self, event_factory=None):
        self._new_event, self._event = event_factory, None

    def wait(self) -> None:
        if self._event is not None:
            self._event.synchronize()

    def mark(self) -> None:
        if self._new_event is not None:
            self._event = self._new_event()
            self._event.record()


class CachedBatches:
    """The engine's loader: batches from the uint8 cache, gathered, flipped and normalised on
    the run's device (the GPU when there is one).

    Nothing here decodes an image file: the cache already holds resized, cropped pixels. Every
    step writes into the same preallocated buffers: on the CPU a fresh 40 MB batch tensor costs
    more in page faults than the arithmetic. A returned batch is therefore only valid until the
    next :meth:`take` (the engine finishes each step's backward pass before the next take).
    The arithmetic is :func:`clipdrift.data.split.to_model_input`'s, done in place (same values).

    ``flip_rows``: flip row by row in place (fast on the CPU) instead of one ``torch.where``
    over the batch (no host sync on a GPU); by default chosen by the device, and both give
    the same images (tested).
    """

    def __init__(self, split: ImageSplit, device: torch.device, on_device: bool, mean: torch.Tensor,
                 std: torch.Tensor, batch_size: int = 64, flip_rows: bool | None = None):
        self.device = device
        self.mean, self.std = (t.to(device, torch.float32).view(1, 3, 1, 1) for t in (mean, std))
        self.images = split.images.to(device) if on_device else split.images
        self.labels = split.labels.to(device)
        shape = (batch_size, *split.images.shape[1:])
        staging_pinned = self.images.device.type == "cpu" and device.type == "cuda"
        # Pinned staging lets the host-to-device copy run asynchronously; the fence orders its reuse.
        self._gathered = torch.empty(shape, dtype=torch.uint8, pin_memory=staging_pinned)
        self._staged = _CopyFence(torch.cuda.Event if staging_pinned else None)
        if not staging_pinned:
            self._gathered = self._gathered.to(self.images.device)
        self._floats = torch.empty(shape, dtype=torch.float32, device=device)
        self.flip_rows = device.type == "cpu" if flip_rows is None else flip_rows

    def take(self, index: torch.Tensor, flip: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (normalised float) and labels of ``index``; ``flip`` mirrors chosen images."""
        n = len(index)
        if n > len(self._floats):
            raise ValueError(f"batch of {n} exceeds the loader's batch size {len(self._floats)}")
        self._staged.wait()  # the previous batch's copy out of the staging buffer has finished
        images = torch.index_select(self.images, 0, index.to(self.images.device), out=self._gathered[:n])
        images = images.to(self.device, non_blocking=True)
        self._staged.mark()
        if flip is not None and self.flip_rows:
            # Row by row, in place, on uint8: ~20x faster on the CPU than boolean indexing or index_copy_.
            for row in flip.nonzero().squeeze(1).tolist():
                images[row] = images[row].flip(-1)
        elif flip is not None:
            # torch.where, not boolean indexing: no host sync on the GPU.
            mask = flip.to(self.device, non_blocking=True).view(-1, 1, 1, 1)
            images = torch.where(mask, images.flip(-1), images)
        x = self._floats[:n]
        x.copy_(images).div_(255.0).sub_(self.mean).div_(self.std)
        return x, self.labels.index_select(0, index.to(self.device, non_blocking=True))


def _epoch_order(seed: int, epoch: int, n: int, hflip: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Shuffled order and flip decisions of one epoch, a function of (seed, epoch) only.

    Deriving them per epoch (instead of carrying one generator along) makes a resumed epoch
    see exactly the batches the interrupted one saw.
    """
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5 if hflip else None
    return order, flips


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------

@dataclass
class _Progress:
    """Everything that survives an epoch boundary (and goes into the resume state)."""

    epoch: int = 0  # last completed epoch
    step: int = 0  # optimiser steps done
    epochs: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    best_select_acc: float | None = None
    best_state: dict[str, torch.Tensor] | None = None
    resumed_from_epoch: int | None = None
    diverged_at_step: int | None = None
    skipped_steps: int = 0  # fp16 steps the GradScaler skipped (inf/NaN gradients)


class _Run:
    """One fine-tuning run: model, optimiser, data and precision, resolved from the config."""

    def __init__(self, model: CLIPClassifier, train: ImageSplit, config: TrainConfig, method: MethodConfig | None = None):
        self.model, self.config, self.method = model, config, method
        self.device = resolve_device(config.device)
        self.precision = resolve_precision(config.amp, self.device, eval_amp=config.eval_amp,
                                           cpu_autocast=config.cpu_autocast)
        preprocess = image_preprocess_config(model.clip)
        self.mean = torch.tensor(preprocess["mean"], dtype=torch.float32, device=self.device)
        self.std = torch.tensor(preprocess["std"], dtype=torch.float32, device=self.device)
        model.to(self.device)
        if self.lp_ft:
            # The optimiser holds every parameter lp-ft will ever train (its fine-tune phase); in the
            # probe phase the frozen ones get no gradient, so AdamW neither moves nor decays them.
            set_lp_ft_phase(model, method, probing=False)
        self.named_params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        if not self.named_params:
            raise TrainConfigError("the model has no trainable parameters: call clipdrift.model.adapters.apply_method first")
        self.params = trainable_parameters(model)
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=config.weight_decay,
                                           betas=ADAMW_BETAS, eps=ADAMW_EPS)
        # fp16 needs loss scaling; bf16 and fp32 do not.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision.scaled)
        on_device = keeps_data_on_device(train.images.numel(), _free_gpu_memory(self.device), config.data_on_device)
        self.data = CachedBatches(train, self.device, on_device, self.mean, self.std, config.batch_size)
        self.n_train = len(train)
        self.steps_per_epoch = math.ceil(self.n_train / config.batch_size)
        self.total_steps = self.steps_per_epoch * config.epochs
        self.n_warmup = warmup_steps(self.total_steps, config.warmup_fraction)

    @property
    def lp_ft(self) -> bool:
        return self.method is not None and self.method.method == "lp-ft"

    def enter_phase(self, epoch: int) -> str | None:
        """Set the model up for ``epoch``'s phase (lp-ft: ``probe`` or ``finetune``); None for one-phase methods."""
        if not self.lp_ft:
            return None
        phase = self.method.phase(epoch)
        set_lp_ft_phase(self.model, self.method, probing=phase == "probe")
        return phase

    def lr_at(self, step: int) -> float:
        return self.config.lr * lr_factor(step, self.total_steps, self.n_warmup)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {name: p.detach().to("cpu", copy=True) for name, p in self.named_params}

    def forward_backward(self, images: torch.Tensor,
                         labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Loss, number correct and (clipped-before) gradient norm of one batch, all on device."""
        with self.precision.train_autocast():
            logits = self.model(images)
        loss = F.cross_entropy(logits.float(), labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        max_norm = self.config.grad_clip if self.config.grad_clip is not None else math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        correct = (logits.detach().argmax(dim=1) == labels).sum()
        return loss.detach(), correct, norm

    def train_epoch(self, epoch: int, progress: _Progress, bar) -> dict | None:
        """Train one epoch; its history entry (without selection accuracy), or None if it diverged."""
        phase = self.enter_phase(epoch)
        order, flips = _epoch_order(self.config.seed, epoch, self.n_train, self.config.hflip)
        self.model.train()
        loss_sum, correct, started = 0.0, 0, time.perf_counter()
        bar.set_description(f"epoch {epoch}/{self.config.epochs}")
        for start in range(0, self.n_train, self.config.batch_size):
            index = order[start:start + self.config.batch_size]
            images, labels = self.data.take(index, None if flips is None else flips[start:start + len(index)])
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr_at(progress.step)
            loss, batch_correct, norm = self.forward_backward(images, labels)
            # One host sync per step: needed to stop before a non-finite update reaches the weights.
            loss_value, correct_value, norm_value = torch.stack([loss.float(), batch_correct.float(), norm.float()]).tolist()
            # With fp16 an inf gradient is routine (the scaler skips that step); only the loss counts.
            if not math.isfinite(loss_value) or (not self.scaler.is_enabled() and not math.isfinite(norm_value)):
                progress.diverged_at_step = progress.step + 1
                return None
            # The scaler skips a step exactly when unscaling found an inf/NaN gradient, which makes
            # the total norm non-finite: counted here, without another host sync.
            progress.skipped_steps += int(self.scaler.is_enabled() and not math.isfinite(norm_value))
            self.scaler.step(self.optimizer)
            self.scaler.update()
            progress.step += 1
            loss_sum += loss_value * len(index)
            correct += int(correct_value)
            seen = start + len(index)
            bar.update(1)
            bar.set_postfix(step=progress.step, loss=f"{loss_value:.4f}",
                            img_s=f"{seen / (time.perf_counter() - started):.0f}", refresh=False)
        seconds = time.perf_counter() - started
        entry = {"epoch": epoch, "train_loss": loss_sum / self.n_train, "train_acc": correct / self.n_train,
                 "lr_end": self.lr_at(progress.step), "train_s": seconds, "images_per_s": self.n_train / seconds}
        if phase is not None:
            entry["phase"] = phase
        return entry

    def accuracy(self, split: ImageSplit) -> float:
        return _accuracy(self.model, split, self.device, self.precision, self.mean, self.std,
                         self.config.eval_batch_size)


@torch.no_grad()
def _accuracy(model, split: ImageSplit, device, precision: Precision, mean, std, batch_size: int) -> float:
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    for start in range(0, len(split), batch_size):
        images = split.images[start:start + batch_size].to(device, non_blocking=True)
        labels = split.labels[start:start + batch_size].to(device, non_blocking=True)
        with precision.eval_autocast(), _eval_math(precision):
            logits = model(to_model_input(images, mean, std))
        correct += (logits.argmax(dim=1) == labels).sum()
    return int(correct) / len(split)


def _eval_math(precision: Precision):
    # an fp32 evaluation is fp32 through and through: no TF32 matmuls or convolutions
    return full_fp32() if precision.eval == "fp32" else contextlib.nullcontext()


def evaluate(model: CLIPClassifier, split: ImageSplit, *, batch_size: int = 256, device: str = "auto",
             amp: str = "off") -> float:
    """Top-1 accuracy of ``model`` on ``split`` (eval mode, no flips, CLIP normalisation).

    fp32 by default; ``amp`` evaluates under that autocast on CUDA (see :func:`choose_amp`).
    """
    resolved = resolve_device(device)
    precision = resolve_precision(amp, resolved, eval_amp=True)
    preprocess = image_preprocess_config(model.clip)
    mean = torch.tensor(preprocess["mean"], dtype=torch.float32, device=resolved)
    std = torch.tensor(preprocess["std"], dtype=torch.float32, device=resolved)
    model.to(resolved)
    return _accuracy(model, split, resolved, precision, mean, std, batch_size)


def _load_params(model: CLIPClassifier, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    unknown = sorted(set(state) - set(params))
    if unknown:
        raise KeyError(f"state holds parameters the model lacks: {unknown[:5]}")
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor)


# ---------------------------------------------------------------------------------------------
# Resume state
# ---------------------------------------------------------------------------------------------

def _fingerprint(run: _Run, train: ImageSplit, select: ImageSplit) -> str:
    """What must match for a saved state to continue this run: config, method, data, initial weights.

    The method settings count when ``finetune`` is given them (an lp-ft state trains the very
    parameters a Full FT one does, so only they tell the two apart); without them the
    fingerprint is what it always was.
    """
    digest = hashlib.blake2b(digest_size=16)
    settings = {k: v for k, v in run.config.to_dict().items()
                if k not in ("device", "num_threads", "eval_batch_size", "data_on_device", "deterministic")}
    identity = {"config": settings, "precision": [run.precision.train, run.precision.eval], "n_train": len(train),
                "n_select": len(select)}
    if run.method is not None:
        identity["method"] = run.method.to_dict()
    digest.update(json.dumps(identity, sort_keys=True).encode())
    for labels in (train.labels, select.labels):
        digest.update(labels.numpy().tobytes())
    # The starting weights of the image tower and head (trainable or frozen), so a changed
    # backbone or head seed never resumes from another model's state.
    for name, param in run.model.named_parameters():
        if name.startswith(("clip.visual.", "head.")):
            digest.update(name.encode())
            digest.update(param.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _rng_tensors(device: torch.device) -> dict[str, torch.Tensor]:
    tensors = {"rng/cpu": torch.get_rng_state()}
    if device.type == "cuda":
        tensors["rng/cuda"] = torch.cuda.get_rng_state(device)
    return tensors


def _set_rng_tensors(tensors: dict[str, torch.Tensor], device: torch.device) -> None:
    """Restore the streams :func:`_rng_tensors` saved: the CPU's and the run's GPU's."""
    torch.set_rng_state(tensors["rng/cpu"])
    if "rng/cuda" in tensors and device.type == "cuda":
        torch.cuda.set_rng_state(tensors["rng/cuda"], device)


def _save_resume(store: ResumeStore, run: _Run, progress: _Progress, fingerprint: str, improved: bool) -> None:
    best_file = f"best-epoch{progress.best_epoch}"
    if improved:  # written before the state that names it, so the state never points at nothing
        store.save(best_file, progress.best_state, {"kind": _RESUME_KIND, "epoch": progress.best_epoch})
    tensors = {f"param/{name}": p.detach().to("cpu") for name, p in run.named_params}
    for index, values in run.optimizer.state_dict()["state"].items():
        tensors.update({f"optim/{index}/{key}": value.to("cpu") for key, value in values.items()})
    tensors.update(_rng_tensors(run.device))
    metadata = {
        "kind": _RESUME_KIND, "fingerprint": fingerprint, "epoch": progress.epoch, "step": progress.step,
        "epochs": progress.epochs, "best_epoch": progress.best_epoch, "best_select_acc": progress.best_select_acc,
        "best_file": best_file, "scaler": run.scaler.state_dict(), "skipped_steps": progress.skipped_steps,
    }
    store.save_state(tensors, metadata)
    store.prune({best_file})


def _restore(store: ResumeStore, run: _Run, fingerprint: str) -> _Progress | None:
    """The progress saved in ``store`` loaded into ``run``; None (start afresh) if there is none usable."""
    try:
        saved = store.load_state()
        if saved is None:
            return None
        tensors, metadata = saved
        if metadata.get("kind") != _RESUME_KIND or metadata.get("fingerprint") != fingerprint:
            log.warning("resume state in %s belongs to another run configuration; starting afresh", store.directory)
            store.clear()
            return None
        best_state, _ = store.load(metadata["best_file"])
    except ArtifactError as error:
        log.warning("resume state in %s is unreadable (%s); starting afresh", store.directory, error)
        store.clear()
        return None
    _load_params(run.model, {k.removeprefix("param/"): v for k, v in tensors.items() if k.startswith("param/")})
    optimizer_state = run.optimizer.state_dict()
    optimizer_state["state"] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, index, name = key.split("/", 2)
            optimizer_state["state"].setdefault(int(index), {})[name] = value
    run.optimizer.load_state_dict(optimizer_state)
    if metadata["scaler"]:
        run.scaler.load_state_dict(metadata["scaler"])
    _set_rng_tensors(tensors, run.device)
    return _Progress(epoch=metadata["epoch"], step=metadata["step"], epochs=metadata["epochs"],
                     best_epoch=metadata["best_epoch"], best_select_acc=metadata["best_select_acc"],
                     best_state=best_state, resumed_from_epoch=metadata["epoch"],
                     skipped_steps=metadata["skipped_steps"])


# ---------------------------------------------------------------------------------------------
# The engine
# ---------------------------------------------------------------------------------------------

def finetune(model: CLIPClassifier, train: ImageSplit, select: ImageSplit, config: TrainConfig, *,
             test: ImageSplit | None = None, resume: ResumeStore | str | None = None, progress: bool = True,
             on_epoch_end: Callable[[dict], None] | None = None, method: MethodConfig | None = None,
             snapshot: Callable[[int], None] | None = None) -> FinetuneResult:
    """Fine-tune ``model`` (in place) on ``train``, choosing the best epoch on ``select``.

    ``resume``: a :class:`ResumeStore` (or its directory) outside the run's outputs; the run
    continues from its last completed epoch there and removes it when done. ``test``: when
    given, the final (and best) model's test accuracy goes into the history.
    ``on_epoch_end`` is called with each epoch's history entry once its state is saved.
    ``snapshot`` is called with the epoch number while the model holds that epoch's weights,
    *before* its resume state is saved: a run killed in between redoes the epoch and calls it
    again, so a caller that keeps per-epoch weights (outside the run's outputs) never misses one.
    The model ends on the run's device, in eval mode, holding the final weights.

    ``method``: the :class:`MethodConfig` the model was set up with (``apply_method``). Needed
    for ``lp-ft``, whose phases finetune switches: epochs 1..``lp_epochs`` train the head only
    (plus the projection if ``lp_train_projection``), the rest train as Full FT, all with one
    AdamW and one schedule. The warm-up and schedule span the whole run, so the encoder starts
    at the schedule's learning rate when the probe phase ends. Each epoch entry then records
    its ``phase`` (``probe`` or ``finetune``). For ``full`` and ``lora`` the method changes
    nothing but the resume fingerprint; leaving it out trains whatever ``requires_grad`` says,
    as before.
    """
    _check_method(model, config, method)
    _check_inputs(model, config, {"train": train, "select": select, "test": test})
    store = ResumeStore(resume) if resume is not None and not isinstance(resume, ResumeStore) else resume
    # Seeding inside the run must not change the caller's random streams (CPU and the run's device).
    with _torch_threads(config.num_threads), seeded(config.seed, resolve_device(config.device)), \
            deterministic(config.deterministic):
        run = _Run(model, train, config, method)
        fingerprint = _fingerprint(run, train, select) if store is not None else ""
        state = (_restore(store, run, fingerprint) if store is not None else None) or _Progress()
        with tqdm(total=run.total_steps, initial=state.step, unit="step", disable=not progress, dynamic_ncols=True) as bar:
            _train_epochs(run, select, state, bar, store, fingerprint, on_epoch_end, snapshot)
        result = _result(run, select, test, state)
    if store is not None:
        store.clear()
    return result


def _check_method(model: CLIPClassifier, config: TrainConfig, method: MethodConfig | None) -> None:
    set_up = getattr(model, "clipdrift_method", None)
    if method is None:
        if set_up is not None and set_up.method == "lp-ft":
            raise TrainConfigError(
                "the model was set up for lp-ft (apply_method): pass method=<that MethodConfig> to finetune, "
                "which switches from the probe to the fine-tune phase; without it the run would be Full FT"
            )
        return
    if not isinstance(method, MethodConfig):
        raise TrainConfigError(f"method must be a clipdrift.model.adapters.MethodConfig, got {type(method).__name__}")
    if set_up is not None and set_up != method:
        raise TrainConfigError(
            f"the model was set up (apply_method) for {set_up} but finetune was given method={method}: "
            "pass the MethodConfig the model was set up with"
        )
    if method.method == "lp-ft" and config.epochs <= method.lp_epochs:
        raise TrainConfigError(
            f"lp-ft probes for lp_epochs={method.lp_epochs} epochs but the run has only epochs={config.epochs}: "
            "the run's epochs must exceed lp_epochs, so that fine-tuning follows the probe "
            f"(raise epochs above {method.lp_epochs} or lower lp_epochs below {config.epochs})"
        )


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def _log_epoch(run: _Run, entry: dict, state: _Progress, elapsed: float, epochs_timed: int) -> None:
    """One line per epoch in the job's log: a long run on a cluster shows where it is."""
    left = (run.config.epochs - entry["epoch"]) * elapsed / max(1, epochs_timed)
    skipped = f", {state.skipped_steps} fp16 steps skipped" if state.skipped_steps else ""
    phase = f", {entry['phase']} phase" if "phase" in entry else ""
    log.info("epoch %d/%d: loss %.4f, train acc %.4f, %s acc %.4f, lr %.3g, %.0f images/s, elapsed %s, ETA %s%s%s",
             entry["epoch"], run.config.epochs, entry["train_loss"], entry["train_acc"], run.config.selection_split,
             entry["select_acc"], entry["lr_end"], entry["images_per_s"], _duration(elapsed), _duration(left), skipped,
             phase)


def _train_epochs(run: _Run, select: ImageSplit, state: _Progress, bar, store: ResumeStore | None,
                  fingerprint: str, on_epoch_end, snapshot=None) -> None:
    if state.resumed_from_epoch is not None:
        log.info("resuming from epoch %d of %d (step %d of %d) from %s", state.epoch, run.config.epochs, state.step,
                 run.total_steps, store.directory if store is not None else "memory")
    log.info("training %d epochs of %d steps (%d images, batch %d) on %s in %s", run.config.epochs,
             run.steps_per_epoch, run.n_train, run.config.batch_size, run.device, run.precision.train)
    run_started = time.perf_counter()
    if run.lp_ft:
        log.info("lp-ft: epochs 1-%d probe (head%s only, the encoder frozen), epochs %d-%d fine-tune as Full FT; "
                 "one schedule over the whole run", run.method.lp_epochs,
                 " and projection" if run.method.lp_train_projection else "", run.method.lp_epochs + 1,
                 run.config.epochs)
    for epoch in range(state.epoch + 1, run.config.epochs + 1):
        started = time.perf_counter()
        if run.lp_ft and epoch == run.method.lp_epochs + 1:
            log.info("epoch %d: the probe phase is over; the image tower trains from step %d at lr %.3g "
                     "(the schedule's value there)", epoch, state.step + 1, run.lr_at(state.step))
        entry = run.train_epoch(epoch, state, bar)
        if entry is None:
            log.warning("loss or gradient norm is not finite at step %d: the run diverged and stops", state.diverged_at_step)
            return
        select_acc = run.accuracy(select)
        entry.update(select_acc=select_acc, time_s=time.perf_counter() - started)
        state.epochs.append(entry)
        state.epoch = epoch
        _log_epoch(run, entry, state, time.perf_counter() - run_started, epoch - (state.resumed_from_epoch or 0))
        improved = state.best_select_acc is None or select_acc > state.best_select_acc
        if improved:
            state.best_epoch, state.best_select_acc, state.best_state = epoch, select_acc, run.trainable_state()
        if snapshot is not None:
            snapshot(epoch)
        if store is not None:
            _save_resume(store, run, state, fingerprint, improved)
        if on_epoch_end is not None:
            on_epoch_end(dict(entry))


def _result(run: _Run, select: ImageSplit, test: ImageSplit | None, state: _Progress) -> FinetuneResult:
    final_state = run.trainable_state()
    diverged = state.diverged_at_step is not None
    # A diverged run's final weights are those before the non-finite step; score them too.
    final_select_acc = run.accuracy(select) if diverged or not state.epochs else state.epochs[-1]["select_acc"]
    final_test_acc = run.accuracy(test) if test is not None else None
    best_state = state.best_state if state.best_state is not None else final_state
    best_test_acc = None
    if test is not None and state.best_epoch is not None:
        _load_params(run.model, best_state)
        best_test_acc = run.accuracy(test)
        _load_params(run.model, final_state)
    run.model.eval()
    if run.lp_ft:  # the model leaves as apply_method set it up: every parameter lp-ft trains
        set_lp_ft_phase(run.model, run.method, probing=False)
    history = _history(run, state, final_select_acc, final_test_acc, best_test_acc)
    for flag in history["flags"]:
        log.warning("%s", flag)
    return FinetuneResult(history=history, best_state=best_state, final_state=final_state)


# A run whose GradScaler skipped more than this share of its steps is flagged: its loss scale
# collapsed (a healthy fp16 run skips a handful while the scale settles, then almost none).
SKIPPED_STEPS_FLAG = 0.05


def _flags(state: _Progress) -> list[str]:
    if state.step and state.skipped_steps > SKIPPED_STEPS_FLAG * state.step:
        return [f"the fp16 loss scaler skipped {state.skipped_steps} of {state.step} steps "
                f"({100 * state.skipped_steps / state.step:.0f}%): the loss scale collapsed; fewer updates than planned"]
    return []


def _history(run: _Run, state: _Progress, final_select_acc: float, final_test_acc, best_test_acc) -> dict:
    counts = trainable_parameter_counts(run.model)
    train_time = sum(e["train_s"] for e in state.epochs)
    images = run.n_train * len(state.epochs)
    return {
        "status": "diverged" if state.diverged_at_step is not None else "completed",
        "n_train": run.n_train,
        "diverged_at_step": state.diverged_at_step,
        "selection_split": run.config.selection_split,
        "epochs": [dict(e) for e in state.epochs],
        "best_epoch": state.best_epoch,
        "best_select_acc": state.best_select_acc,
        "final_select_acc": final_select_acc,
        "final_test_acc": final_test_acc,
        "best_test_acc": best_test_acc,
        "trainable_params": {group: counts[group] for group in HISTORY_PARAM_GROUPS},
        "train_time_s": sum(e["time_s"] for e in state.epochs),
        "images_per_s": images / train_time if train_time > 0 else None,
        "steps": state.step,
        "skipped_steps": state.skipped_steps,
        "loss_scale": run.scaler.get_scale() if run.scaler.is_enabled() else None,
        "flags": _flags(state),
        "resumed_from_epoch": state.resumed_from_epoch,
        "precision": run.precision.train,
        "eval_precision": run.precision.eval,
        "grad_scaler": run.precision.scaled,
        "device": str(run.device),
    }
