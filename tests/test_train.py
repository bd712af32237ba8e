"""The fine-tuning engine on the tiny model: learning, outputs, determinism, resume, divergence."""

import json
import math
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny_models import TINY, make_tiny

from clipdrift.core.io import read_json, read_safetensors, write_json
from clipdrift.data.split import ImageSplit, to_model_input
from clipdrift.model.adapters import MethodConfig
from clipdrift.model.checkpoints import load_classifier, save_classifier
from clipdrift.train.batches import CachedBatches
from clipdrift.train.config import TrainConfig, TrainConfigError, lr_factor, warmup_steps
from clipdrift.train.engine import FinetuneResult, finetune
from clipdrift.train.evaluate import evaluate
from clipdrift.train.precision import choose_amp, resolve_precision
from clipdrift.train.resume import ResumeStore

from fakedata import class_image

N_CLASSES = 4
EPOCH_KEYS = {"epoch", "train_loss", "train_acc", "select_acc", "lr_end", "time_s", "images_per_s"}
HISTORY_KEYS = {"status", "diverged_at_step", "selection_split", "epochs", "best_epoch", "best_select_acc",
                "final_select_acc", "final_test_acc", "trainable_params", "train_time_s", "images_per_s", "steps"}
TIMING_KEYS = {"time_s", "train_s", "images_per_s", "train_time_s"}


def colour_split(per_class: int, offset: int) -> ImageSplit:
    """Noisy solid-colour images, one hue per class: learnable in a few steps."""
    images = torch.stack([
        torch.from_numpy(class_image(k, N_CLASSES, offset + i, 32, 32)).permute(2, 0, 1)
        for k in range(N_CLASSES) for i in range(per_class)
    ]).int()
    noise = torch.randint(-60, 60, images.shape, generator=torch.Generator().manual_seed(offset))
    labels = torch.arange(N_CLASSES).repeat_interleave(per_class)
    return ImageSplit((images + noise).clamp(0, 255).to(torch.uint8), labels, [f"c{k}" for k in range(N_CLASSES)])


TRAIN, VAL, TEST = colour_split(12, 0), colour_split(4, 100), colour_split(4, 200)


def config(**overrides) -> TrainConfig:
    values = dict(epochs=3, lr=1e-3, batch_size=16, seed=5, num_threads=1, deterministic=True)
    return TrainConfig(**{**values, **overrides})


def lora_model():
    torch.manual_seed(0)  # peft draws lora_A from the global RNG
    return make_tiny("lora", n_classes=N_CLASSES)


def without_timings(history: dict) -> dict:
    history = {k: v for k, v in history.items() if k not in TIMING_KEYS | {"resumed_from_epoch", "resumed_at_step"}}
    history["epochs"] = [{k: v for k, v in e.items() if k not in TIMING_KEYS} for e in history["epochs"]]
    return history


