"""A fine-tune asked to stop - a cluster's warning signal before preemption, SIGTERM, Ctrl-C -
saves its state at the step it is at and the next attempt ends with the weights an uninterrupted
run ends with, bit for bit, wherever the request came: mid-epoch, at an epoch's last step, during
evaluation or while a state is being written."""

import os
import signal

import pytest
import torch

from clipdrift.pipeline.jobs.signals import STOP_SIGNALS, stop_on_signals
from clipdrift.train import engine
from clipdrift.train.engine import TrainingStopped, finetune
from clipdrift.train.resume import ResumeStore

from conftest import make_tiny
from test_train import N_CLASSES, TEST, TRAIN, VAL, assert_same_states, config, lora_model, without_timings

STEPS_PER_EPOCH, EPOCHS = 3, 3  # 48 training images in batches of 16 (test_train.TRAIN), config()'s 3 epochs


def _model(method):
    if method == "lp-ft":
        return make_tiny("lp-ft", n_classes=N_CLASSES, lp_epochs=1)
    return lora_model() if method == "lora" else make_tiny(method, n_classes=N_CLASSES)


def _settings(method):
    return config(entropy_trace_every=2) if method == "full" else config()


@pytest.fixture(scope="module")
def uninterrupted():
    """Each method's run without a stop: what every interrupted run must end with."""
    return {method: finetune(_model(method), TRAIN, VAL, _settings(method), test=TEST, progress=False,
                             method=_method_config(method))
            for method in ("full", "lora", "lp-ft")}


def _method_config(method):
    from clipdrift.model.adapters import MethodConfig

    return MethodConfig(method=method, lp_epochs=1) if method == "lp-ft" else MethodConfig(method=method)


def _after_steps(n: int):
    """A stop request that arrives once ``n`` optimiser steps are done (asked after every step)."""
    asked = []

    def stop():
        asked.append(1)
        return len(asked) >= n
    return stop


def _resume_to_the_end(method, store, tmp_path):
    return finetune(_model(method), TRAIN, VAL, _settings(method), test=TEST, resume=store, progress=False,
                    method=_method_config(method))


def _assert_same_run(resumed, reference):
    assert_same_states(resumed.final_state, reference.final_state)
    assert_same_states(resumed.best_state, reference.best_state)
    assert without_timings(resumed.history) == without_timings(reference.history)


@pytest.mark.parametrize("method, steps", [
    ("full", 1), ("full", 2), ("full", 4), ("full", 8),  # mid-epoch, the second epoch, the last epoch
    ("lora", 1), ("lora", 5),  # dropout draws from the RNG streams the state carries
    ("lp-ft", 2), ("lp-ft", 4),  # in the probe phase, and in the fine-tune phase
])
def test_a_run_stopped_mid_epoch_resumes_at_that_step_to_the_same_weights(method, steps, uninterrupted, tmp_path):
    store = ResumeStore(tmp_path / "resume")
    with pytest.raises(TrainingStopped, match=f"after step {steps}: its state is saved") as stopped:
        finetune(_model(method), TRAIN, VAL, _settings(method), test=TEST, resume=store, progress=False,
                 method=_method_config(method), stop=_after_steps(steps))
    _, saved = store.load_state()
    assert saved["step"] == steps and saved["position"] == steps % STEPS_PER_EPOCH and stopped.value.saved
    assert saved["epoch"] == steps // STEPS_PER_EPOCH
    _assert_same_run(_resume_to_the_end(method, store, tmp_path), uninterrupted[method])


def test_a_stop_at_an_epochs_last_step_takes_effect_after_its_evaluation_and_save(uninterrupted, tmp_path):
    store = ResumeStore(tmp_path / "resume")
    with pytest.raises(TrainingStopped, match="epoch 1, after step 3"):
        finetune(_model("full"), TRAIN, VAL, _settings("full"), test=TEST, resume=store, progress=False,
                 stop=_after_steps(STEPS_PER_EPOCH))
    _, saved = store.load_state()
    assert (saved["epoch"], saved["step"], saved["position"]) == (1, 3, 0) and len(saved["epochs"]) == 1
    _assert_same_run(_resume_to_the_end("full", store, tmp_path), uninterrupted["full"])


