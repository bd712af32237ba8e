"""A fine-tune asked to stop - a cluster's warning signal before preemption, SIGTERM, Ctrl-C -
saves its state at the step it is at and the next attempt ends with the weights an uninterrupted
run ends with, bit for bit, wherever the request came: mid-epoch, at an epoch's last step, during
evaluation or while a state is being written."""

import os
import signal

import pytest
import torch
from tiny_models import make_tiny

from clipdrift.pipeline.jobs.signals import STOP_SIGNALS, stop_on_signals
from clipdrift.train import engine
from clipdrift.train.engine import TrainingStopped, finetune
from clipdrift.train.resume import ResumeStore

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
    return {method: finetune(_model(method), TRAIN, VAL, _settings(method), test=TEST, progress=False, probe=VAL,
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
    return finetune(_model(method), TRAIN, VAL, _settings(method), test=TEST, resume=store, progress=False, probe=VAL,
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
        finetune(_model(method), TRAIN, VAL, _settings(method), test=TEST, resume=store, progress=False, probe=VAL,
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
        finetune(_model("full"), TRAIN, VAL, _settings("full"), test=TEST, resume=store, progress=False, probe=VAL,
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
        finetune(_model("full"), TRAIN, VAL, _settings("full"), test=TEST, resume=store, progress=False, probe=VAL,
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
        finetune(_model("full"), TRAIN, VAL, _settings("full"), test=TEST, resume=store, progress=False, probe=VAL,
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


# A fine-tune as Snakemake runs it in a SLURM job step: Snakemake (with what the Snakefile sets), a
# shell that does not exec the script (bash < 5.1 forks for the last command of a list), the script.
_JOB = """if True:
    import sys, time
    from clipdrift.pipeline.jobs.signals import STOPPED_EXIT, stop_on_signals
    with stop_on_signals() as stop:
        print("ready", flush=True)
        while not stop():
            time.sleep(0.01)
    sys.exit(STOPPED_EXIT)
"""
_SNAKEMAKE = """if True:
    import os, signal, subprocess, sys
    from clipdrift.pipeline.jobs.signals import WARNING_SIGNAL, let_jobs_take_the_warning
    let_jobs_take_the_warning()
    shell = subprocess.Popen(["bash", "-c", f"set -euo pipefail; {sys.executable} -c '{sys.argv[1]}'; exit $?"],
                             stdout=subprocess.PIPE, text=True)
    assert shell.stdout.readline() == "ready\\n"
    os.killpg(0, WARNING_SIGNAL)  # as SLURM's --signal does: every process of the step
    print(f"snakemake alive, job exit {shell.wait()}")
"""


def test_the_warning_signal_reaches_the_fine_tune_through_snakemake_and_its_shell():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", _SNAKEMAKE, _JOB], capture_output=True, text=True, timeout=60,
                            start_new_session=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "snakemake alive, job exit 75"
    assert "SIGUSR1 received: stopping after the current step" in result.stderr


def test_the_slurm_profile_asks_for_the_warning_signal_the_fine_tune_stops_on():
    import re

    import yaml

    from clipdrift.pipeline.jobs.signals import WARNING_SIGNAL

    from workflow_helpers import REPO

    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    asked = re.fullmatch(r"'--signal=(\w+)@(\d+)'", profile["default-resources"]["slurm_extra"])
    assert asked, profile["default-resources"]["slurm_extra"]
    assert signal.Signals[f"SIG{asked.group(1)}"] == WARNING_SIGNAL and WARNING_SIGNAL in STOP_SIGNALS
    assert int(asked.group(2)) >= 60  # SLURM's own resolution; the grace is argued in README (Preemption)


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

    from workflow_helpers import REPO, default_sigint, wait_until

    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    for workdir in (reference, interrupted):
        workdir.mkdir()
    assert _study(reference).returncode == 0
    (interrupted / "longer.yaml").write_text(LONGER_RUN)
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(interrupted),
               "--cores", "2", "--configfile", str(REPO / "configs/test.yaml"), str(interrupted / "longer.yaml")]
    run = subprocess.Popen(command, start_new_session=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
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


# ---- on a real SLURM cluster: the warning signal, a requeue and a time limit while Snakemake watches -------

SLURM_ARGS = ("--jobs", "4", "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "1",
              "--slurm-keep-successful-logs", "--set-resources", "finetune:gpu=0", "extract:gpu=0", "zeroshot:gpu=0",
              "probe_reference:gpu=0", "zeroshot_classifier:gpu=0", "zeroshot_pretrained_indomain:gpu=0",
              "finetune:cpus_per_task=1", "pretrain_backbone:cpus_per_task=2", "--set-threads", "finetune=1",
              "pretrain_backbone=2", "--set-resource-scopes", "cpus_per_task=local", "--resources", "cpus_per_task=2")


def _default_resources(**overrides) -> list[str]:
    """profiles/slurm's default resources on this one-node cluster: its slurm_extra (the warning
    signal) as the profile has it unless overridden; partition and sizes for the test machine."""
    import yaml

    from workflow_helpers import REPO

    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    resources = {**profile["default-resources"], "slurm_partition": "debug", "runtime": 10, "mem_mb": 1500,
                 "cpus_per_task": 1, **overrides}
    return ["--default-resources", *(f"{name}={value}" for name, value in resources.items())]


class _SlurmStudy:
    """A test study run through profiles/slurm by a watching Snakemake, and what its fine-tune logs."""

    def __init__(self, workdir, study: str, *args: str, targets: tuple[str, ...] = ()):
        import subprocess
        import sys

        from workflow_helpers import REPO

        (workdir / "study.yaml").write_text(study)
        self.workdir, self.log = workdir, workdir / "results/test/logs/finetune" / f"{RUN}.log"
        command = [sys.executable, "-m", "snakemake", *targets, "--snakefile", str(REPO / "Snakefile"), "--directory",
                   str(workdir), "--profile", str(REPO / "profiles/slurm"), "--configfile",
                   str(REPO / "configs/test.yaml"), str(workdir / "study.yaml"), *SLURM_ARGS, *args]
        self.watcher = subprocess.Popen(command, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def text(self) -> str:
        """The current attempt's log (Snakemake removes it when the job starts again)."""
        try:
            return self.log.read_text()
        except FileNotFoundError:
            return ""

    def stopped_at(self) -> int | None:
        """The step the current attempt's log says it stopped after."""
        import re

        found = re.search(r"stopped on request in epoch \d+, after step (\d+): its state is saved", self.text())
        return int(found.group(1)) if found else None

    def job(self) -> str | None:
        """The SLURM job id of the fine-tune's submission now (the plugin names each submission's log by its id)."""
        logs = sorted((self.workdir / ".snakemake/slurm_logs").glob("group_run_*/*.log"), key=lambda p: p.stat().st_mtime)
        return logs[-1].stem if logs else None

    def finish(self, timeout: float) -> str:
        """Wait for the watching Snakemake to end; its stderr."""
        return self.watcher.communicate(timeout=timeout)[1]

    def state(self) -> str:
        """The fine-tune's log, and the watching Snakemake's stderr if it has ended (for a failed wait)."""
        return self.text() + ("" if self.watcher.poll() is None else self.watcher.stderr.read()[-5000:])

    def abandon(self) -> None:
        """Kill the watching Snakemake if it still runs (a failed assertion)."""
        if self.watcher.poll() is None:
            self.watcher.kill()


def _time_limit(job: str) -> str:
    """A running SLURM job's time limit, as squeue prints it."""
    import subprocess

    return subprocess.run(["squeue", "-h", "-o", "%l", "-j", job], capture_output=True, text=True).stdout.strip()


def _history(workdir) -> dict:
    import json

    return json.loads((workdir / "results/test/runs" / RUN / "history.json").read_text())


@pytest.mark.slow
@pytest.mark.slurm
def test_on_slurm_a_warned_then_requeued_fine_tune_resumes_at_its_steps_and_ends_as_an_uninterrupted_run(tmp_path):
    import subprocess
    import time

    from clipdrift.core.io import read_safetensors

    from workflow_helpers import require_slurm, wait_until

    require_slurm()
    reference, cluster = tmp_path / "reference", tmp_path / "cluster"
    for workdir in (reference, cluster):
        workdir.mkdir()
    longer = LONGER_RUN.replace("epochs: 3, sizes: {train: 1600", "epochs: 5, sizes: {train: 3200")  # 500 steps
    assert _study(reference, text=longer).returncode == 0
    study = _SlurmStudy(cluster, longer, *_default_resources())
    try:
        # 1. the warning signal, delivered as SLURM delivers --signal's: to every process of the job's steps
        #    (the Snakemake running the fine-tune in its step too), not to the batch shell
        assert wait_until(lambda: "epoch 1/5:" in study.text(), 600), study.state()
        time.sleep(1.0)  # into epoch 2 (an epoch takes ~2.5 s here)
        warned_job = study.job()
        assert subprocess.run(["scancel", "--signal=USR1", warned_job]).returncode == 0
        assert wait_until(lambda: study.stopped_at() is not None, 60)
        warned = study.stopped_at()
        assert "SIGUSR1 received" in study.text()
        # 2. the fine-tune exited 75, so its job failed; Snakemake's retry submits it again, and it resumes there
        assert wait_until(lambda: f"(step {warned} of 500)" in study.text(), 300)
        retried_job = study.job()
        assert retried_job != warned_job
        time.sleep(1.0)
        # 3. SLURM requeues the running job (as a preemption with PreemptMode=REQUEUE does): SIGTERM, then requeued
        assert subprocess.run(["scontrol", "requeue", retried_job]).returncode == 0
        assert wait_until(lambda: study.stopped_at() is not None, 60)
        requeued = study.stopped_at()
        assert "SIGTERM received" in study.text() and requeued > warned
        # 4. the same job, started again after SLURM's requeue delay, resumes at that step and the study finishes
        assert wait_until(lambda: f"(step {requeued} of 500)" in study.text(), 300)
        stderr = study.finish(900)
    finally:
        study.abandon()
    assert study.watcher.returncode == 0, stderr[-5000:]
    assert study.job() == retried_job
    warned_log = (cluster / ".snakemake/slurm_logs").glob(f"group_run_*/{warned_job}.log")
    assert "exit status 75" in next(warned_log).read_text()
    assert f"resuming at epoch {requeued // 100 + 1} of 5, batch {requeued % 100} (step {requeued} of 500)" in study.text()
    assert _history(cluster)["resumed_at_step"] == requeued
    for which in ("best", "final"):
        ours, _ = read_safetensors(cluster / "results/test/runs" / RUN / f"{which}.safetensors")
        theirs, _ = read_safetensors(reference / "results/test/runs" / RUN / f"{which}.safetensors")
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), which


@pytest.mark.slow
@pytest.mark.slurm
def test_on_slurm_a_fine_tune_warned_before_its_time_limit_saves_and_its_retry_with_twice_the_time_resumes(tmp_path):

    from workflow_helpers import require_slurm, wait_until

    require_slurm()
    # a one-minute limit and the warning 20 s ahead (SLURM's own --signal, ~40 s into the job: the fine-tune
    # starts training 10-30 s in, and 2,000 steps take ~46 s); the retry gets two minutes and finishes
    longer = LONGER_RUN.replace("epochs: 3, sizes: {train: 1600", "epochs: 20, sizes: {train: 3200")
    longer += "resources: {finetune_runtime: 1}\n"
    study = _SlurmStudy(tmp_path, longer, *_default_resources(slurm_extra="'--signal=USR1@20'"),
                        targets=(f"results/test/runs/{RUN}/final.safetensors",))
    try:
        assert wait_until(lambda: study.job() is not None and _time_limit(study.job()), 600), study.state()
        first_limit = _time_limit(study.job())
        assert wait_until(lambda: study.stopped_at() is not None, 180), study.state()
        warned = study.stopped_at()
        assert "SIGUSR1 received" in study.text()  # from SLURM, ~20 s before the limit
        assert wait_until(lambda: f"(step {warned} of 2000)" in study.text(), 300), study.state()
        retried_limit = _time_limit(study.job())
        stderr = study.finish(600)
    finally:
        study.abandon()
    assert study.watcher.returncode == 0, stderr[-5000:]
    assert (first_limit, retried_limit) == ("1:00", "2:00")
    assert _history(tmp_path)["resumed_at_step"] == warned