def assert_same_states(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_schedule_is_linear_warmup_then_cosine_to_zero():
    assert warmup_steps(600, 0.05) == 30 and warmup_steps(9, 0.05) == 0
    assert [lr_factor(s, 600, 30) for s in (0, 15, 30)] == [0.0, 0.5, 1.0]
    assert lr_factor(315, 600, 30) == pytest.approx(0.5)
    assert lr_factor(600, 600, 30) == 0.0
    assert lr_factor(0, 9, 0) == 1.0


def test_run_learns_and_returns_best_and_final_weights():
    model = make_tiny(n_classes=N_CLASSES)
    snapshots = []

    def snapshot(entry):
        snapshots.append({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})

    result = finetune(model, TRAIN, VAL, config(epochs=4), test=TEST, progress=False, on_epoch_end=snapshot)
    history = result.history
    losses = [e["train_loss"] for e in history["epochs"]]
    assert losses[-1] < 0.5 * losses[0] and history["epochs"][-1]["train_acc"] == 1.0
    assert HISTORY_KEYS <= history.keys() and all(EPOCH_KEYS <= e.keys() for e in history["epochs"])
    assert history["status"] == "completed" and history["diverged_at_step"] is None
    assert history["selection_split"] == "val" and history["precision"] == "fp32"
    assert history["steps"] == 4 * 3 and [e["epoch"] for e in history["epochs"]] == [1, 2, 3, 4]
    assert history["epochs"][-1]["lr_end"] == 0.0
    accs = [e["select_acc"] for e in history["epochs"]]
    # Best = first epoch reaching the maximum: a tie is not an improvement.
    assert history["best_epoch"] == accs.index(max(accs)) + 1 and history["best_select_acc"] == max(accs)
    assert history["final_select_acc"] == accs[-1]
    assert history["final_test_acc"] == evaluate(model, TEST)
    assert history["trainable_params"] == {"adapter": 0, "projection": 6144, "head": 260,
                                           "image_tower": 356064, "total": 362468}
    assert_same_states(result.best_state, snapshots[history["best_epoch"] - 1])
    assert_same_states(result.final_state, snapshots[-1])
    assert not model.training
    json.dumps(history)  # JSON-able as is


def test_outputs_are_written_as_checkpoints_and_history(tmp_path):
    model = make_tiny(n_classes=N_CLASSES)
    result = finetune(model, TRAIN, VAL, config(epochs=2), progress=False)
    save_classifier(tmp_path / "final.safetensors", model, TINY, MethodConfig("full"), seed=5)
    save_classifier(tmp_path / "best.safetensors", result.load_into(model, "best"), TINY, MethodConfig("full"), seed=5)
    write_json(tmp_path / "history.json", result.history)
    best, _ = load_classifier(tmp_path / "best.safetensors")
    final, _ = load_classifier(tmp_path / "final.safetensors")
    assert torch.equal(best.head.weight, result.best_state["head.weight"])
    assert torch.equal(final.head.weight, result.final_state["head.weight"])
    assert read_json(tmp_path / "history.json")["best_epoch"] == result.history["best_epoch"]


def test_same_seed_gives_identical_history_and_weights_and_keeps_caller_rng():
    models = [lora_model() for _ in range(3)]
    before = torch.get_rng_state()
    first = finetune(models[0], TRAIN, VAL, config(), progress=False)
    assert torch.equal(torch.get_rng_state(), before)  # seeding inside the run is undone
    second = finetune(models[1], TRAIN, VAL, config(), progress=False)
    other_seed = finetune(models[2], TRAIN, VAL, config(seed=6), progress=False)
    assert without_timings(first.history) == without_timings(second.history)
    assert_same_states(first.final_state, second.final_state)
    assert_same_states(first.best_state, second.best_state)
    assert not torch.equal(first.final_state["head.weight"], other_seed.final_state["head.weight"])


def run_until_killed(resume_dir: str) -> None:
    """Subprocess body: train with a resume store; after epoch 1 is saved, wait to be killed."""

    def wait_for_kill(entry):
        if entry["epoch"] == 1:
            print("epoch 1 saved", flush=True)
            time.sleep(600)

    finetune(lora_model(), TRAIN, VAL, config(), resume=resume_dir, progress=False, on_epoch_end=wait_for_kill)


def test_run_killed_after_first_epoch_resumes_and_matches_uninterrupted_run(tmp_path):
    resume_dir = tmp_path / ".resume" / "run"
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); " \
           f"import test_train; test_train.run_until_killed({str(resume_dir)!r})"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 120)
        line = proc.stdout.readline() if ready else ""
        assert line.strip() == "epoch 1 saved", proc.stderr.read() if proc.poll() is not None else "timed out"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    _, saved = ResumeStore(resume_dir).load_state()
    assert saved["epoch"] == 1 and saved["step"] == 3

    resumed = finetune(lora_model(), TRAIN, VAL, config(), resume=resume_dir, progress=False)
    uninterrupted = finetune(lora_model(), TRAIN, VAL, config(), progress=False)
    assert resumed.history["resumed_from_epoch"] == 1 and uninterrupted.history["resumed_from_epoch"] is None
    assert without_timings(resumed.history) == without_timings(uninterrupted.history)
    assert_same_states(resumed.final_state, uninterrupted.final_state)
    assert_same_states(resumed.best_state, uninterrupted.best_state)
    assert not resume_dir.exists()  # removed once the run completed


