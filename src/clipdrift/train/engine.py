"""The fine-tuning engine: (model, image splits, config) → history, best and final weights.

:func:`finetune` runs the protocol (the paper preset; resources/paper_protocol.yaml): AdamW with one
parameter group and weight decay 0.01; the per-step warm-up + cosine schedule of
:mod:`clipdrift.train.config`; cross-entropy; gradient-norm clipping at 1.0; the precision of
:mod:`clipdrift.train.precision`; evaluation on the selection split after every epoch; the best
(strictly better accuracy) and the final weights.

Reliability:

- Determinism: data order and flips come from ``(seed, epoch)`` (:mod:`clipdrift.train.batches`),
  dropout from the seeded global RNG, so the same seed on the CPU gives identical histories and weights.
- Resume: after every epoch the run's state goes to a :class:`clipdrift.train.resume.ResumeStore`;
  a rerun of a killed run continues from its last completed epoch and ends where an uninterrupted run does.
- Stopping on request (``stop``, e.g. a signal a cluster sends before preempting the job): the
  run finishes the optimiser step in progress, saves its state at that step - the position in
  the epoch's batch order and the epoch's running sums included - and raises
  :class:`TrainingStopped`; the next attempt continues at the next batch of the same order (a
  function of seed and epoch), so its final and best weights are bit-identical to an
  uninterrupted run's. A request during evaluation or while a state is written takes effect
  after it, at the epoch's end.
- LP-FT (``method=MethodConfig("lp-ft", ...)``; which parameters each phase trains:
  :mod:`clipdrift.model.adapters`): one optimiser over every parameter the method ever trains; at
  the start of every epoch the phase follows from the epoch number (probe up to ``lp_epochs``:
  head only, the encoder frozen; then Full FT), so a resumed run lands in its phase, and the
  epoch's history entry records it (``probe`` or ``finetune``). The warm-up and schedule span
  the whole run, Full FT's step for step: the encoder starts training, when the probe phase
  ends, at the schedule's learning rate of that step (no second warm-up; AdamW's moments of the
  encoder start from zero there, their bias correction from its first step).
- Divergence: a non-finite loss (or gradient norm) stops the run before the update that would
  poison the weights; the history says ``diverged`` and at which step, and the outputs are
  still produced, so a study with one exploding learning rate completes and reports it.

No Snakemake, no argparse, no file I/O beyond the resume store the caller hands in.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from clipdrift.core.device import deterministic, resolve_device, seeded, torch_threads
from clipdrift.data.split import ImageSplit, to_model_input
from clipdrift.model.adalora import RankSchedule, schedules_rank
from clipdrift.model.adapters import MethodConfig, set_lp_ft_phase, trainable_parameters
from clipdrift.model.backbones import CLIPClassifier, normalisation
from clipdrift.train.batches import CachedBatches, epoch_order, free_gpu_memory, keeps_data_on_device
from clipdrift.train.checks import check_inputs, check_method
from clipdrift.train.config import (
    ADAMW_BETAS,
    ADAMW_EPS,
    TrainConfig,
    TrainConfigError,
    lr_factor,
    warmup_steps,
)
from clipdrift.train.evaluate import top1_accuracy
from clipdrift.train.history import run_history
from clipdrift.train.precision import resolve_precision
from clipdrift.train.regularisers import AttentionRegulariser, cls_attention
from clipdrift.train.resume import Progress, ResumeStore, load_params, restore_resume, run_fingerprint, save_resume
from clipdrift.train.trace import EntropyTrace

log = logging.getLogger(__name__)



class TrainingStopped(Exception):
    """A stop was requested: the run saved its state (when it has a resume store) and stopped;
    rerunning it continues where it stopped."""

    def __init__(self, epoch: int, step: int, saved: bool):
        where = f"epoch {epoch}, after step {step}"
        super().__init__(f"stopped on request in {where}: " + (
            "its state is saved, and the next attempt continues from there" if saved else
            "no resume store was given, so the next attempt starts afresh"))
        self.epoch, self.step, self.saved = epoch, step, saved


def _never() -> bool:
    return False


class EpochEnd(Enum):
    FINISHED = "finished"  # every batch trained: the outcome holds the epoch's history entry
    DIVERGED = "diverged"  # a non-finite loss or gradient norm: the run stops here
    STOPPED = "stopped"  # a stop was asked before the last batch: the progress holds where


@dataclass(frozen=True)
class EpochOutcome:
    end: EpochEnd
    entry: dict | None = None


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
        load_params(model, states[which])
        return model


class _Run:
    """One fine-tuning run: model, optimiser, data and precision, resolved from the config."""

    def __init__(self, model: CLIPClassifier, train: ImageSplit, config: TrainConfig, method: MethodConfig | None = None,
                 probe: ImageSplit | None = None):
        self.model, self.config, self.method = model, config, method
        self.device = resolve_device(config.device)
        self.precision = resolve_precision(config.amp, self.device, eval_amp=config.eval_amp,
                                           cpu_autocast=config.cpu_autocast)
        self.mean, self.std = normalisation(model.clip, self.device)
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
        on_device = keeps_data_on_device(train.images.numel(), free_gpu_memory(self.device), config.data_on_device)
        self.data = CachedBatches(train, self.device, on_device, self.mean, self.std, config.batch_size)
        self.n_train = len(train)
        self.steps_per_epoch = math.ceil(self.n_train / config.batch_size)
        probe_images = self._probe_input(probe) if config.measures_the_probe else None
        self.regulariser = None
        if config.regulariser is not None:  # from the weights as they are now: before any step or resumed state
            self.regulariser = AttentionRegulariser(config.regulariser, model, probe_images)
        self.trace = None
        if config.traces:
            self.trace = EntropyTrace(model, probe_images, config.trace_interval(self.steps_per_epoch),
                                      self.precision.eval_autocast)
        self.reference_identity = {"probe": probe.labels.tolist()} if probe_images is not None else {}  # resume
        self.total_steps = self.steps_per_epoch * config.epochs
        self.n_warmup = warmup_steps(self.total_steps, config.warmup_fraction)
        # AdaLoRA: the adapters' rank budget over this run's steps, and its orthogonality penalty
        self.rank_schedule = RankSchedule(model, method, self.total_steps) if schedules_rank(method) else None

    def _probe_input(self, probe: ImageSplit | None) -> torch.Tensor:
        if probe is None:
            raise TrainConfigError("the entropy trace and the attention regularisers measure against the study's "
                                   "probe: pass finetune(..., probe=...)")
        return to_model_input(probe.images.to(self.device), self.mean, self.std)

    @property
    def lp_ft(self) -> bool:
        return self.method is not None and self.method.probes_first

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
                         labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Loss (cross-entropy + weight · regulariser), number correct, (clipped-before) gradient
        norm and regulariser term (0 without one) of one batch, all on device."""
        attention = cls_attention(self.model.clip) if self.regulariser else contextlib.nullcontext([])
        with self.precision.train_autocast(), attention as rows:
            logits = self.model(images)
            penalty = self.regulariser.penalty(rows, images) if self.regulariser else torch.zeros((), device=self.device)
        loss = F.cross_entropy(logits.float(), labels)
        if self.regulariser:
            loss = loss + self.config.regulariser.weight * penalty
        if self.rank_schedule:
            loss = loss + self.rank_schedule.penalty(self.model)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        max_norm = self.config.grad_clip if self.config.grad_clip is not None else math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        correct = (logits.detach().argmax(dim=1) == labels).sum()
        return loss.detach(), correct, norm, penalty.detach()

    def train_epoch(self, epoch: int, progress: Progress, bar, stop: Callable[[], bool] = _never) -> EpochOutcome:
        """Train one epoch from batch ``progress.position``: finished (with its history entry,
        without selection accuracy), diverged, or stopped because ``stop()`` asked before its last
        batch (``progress`` then holds the position and the running sums)."""
        phase = self.enter_phase(epoch)
        order, flips = epoch_order(self.config.seed, epoch, self.n_train, self.config.hflip)
        self.model.train()
        sums = progress.partial or {"loss": 0.0, "penalty": 0.0, "correct": 0, "seconds": 0.0, "trace": []}
        loss_sum, penalty_sum, correct, trace = sums["loss"], sums["penalty"], sums["correct"], list(sums["trace"])
        started = time.perf_counter() - sums["seconds"]
        bar.set_description(f"epoch {epoch}/{self.config.epochs}")
        first = progress.position * self.config.batch_size
        for start in range(first, self.n_train, self.config.batch_size):
            index = order[start:start + self.config.batch_size]
            images, labels = self.data.take(index, None if flips is None else flips[start:start + len(index)])
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr_at(progress.step)
            loss, batch_correct, norm, penalty = self.forward_backward(images, labels)
            # One host sync per step: needed to stop before a non-finite update reaches the weights.
            loss_value, correct_value, norm_value, penalty_value = torch.stack(
                [loss.float(), batch_correct.float(), norm.float(), penalty.float()]).tolist()
            # With fp16 an inf gradient is routine (the scaler skips that step); only the loss counts.
            if not math.isfinite(loss_value) or (not self.scaler.is_enabled() and not math.isfinite(norm_value)):
                progress.diverged_at_step = progress.step + 1
                return EpochOutcome(EpochEnd.DIVERGED)
            # The scaler skips a step exactly when unscaling found an inf/NaN gradient, which makes
            # the total norm non-finite: counted here, without another host sync.
            progress.skipped_steps += int(self.scaler.is_enabled() and not math.isfinite(norm_value))
            self.scaler.step(self.optimizer)
            self.scaler.update()
            progress.step += 1
            # AdaLoRA, in peft's order (after the optimiser step, before the next zero_grad, the step
            # counted from 0); not after a step the scaler skipped: its inf gradients would poison the scores
            if self.rank_schedule and math.isfinite(norm_value):
                self.rank_schedule.after_step(self.model, progress.step - 1)
            if self.trace and self.trace.due(progress.step):
                trace.append([progress.step, self.trace.measure()])
            loss_sum += loss_value * len(index)
            penalty_sum += penalty_value * len(index)
            correct += int(correct_value)
            seen = start + len(index)
            bar.update(1)
            bar.set_postfix(step=progress.step, loss=f"{loss_value:.4f}",
                            img_s=f"{seen / (time.perf_counter() - started):.0f}", refresh=False)
            if seen < self.n_train and stop():
                progress.position = seen // self.config.batch_size
                progress.partial = {"loss": loss_sum, "penalty": penalty_sum, "correct": correct,
                                    "seconds": time.perf_counter() - started, "trace": trace}
                return EpochOutcome(EpochEnd.STOPPED)
        progress.position, progress.partial = 0, None
        seconds = time.perf_counter() - started
        entry = {"epoch": epoch, "train_loss": loss_sum / self.n_train, "train_acc": correct / self.n_train,
                 "lr_end": self.lr_at(progress.step), "train_s": seconds, "images_per_s": self.n_train / seconds}
        if phase is not None:
            entry["phase"] = phase
        if self.regulariser:
            entry["train_penalty"] = penalty_sum / self.n_train
        if self.trace:
            entry["entropy_trace"] = trace  # [step, layer-mean CLS-attention entropy] at every traced step
        return EpochOutcome(EpochEnd.FINISHED, entry)

    def accuracy(self, split: ImageSplit) -> float:
        return top1_accuracy(self.model, split, self.device, self.precision, self.mean, self.std,
                             self.config.eval_batch_size)


