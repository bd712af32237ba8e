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
    resumed = _resume_to_the_end(method, store, tmp_path)
    assert resumed.history["resumed_at_step"] == steps  # it continued there: it did not start afresh
    _assert_same_run(resumed, uninterrupted[method])


def test_a_stop_at_an_epochs_last_step_takes_effect_after_its_evaluation_and_save(uninterrupted, tmp_path):
    store = ResumeStore(tmp_path / "resume")
    with pytest.raises(TrainingStopped, match="epoch 1, after step 3"):
        finetune(_model("full"), TRAIN, VAL, _settings("full"), test=TEST, resume=store, progress=False,
                 method=_method_config("full"), stop=_after_steps(STEPS_PER_EPOCH))
    _, saved = store.load_state()
    assert (saved["epoch"], saved["step"], saved["position"]) == (1, 3, 0) and len(saved["epochs"]) == 1
    resumed = _resume_to_the_end("full", store, tmp_path)
    assert resumed.history["resumed_at_step"] == 3
    _assert_same_run(resumed, uninterrupted["full"])


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
        finetune(_model("full"), TRAIN, VAL, _settings("full"), test=TEST, resume=store, progress=False,
                 method=_method_config("full"), stop=stop)
    monkeypatch.setattr(engine, "top1_accuracy", accuracy)
    assert store.load_state()[1]["epoch"] == 2 and signal.getsignal(number) is not None
    resumed = _resume_to_the_end("full", store, tmp_path)
    assert resumed.history["resumed_at_step"] == 6
    _assert_same_run(resumed, uninterrupted["full"])


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
        finetune(_model("full"), TRAIN, VAL, _settings("full"), test=TEST, resume=store, progress=False,
                 method=_method_config("full"), stop=stop)
    monkeypatch.setattr(ResumeStore, "save_state", save_state)
    assert writes == [3] and store.load_state()[1]["step"] == 3
    resumed = _resume_to_the_end("full", store, tmp_path)
    assert resumed.history["resumed_at_step"] == 3
    _assert_same_run(resumed, uninterrupted["full"])


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


def _study(workdir, *args, text: str = LONGER_RUN, **kwargs):
    from workflow_helpers import REPO, snakemake

    (workdir / "longer.yaml").write_text(text)
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


# ---- on a real SLURM cluster: a running fine-tune requeued, as a preemption with requeue does -----------

SLURM_ARGS = ("--jobs", "4", "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "1",
              "--slurm-keep-successful-logs", "--default-resources", "slurm_partition=debug", "runtime=10",
              "mem_mb=1500", "cpus_per_task=1", "--set-resources", "finetune:gpu=0", "extract:gpu=0", "zeroshot:gpu=0",
              "probe_reference:gpu=0", "zeroshot_classifier:gpu=0", "zeroshot_pretrained_indomain:gpu=0",
              "finetune:cpus_per_task=1", "pretrain_backbone:cpus_per_task=2", "--set-threads", "finetune=1",
              "pretrain_backbone=2", "--set-resource-scopes", "cpus_per_task=local", "--resources", "cpus_per_task=2")


def _slurm_job_of_the_run(workdir) -> str | None:
    """The SLURM job id of the run's group job now (the plugin names each submission's log by its id)."""
    logs = sorted((workdir / ".snakemake/slurm_logs").glob("group_run_*/*.log"), key=lambda p: p.stat().st_mtime)
    return logs[-1].stem if logs else None


@pytest.mark.slow
def test_on_slurm_a_requeued_fine_tune_resumes_at_its_step_and_ends_as_an_uninterrupted_run(tmp_path):
    import re
    import shutil
    import subprocess
    import sys
    import time

    from clipdrift.core.io import read_safetensors

    from workflow_helpers import REPO, wait_until

    if shutil.which("sinfo") is None or subprocess.run(["sinfo", "-h"], capture_output=True).returncode:
        if os.environ.get("CI"):
            pytest.fail("CI must provide a SLURM cluster (.ci/run starts one)")
        pytest.skip("no SLURM cluster here (.ci/start-slurm.sh starts one)")
    reference, cluster = tmp_path / "reference", tmp_path / "cluster"
    for workdir in (reference, cluster):
        workdir.mkdir()
    longer = LONGER_RUN.replace("epochs: 3, sizes: {train: 1600", "epochs: 4, sizes: {train: 3200")
    assert _study(reference, text=longer).returncode == 0
    (cluster / "longer.yaml").write_text(longer)
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(cluster),
               "--profile", str(REPO / "profiles/slurm"), "--configfile", str(REPO / "configs/test.yaml"),
               str(cluster / "longer.yaml"), *SLURM_ARGS]
    watcher = subprocess.Popen(command, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    log = cluster / "results/test/logs/finetune" / f"{RUN}.log"

    def text() -> str:  # the current attempt's log (Snakemake removes it when the job starts again)
        try:
            return log.read_text()
        except FileNotFoundError:
            return ""

    def stopped_at() -> int | None:  # the step the current attempt's log says it stopped after
        found = re.search(r"stopped on request in epoch \d+, after step (\d+): its state is saved", text())
        return int(found.group(1)) if found else None

    try:
        # 1. SLURM requeues the running job (as a preemption with PreemptMode=REQUEUE does): SIGTERM, then requeued
        assert wait_until(lambda: "epoch 1/4:" in text(), 600)
        time.sleep(1.0)  # into epoch 2 (an epoch takes ~2.5 s here)
        job = _slurm_job_of_the_run(cluster)
        assert subprocess.run(["scontrol", "requeue", job]).returncode == 0
        assert wait_until(lambda: stopped_at() is not None, 60)
        step = stopped_at()
        # 2. the requeued job (same id, after SLURM's requeue delay) resumes at that step and finishes the study
        assert wait_until(lambda: f"(step {step} of 400)" in text(), 600)
        _, stderr = watcher.communicate(timeout=900)
    finally:
        if watcher.poll() is None:
            watcher.kill()
    assert watcher.returncode == 0, stderr[-5000:]
    assert f"resuming at epoch {step // 100 + 1} of 4, batch {step % 100} (step {step} of 400)" in text()
    for which in ("best", "final"):
        ours, _ = read_safetensors(cluster / "results/test/runs" / RUN / f"{which}.safetensors")
        theirs, _ = read_safetensors(reference / "results/test/runs" / RUN / f"{which}.safetensors")
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), which