def test_state_of_another_configuration_is_not_resumed(tmp_path):
    store = ResumeStore(tmp_path / "resume")

    def crash(entry):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(make_tiny(n_classes=N_CLASSES), TRAIN, VAL, config(), resume=store, progress=False, on_epoch_end=crash)
    assert store.load_state()[1]["epoch"] == 1
    assert [p.name for p in store.directory.glob("best-*")] == ["best-epoch1.safetensors"]
    changed = finetune(make_tiny(n_classes=N_CLASSES), TRAIN, VAL, config(lr=2e-3), resume=store, progress=False)
    fresh = finetune(make_tiny(n_classes=N_CLASSES), TRAIN, VAL, config(lr=2e-3), progress=False)
    assert changed.history["resumed_from_epoch"] is None
    assert_same_states(changed.final_state, fresh.final_state)


def test_absurd_learning_rate_marks_the_run_diverged_instead_of_raising(tmp_path):
    model = make_tiny(n_classes=N_CLASSES)
    result = finetune(model, TRAIN, VAL, config(lr=1e6), test=TEST, resume=tmp_path / "resume", progress=False)
    history = result.history
    # 9 steps → no warmup: step 1 applies lr 1e6, step 2's loss is no longer finite.
    assert history["status"] == "diverged" and history["diverged_at_step"] == 2 and history["steps"] == 1
    assert history["epochs"] == [] and history["best_epoch"] is None
    assert 0.0 <= history["final_select_acc"] <= 1.0 and history["final_test_acc"] is not None
    # The weights stop before the non-finite update, and both outputs can still be written.
    assert all(bool(t.isfinite().all()) for t in result.final_state.values())
    assert_same_states(result.best_state, result.final_state)
    save_classifier(tmp_path / "best.safetensors", model, TINY, MethodConfig("full"), seed=5)
    write_json(tmp_path / "history.json", history)
    assert read_json(tmp_path / "history.json")["status"] == "diverged"
    assert read_safetensors(tmp_path / "best.safetensors")[0]["head.weight"].isfinite().all()
    assert not (tmp_path / "resume").exists()


def test_diverging_after_completed_epochs_keeps_them_and_the_best():
    model = make_tiny(n_classes=N_CLASSES)

    def blow_up(entry):  # sabotage the weights after epoch 2: the next loss is not finite
        if entry["epoch"] == 2:
            with torch.no_grad():
                model.head.weight.fill_(math.inf)

    result = finetune(model, TRAIN, VAL, config(epochs=4), progress=False, on_epoch_end=blow_up)
    history = result.history
    assert history["status"] == "diverged" and history["diverged_at_step"] == 7
    assert [e["epoch"] for e in history["epochs"]] == [1, 2] and history["best_epoch"] in (1, 2)
    assert all(bool(t.isfinite().all()) for t in result.best_state.values())


@pytest.mark.parametrize("overrides, message", [
    (dict(amp="fp8"), "amp 'fp8' is unknown"),
    (dict(selection_split="train"), "selection_split 'train' is unknown"),
    (dict(warmup_fraction=1.0), "warmup_fraction"),
])
def test_invalid_settings_are_refused_with_the_fix(overrides, message):
    with pytest.raises(TrainConfigError, match=message):
        finetune(make_tiny(n_classes=N_CLASSES), TRAIN, VAL, config(**overrides), progress=False)


def test_data_that_does_not_fit_the_model_is_refused():
    model = make_tiny(n_classes=N_CLASSES)
    big = ImageSplit(torch.zeros(4, 3, 64, 64, dtype=torch.uint8), torch.zeros(4, dtype=torch.long), ["a"])
    with pytest.raises(TrainConfigError, match=r"expects \(32, 32\): prepare the data with image_size=32"):
        finetune(model, big, VAL, config(), progress=False)
    many = ImageSplit(TRAIN.images, TRAIN.labels + 3, TRAIN.class_names)
    with pytest.raises(TrainConfigError, match="labels reach 6 but the model's head has 4 classes"):
        finetune(model, many, VAL, config(), progress=False)
    with pytest.raises(TrainConfigError, match="select split is empty: selection_split is 'val'"):
        finetune(model, TRAIN, VAL.subset([]), config(), progress=False)