def finetune(model: CLIPClassifier, train: ImageSplit, select: ImageSplit, config: TrainConfig, *,
             test: ImageSplit | None = None, resume: ResumeStore | str | None = None, progress: bool = True,
             on_epoch_end: Callable[[dict], None] | None = None, method: MethodConfig | None = None,
             snapshot: Callable[[int], None] | None = None, stop: Callable[[], bool] | None = None,
             probe: ImageSplit | None = None) -> FinetuneResult:
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
    for ``lp-ft``, whose phases finetune switches (LP-FT in the module docstring). For ``full``
    and ``lora`` the method changes nothing but the resume fingerprint; leaving it out trains
    whatever ``requires_grad`` says, as before.

    ``probe``: the study's probe (the class-balanced, seeded subset of the evaluation split every
    drift metric reads), which the entropy trace and the entropy floor's baseline measure.

    ``stop``: asked after every optimiser step but an epoch's last, and after every epoch's
    evaluation and save but the run's last; when it returns true the run saves its state at that
    point and raises :class:`TrainingStopped` (the module docstring).
    """
    check_method(model, config, method)
    check_inputs(model, config, {"train": train, "select": select, "test": test})
    store = ResumeStore(resume) if resume is not None and not isinstance(resume, ResumeStore) else resume
    # Seeding inside the run must not change the caller's random streams (CPU and the run's device).
    with torch_threads(config.num_threads), seeded(config.seed, resolve_device(config.device)), \
            deterministic(config.deterministic):
        run = _Run(model, train, config, method, probe)
        fingerprint = run_fingerprint(run, train, select) if store is not None else ""
        state = (restore_resume(store, run, fingerprint) if store is not None else None) or Progress()
        with tqdm(total=run.total_steps, initial=state.step, unit="step", disable=not progress, dynamic_ncols=True) as bar:
            _train_epochs(run, select, state, bar, store, fingerprint, on_epoch_end, snapshot, stop or _never)
        result = _result(run, select, test, state)
    if store is not None:
        store.clear()
    return result


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def _log_epoch(run: _Run, entry: dict, state: Progress, elapsed: float, epochs_timed: int) -> None:
    """One line per epoch in the job's log: a long run on a cluster shows where it is."""
    left = (run.config.epochs - entry["epoch"]) * elapsed / max(1, epochs_timed)
    skipped = f", {state.skipped_steps} fp16 steps skipped" if state.skipped_steps else ""
    phase = f", {entry['phase']} phase" if "phase" in entry else ""
    log.info("epoch %d/%d: loss %.4f, train acc %.4f, %s acc %.4f, lr %.3g, %.0f images/s, elapsed %s, ETA %s%s%s",
             entry["epoch"], run.config.epochs, entry["train_loss"], entry["train_acc"], run.config.selection_split,
             entry["select_acc"], entry["lr_end"], entry["images_per_s"], _duration(elapsed), _duration(left), skipped,
             phase)