@pytest.mark.parametrize("number", STOP_SIGNALS, ids=lambda n: signal.Signals(n).name)
def test_a_signal_during_evaluation_stops_the_run_at_the_epochs_end(number, uninterrupted, tmp_path, monkeypatch):
    store, evaluations = ResumeStore(tmp_path / "resume"), []
    accuracy = engine.top1_accuracy

    def signalled(*args, **kwargs):
        evaluations.append(1)
        if len(evaluations) == 2:  # the second epoch's evaluation
            os.kill(os.getpid(), number)
        return accuracy(*args, **kwargs)

    monkeypatch.setattr(engine, "top1_accuracy", signalled)
    with stop_on_signals() as stop, pytest.raises(TrainingStopped, match="epoch 2, after step 6"):
        finetune(_model("full"), TRAIN, VAL, _settings("full"), test=TEST, resume=store, progress=False, stop=stop)
    monkeypatch.setattr(engine, "top1_accuracy", accuracy)
    assert store.load_state()[1]["epoch"] == 2 and signal.getsignal(number) is not None
    _assert_same_run(_resume_to_the_end("full", store, tmp_path), uninterrupted["full"])


def test_a_signal_while_the_state_is_written_leaves_a_complete_state(uninterrupted, tmp_path, monkeypatch):
    store = ResumeStore(tmp_path / "resume")
    save_state, writes = ResumeStore.save_state, []

    def signalled(self, tensors, metadata):
        writes.append(metadata["step"])
        if len(writes) == 1:  # mid-write of the first epoch's state: the write completes first
            os.kill(os.getpid(), signal.SIGTERM)
        save_state(self, tensors, metadata)

    monkeypatch.setattr(ResumeStore, "save_state", signalled)
    with stop_on_signals() as stop, pytest.raises(TrainingStopped, match="epoch 1, after step 3"):
        finetune(_model("full"), TRAIN, VAL, _settings("full"), test=TEST, resume=store, progress=False, stop=stop)
    monkeypatch.setattr(ResumeStore, "save_state", save_state)
    assert writes == [3] and store.load_state()[1]["step"] == 3
    _assert_same_run(_resume_to_the_end("full", store, tmp_path), uninterrupted["full"])


def test_a_stop_without_a_resume_store_says_the_next_attempt_starts_afresh():
    with pytest.raises(TrainingStopped, match="no resume store was given") as stopped:
        finetune(_model("full"), TRAIN, VAL, config(), progress=False, stop=_after_steps(1))
    assert not stopped.value.saved


def test_the_handlers_come_back_when_the_block_ends():
    before = {number: signal.getsignal(number) for number in STOP_SIGNALS}
    with stop_on_signals() as stop:
        assert not stop()
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop()
    assert {number: signal.getsignal(number) for number in STOP_SIGNALS} == before


# ---- Ctrl-C on a local Snakemake run -----------------------------------------------------------------

LONGER_RUN = """\
datasets:
  - {name: world-eurosat, epochs: 3, sizes: {train: 1600, val: 50, test: 50}}
methods: [full]
learning_rates: [1.0e-3]
seeds: [7]
curves: {enabled: false}
metrics: {probe_sensitivity: {enabled: false}}
"""
RUN = "world-eurosat/full/lr1e-03/seed7"


def _study(workdir, *args, **kwargs):
    from workflow_helpers import REPO, snakemake

    (workdir / "longer.yaml").write_text(LONGER_RUN)
    return snakemake(workdir, *args, "--cores", "2", "--configfile", str(REPO / "configs/test.yaml"),
                     str(workdir / "longer.yaml"), **kwargs)


@pytest.mark.slow
def test_ctrl_c_saves_the_running_fine_tunes_step_and_the_next_run_ends_where_an_uninterrupted_one_does(tmp_path):
    import subprocess
    import sys

    from clipdrift.core.io import read_safetensors

    from workflow_helpers import REPO, wait_until

    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    for workdir in (reference, interrupted):
        workdir.mkdir()
    assert _study(reference).returncode == 0
    (interrupted / "longer.yaml").write_text(LONGER_RUN)
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(interrupted),
               "--cores", "2", "--configfile", str(REPO / "configs/test.yaml"), str(interrupted / "longer.yaml")]
    run = subprocess.Popen(command, start_new_session=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log = interrupted / "results/test/logs/finetune" / f"{RUN}.log"
    assert wait_until(lambda: log.exists() and "epoch 1/3:" in log.read_text(), 600), run.stderr.read()
    os.killpg(run.pid, signal.SIGINT)  # as Ctrl-C does: the whole foreground group
    run.communicate(timeout=300)
    assert run.returncode != 0
    text = log.read_text()
    assert "SIGINT received" in text and "its state is saved" in text and "stopped on request in epoch" in text
    assert (interrupted / "results/test/.resume" / RUN / "state.safetensors").is_file()
    assert _study(interrupted, "--rerun-incomplete").returncode == 0
    assert "resuming at epoch" in log.read_text()
    for which in ("best", "final"):
        ours, _ = read_safetensors(interrupted / "results/test/runs" / RUN / f"{which}.safetensors")
        theirs, _ = read_safetensors(reference / "results/test/runs" / RUN / f"{which}.safetensors")
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), which