def test_result_loads_best_or_final_into_a_model():
    model = make_tiny(n_classes=N_CLASSES)
    result = finetune(model, TRAIN, VAL, config(epochs=2), progress=False)
    other = make_tiny(n_classes=N_CLASSES)
    assert isinstance(result, FinetuneResult)
    result.load_into(other, "final")
    assert torch.equal(other.head.weight, model.head.weight)
    with pytest.raises(ValueError, match="'best' or 'final'"):
        result.load_into(other, "last")


def test_cached_batches_equal_to_model_input_with_the_same_flips():
    mean, std = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.25, 0.3])
    batches = CachedBatches(TRAIN, torch.device("cpu"), False, mean, std, batch_size=8)
    index, flip = torch.tensor([5, 0, 47, 12, 30]), torch.tensor([True, False, True, False, False])
    images, labels = batches.take(index, flip)
    assert torch.equal(images, to_model_input(TRAIN.images[index], mean, std, flip_mask=flip))
    assert torch.equal(labels, TRAIN.labels[index])
    assert torch.equal(TRAIN.images[5], colour_split(12, 0).images[5])  # the cache itself is untouched
    with pytest.raises(ValueError, match="batch of 9 exceeds the loader's batch size 8"):
        batches.take(torch.arange(9), None)


# ---- precision: the GPU's autocast and GradScaler lines, run on the CPU -----------------------


@pytest.mark.parametrize("amp, capability, expected", [
    ("auto", (9, 0), "bf16"),  # Hopper
    ("auto", (8, 0), "bf16"),  # Ampere
    ("auto", (7, 5), "fp16"),  # T4: bf16 would only be emulated
    ("auto", (7, 0), "fp16"),  # V100
    ("fp16", (9, 0), "fp16"),
    ("bf16", (7, 0), "bf16"),  # asked for explicitly: honoured
    ("off", (9, 0), "fp32"),
])
def test_amp_auto_decides_by_compute_capability(amp, capability, expected):
    assert choose_amp(amp, "cuda", capability) == expected


def test_the_cpu_trains_in_fp32_whatever_amp_says_unless_the_test_switch_is_on():
    cpu = torch.device("cpu")
    assert resolve_precision("fp16", cpu).train == "fp32"
    fp16 = resolve_precision("fp16", cpu, cpu_autocast=True)
    assert (fp16.train, fp16.eval, fp16.scaled) == ("fp16", "fp32", True)
    assert resolve_precision("bf16", cpu, eval_amp=True, cpu_autocast=True).eval == "bf16"


@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_autocast_training_runs_its_gpu_lines_on_the_cpu_and_evaluates_in_fp32(amp, monkeypatch):
    autocasts, evaluated_dtypes = [], []
    real_autocast = torch.autocast

    def recording_autocast(device_type, dtype=None, **kwargs):
        autocasts.append(dtype)
        return real_autocast(device_type, dtype=dtype, **kwargs)

    monkeypatch.setattr(torch, "autocast", recording_autocast)
    model = make_tiny(n_classes=N_CLASSES)
    model.head.register_forward_hook(lambda _m, _i, out: evaluated_dtypes.append((torch.is_grad_enabled(), out.dtype)))
    result = finetune(model, TRAIN, VAL, config(epochs=2, amp=amp, cpu_autocast=True), progress=False)
    history = result.history
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[amp]
    assert history["precision"] == amp and history["eval_precision"] == "fp32"
    assert history["grad_scaler"] == (amp == "fp16")
    assert autocasts and set(autocasts) == {dtype}  # every training step, no evaluation
    assert {d for grad, d in evaluated_dtypes if grad} == {dtype}
    assert {d for grad, d in evaluated_dtypes if not grad} == {torch.float32}  # selection in fp32
    assert history["status"] == "completed"
    assert all(bool(t.isfinite().all()) and t.dtype == torch.float32 for t in result.final_state.values())


def _inf_gradient_at(model, steps: set[int]):
    """Make the head's gradient infinite on the given (1-based) backward passes."""
    calls = {"n": 0}

    def hook(grad):
        calls["n"] += 1
        return grad * math.inf if calls["n"] in steps else grad

    model.head.weight.register_hook(hook)
    return calls