def _train_epochs(run: _Run, select: ImageSplit, state: Progress, bar, store: ResumeStore | None,
                  fingerprint: str, on_epoch_end, snapshot=None, stop: Callable[[], bool] = _never) -> None:
    if state.resumed_from_epoch is not None:
        log.info("resuming at epoch %d of %d, batch %d (step %d of %d) from %s", state.epoch + 1,
                 run.config.epochs, state.position, state.step, run.total_steps,
                 store.directory if store is not None else "memory")
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
        if run.lp_ft and epoch == run.method.lp_epochs + 1 and not state.position:
            log.info("epoch %d: the probe phase is over; the image tower trains from step %d at lr %.3g "
                     "(the schedule's value there)", epoch, state.step + 1, run.lr_at(state.step))
        outcome = run.train_epoch(epoch, state, bar, stop)
        if outcome.end is EpochEnd.STOPPED:
            _stop(run, state, store, fingerprint, save=True)
        if outcome.end is EpochEnd.DIVERGED:
            log.warning("loss or gradient norm is not finite at step %d: the run diverged and stops", state.diverged_at_step)
            return
        entry = outcome.entry
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
            save_resume(store, run, state, fingerprint, improved)
        if on_epoch_end is not None:
            on_epoch_end(dict(entry))
        if epoch < run.config.epochs and stop():  # asked during the evaluation or the save: the state is this one
            _stop(run, state, store, fingerprint)