def test_the_scaler_unscales_before_clipping_and_counts_skipped_steps(monkeypatch):
    order = []
    real_unscale, real_clip = torch.amp.GradScaler.unscale_, torch.nn.utils.clip_grad_norm_

    def unscale(self, optimizer):
        order.append("unscale")
        return real_unscale(self, optimizer)

    def clip(params, max_norm, *args, **kwargs):
        order.append(("clip", max_norm))
        return real_clip(params, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.amp.GradScaler, "unscale_", unscale)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    model = make_tiny(n_classes=N_CLASSES)
    _inf_gradient_at(model, {2})
    before = {}

    def remember(entry):
        before.update({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})

    result = finetune(model, TRAIN, VAL, config(epochs=2, amp="fp16", cpu_autocast=True, grad_clip=1.0),
                      progress=False, on_epoch_end=remember)
    history = result.history
    assert order[:2] == ["unscale", ("clip", 1.0)] and order.count("unscale") == history["steps"] == 6
    assert history["skipped_steps"] == 1 and history["status"] == "completed"
    assert history["loss_scale"] == 65536.0 / 2  # the scaler halved its scale once, at the skipped step
    assert history["flags"]  # 1 of 6 steps is more than 5%: flagged
    assert all(bool(t.isfinite().all()) for t in result.final_state.values())


def test_a_resumed_fp16_run_continues_with_its_scaler_state(tmp_path):
    store = ResumeStore(tmp_path / "resume")

    def crash(entry):
        raise KeyboardInterrupt

    settings = config(amp="fp16", cpu_autocast=True)
    first = make_tiny(n_classes=N_CLASSES)
    _inf_gradient_at(first, {1, 2})
    with pytest.raises(KeyboardInterrupt):
        finetune(first, TRAIN, VAL, settings, resume=store, progress=False, on_epoch_end=crash)
    _, saved = store.load_state()
    assert saved["skipped_steps"] == 2 and saved["scaler"]["scale"] == 65536.0 / 4
    resumed = finetune(make_tiny(n_classes=N_CLASSES), TRAIN, VAL, settings, resume=store, progress=False)
    uninterrupted_model = make_tiny(n_classes=N_CLASSES)
    _inf_gradient_at(uninterrupted_model, {1, 2})
    uninterrupted = finetune(uninterrupted_model, TRAIN, VAL, settings, progress=False)
    assert resumed.history["resumed_from_epoch"] == 1
    assert resumed.history["skipped_steps"] == uninterrupted.history["skipped_steps"] == 2
    assert resumed.history["loss_scale"] == uninterrupted.history["loss_scale"]
    assert without_timings(resumed.history) == without_timings(uninterrupted.history)
    assert_same_states(resumed.final_state, uninterrupted.final_state)


def test_the_log_has_one_line_per_epoch_and_the_resume_point(tmp_path, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="clipdrift.train.engine")
    store = ResumeStore(tmp_path / "resume")

    def crash(entry):
        if entry["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(make_tiny(n_classes=N_CLASSES), TRAIN, VAL, config(), resume=store, progress=False, on_epoch_end=crash)
    caplog.clear()
    finetune(make_tiny(n_classes=N_CLASSES), TRAIN, VAL, config(), resume=store, progress=False)
    lines = [r.getMessage() for r in caplog.records if r.name == "clipdrift.train.engine"]
    assert lines[0] == f"resuming at epoch 3 of 3, batch 0 (step 6 of 9) from {store.directory}"
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert len(epochs) == 1 and epochs[0].startswith("epoch 3/3: loss ")
    for part in ("train acc", "val acc", "lr 0", "images/s", "elapsed", "ETA 0:00"):
        assert part in epochs[0], part


def test_building_a_random_model_on_purpose_gives_no_warning(caplog):
    from clipdrift.model.backbones import BackboneSpec, create_clip

    create_clip(BackboneSpec("clipdrift-tiny", init_seed=2))
    assert not [r for r in caplog.records if "No pretrained weights" in r.getMessage()]


# ---- lp-ft: linear probe, then fine-tune ---------------------------------------------------------

LP_FT = MethodConfig("lp-ft", lp_epochs=2)


def lp_ft_model(**method_kwargs):
    return make_tiny("lp-ft", n_classes=N_CLASSES, **{"lp_epochs": 2, **method_kwargs})


def _params(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _changed(a: dict, b: dict) -> set[str]:
    return {n for n in a if not torch.equal(a[n], b[n])}


@pytest.mark.parametrize("with_projection", [False, True])
def test_lp_ft_probes_the_head_then_fine_tunes_on_full_ft_schedule(tmp_path, with_projection):
    method = MethodConfig("lp-ft", lp_epochs=2, lp_train_projection=with_projection)
    model = lp_ft_model(lp_train_projection=with_projection)
    start, snapshots = _params(model), []
    result = finetune(model, TRAIN, VAL, config(epochs=4), progress=False, method=method,
                      on_epoch_end=lambda entry: snapshots.append(_params(model)))
    tower = {n for n in start if n.startswith("clip.visual.") and n != "clip.visual.proj"}
    text = {n for n in start if not n.startswith(("clip.visual.", "head."))}
    probed = {"head.weight", "head.bias"} | ({"clip.visual.proj"} if with_projection else set())
    # the probe epochs move the head (and the projection if asked) only: the encoder is bit-identical
    assert _changed(start, snapshots[0]) == probed and _changed(snapshots[0], snapshots[1]) == probed
    # then the image tower trains, as in Full FT; the text tower never does
    assert tower <= _changed(snapshots[1], snapshots[2]) and "clip.visual.proj" in _changed(snapshots[1], snapshots[2])
    assert not text & _changed(start, snapshots[-1])
    history = result.history
    assert [e["phase"] for e in history["epochs"]] == ["probe", "probe", "finetune", "finetune"]
    assert history["status"] == "completed" and history["steps"] == 4 * 3
    # one warm-up + cosine schedule over the whole run, step for step Full FT's
    full = finetune(make_tiny(n_classes=N_CLASSES), TRAIN, VAL, config(epochs=4), progress=False)
    assert [e["lr_end"] for e in history["epochs"]] == [e["lr_end"] for e in full.history["epochs"]]
    assert "phase" not in full.history["epochs"][0]
    # at the end it counts (and is set up for) what Full FT trains; its checkpoint holds the same
    assert history["trainable_params"] == full.history["trainable_params"]
    assert result.final_state.keys() == full.final_state.keys() == result.best_state.keys()
    save_classifier(tmp_path / "final.safetensors", model, TINY, method, seed=5)
    loaded, metadata = load_classifier(tmp_path / "final.safetensors")
    assert MethodConfig.from_dict(metadata["method"]) == method
    assert_same_states({n: p for n, p in loaded.named_parameters() if n in result.final_state}, result.final_state)


def test_lp_ft_killed_after_the_probe_phase_resumes_and_matches_an_uninterrupted_run(tmp_path):
    store = ResumeStore(tmp_path / "resume")

    def crash(entry):
        if entry["epoch"] == LP_FT.lp_epochs:
            raise KeyboardInterrupt

    start = _params(lp_ft_model())
    with pytest.raises(KeyboardInterrupt):
        finetune(lp_ft_model(), TRAIN, VAL, config(epochs=4), resume=store, progress=False, on_epoch_end=crash,
                 method=LP_FT)
    tensors, saved = store.load_state()
    assert saved["epoch"] == 2 and saved["step"] == 6
    # The optimiser holds every parameter lp-ft trains, but the frozen encoder got no gradient:
    # AdamW kept no state for it and left it bit-identical (no update, no weight decay).
    order = [n for n, p in lp_ft_model().named_parameters() if p.requires_grad]
    assert {order[int(k.split("/")[1])] for k in tensors if k.startswith("optim/")} == {"head.weight", "head.bias"}
    saved_params = {k.removeprefix("param/"): v for k, v in tensors.items() if k.startswith("param/")}
    assert saved_params.keys() == set(order)
    assert _changed({n: start[n] for n in order}, saved_params) == {"head.weight", "head.bias"}

    resumed = finetune(lp_ft_model(), TRAIN, VAL, config(epochs=4), resume=store, progress=False, method=LP_FT)
    uninterrupted = finetune(lp_ft_model(), TRAIN, VAL, config(epochs=4), progress=False, method=LP_FT)
    assert resumed.history["resumed_from_epoch"] == 2
    assert [e["phase"] for e in resumed.history["epochs"]] == ["probe", "probe", "finetune", "finetune"]
    assert without_timings(resumed.history) == without_timings(uninterrupted.history)
    assert_same_states(resumed.final_state, uninterrupted.final_state)
    assert_same_states(resumed.best_state, uninterrupted.best_state)
    assert not store.directory.exists()


@pytest.mark.parametrize("other", ["full, no method", "full", "lp-ft, lp_epochs 1"])
def test_an_lp_ft_state_never_resumes_another_method_or_phase_plan(tmp_path, other):
    store = ResumeStore(tmp_path / "resume")

    def crash(entry):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(lp_ft_model(), TRAIN, VAL, config(), resume=store, progress=False, on_epoch_end=crash, method=LP_FT)
    assert store.load_state()[1]["epoch"] == 1
    model, method = {
        "full, no method": (make_tiny(n_classes=N_CLASSES), None),
        "full": (make_tiny(n_classes=N_CLASSES), MethodConfig("full")),
        "lp-ft, lp_epochs 1": (lp_ft_model(lp_epochs=1), MethodConfig("lp-ft", lp_epochs=1)),
    }[other]
    result = finetune(model, TRAIN, VAL, config(), resume=store, progress=False, method=method)
    assert result.history["resumed_from_epoch"] is None


@pytest.mark.parametrize("lp_epochs, epochs", [(3, 3), (4, 3)])
def test_lp_ft_without_fine_tune_epochs_is_refused_naming_both(lp_epochs, epochs):
    method = MethodConfig("lp-ft", lp_epochs=lp_epochs)
    with pytest.raises(TrainConfigError, match=f"lp_epochs={lp_epochs} epochs but the run has only epochs={epochs}"):
        finetune(lp_ft_model(lp_epochs=lp_epochs), TRAIN, VAL, config(epochs=epochs), progress=False, method=method)


def test_lp_ft_model_needs_its_method_and_a_method_must_match_the_model():
    with pytest.raises(TrainConfigError, match="set up for lp-ft .*pass method="):
        finetune(lp_ft_model(), TRAIN, VAL, config(), progress=False)
    with pytest.raises(TrainConfigError, match="set up \\(apply_method\\) for .*method='full'.* but finetune was given"):
        finetune(make_tiny(n_classes=N_CLASSES), TRAIN, VAL, config(), progress=False, method=LP_FT)


def test_full_ft_history_is_the_same_with_or_without_its_method():
    without = finetune(make_tiny(n_classes=N_CLASSES), TRAIN, VAL, config(epochs=2), progress=False)
    given = finetune(make_tiny(n_classes=N_CLASSES), TRAIN, VAL, config(epochs=2), progress=False,
                     method=MethodConfig("full"))
    assert without_timings(without.history) == without_timings(given.history)
    assert_same_states(without.final_state, given.final_state)


def test_snapshots_are_taken_before_the_resume_state_so_a_killed_run_never_misses_one(tmp_path):
    store = ResumeStore(tmp_path / "resume")
    taken = {}
    model = make_tiny(n_classes=N_CLASSES)

    def snapshot(epoch):
        taken[epoch] = (store.exists(), model.head.weight.detach().clone())  # no state of this epoch yet

    def crash(entry):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(model, TRAIN, VAL, config(), resume=store, progress=False, snapshot=snapshot, on_epoch_end=crash)
    assert list(taken) == [1] and taken[1][0] is False  # the epoch-1 state was saved after its snapshot
    resumed = make_tiny(n_classes=N_CLASSES)
    taken_after = []
    result = finetune(resumed, TRAIN, VAL, config(), resume=store, progress=False, snapshot=taken_after.append)
    assert taken_after == [2, 3] and result.history["resumed_from_epoch"] == 1
    uninterrupted = finetune(make_tiny(n_classes=N_CLASSES), TRAIN, VAL, config(), progress=False)
    assert uninterrupted.history["epochs"][0]["train_loss"] == result.history["epochs"][0]["train_loss"]