def _stop(run: _Run, state: Progress, store: ResumeStore | None, fingerprint: str, save: bool = False) -> None:
    """Raise :class:`TrainingStopped`, first saving the state at this step when it is not saved
    yet (``save``: stopped mid-epoch)."""
    if save and store is not None:
        save_resume(store, run, state, fingerprint, improved=False)
    stopped = TrainingStopped(state.epoch + (1 if state.position else 0), state.step, saved=store is not None)
    log.warning("%s", stopped)
    raise stopped


def _result(run: _Run, select: ImageSplit, test: ImageSplit | None, state: Progress) -> FinetuneResult:
    final_state = run.trainable_state()
    diverged = state.diverged_at_step is not None
    # A diverged run's final weights are those before the non-finite step; score them too.
    final_select_acc = run.accuracy(select) if diverged or not state.epochs else state.epochs[-1]["select_acc"]
    final_test_acc = run.accuracy(test) if test is not None else None
    best_state = state.best_state if state.best_state is not None else final_state
    best_test_acc = None
    if test is not None and state.best_epoch is not None:
        load_params(run.model, best_state)
        best_test_acc = run.accuracy(test)
        load_params(run.model, final_state)
    run.model.eval()
    if run.lp_ft:  # the model leaves as apply_method set it up: every parameter lp-ft trains
        set_lp_ft_phase(run.model, run.method, probing=False)
    history = run_history(run, state, final_select_acc, final_test_acc, best_test_acc)
    for flag in history["flags"]:
        log.warning("%s", flag)
    return FinetuneResult(history=history, best_state=best_state, final_state=final_state)
