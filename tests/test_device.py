"""The CUDA path, exercised on the CPU: device choice, seeded streams that leave every other
generator alone, fp32 measurement without TF32, deterministic kernels, the loader's GPU
branches (flips with torch.where, the pinned-buffer fence, data kept on the device) and the
GPU claims of the workflow's jobs and profiles."""

import ast
import logging
from types import SimpleNamespace

import pytest
import torch
import yaml
from tiny_models import make_tiny

from clipdrift.core import device as devices
from clipdrift.core.device import DeviceError, deterministic, full_fp32, resolve_device, seeded
from clipdrift.data.split import ImageSplit, to_model_input
from clipdrift.measure.runtime import evaluating
from clipdrift.pipeline.reruns import rule_scripts
from clipdrift.train.batches import CachedBatches, _CopyFence, keeps_data_on_device
from clipdrift.train.config import TrainConfig
from clipdrift.train.engine import finetune

from test_train import N_CLASSES, TRAIN, VAL, assert_same_states, without_timings
from workflow_helpers import REPO

# ---- device choice -------------------------------------------------------------------------


def test_the_suite_never_selects_cuda_even_where_cuda_looks_available(monkeypatch):
    from clipdrift.train.engine import _Run

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # (torch's optimisers would then try CUDA)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device(None) == torch.device("cpu")
    run = _Run(make_tiny(n_classes=N_CLASSES), TRAIN, TrainConfig(epochs=1, lr=1e-3, amp="fp16"))
    assert run.device == torch.device("cpu") and run.precision.train == "fp32" and not run.scaler.is_enabled()


def test_auto_is_cuda_when_available_and_nothing_pins_the_device(monkeypatch):
    monkeypatch.delenv(devices.DEVICE_ENV)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.parametrize("name, message", [("cuda:1", "asks for CUDA but none is available"),
                                           ("tpu", "is not a device torch knows")])
def test_a_device_this_machine_lacks_is_refused_with_the_fix(name, message, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match=message):
        resolve_device(name)


# ---- random streams ------------------------------------------------------------------------


class FakeCuda:
    """Records what the code asks of the CUDA generators, without a GPU."""

    def __init__(self, monkeypatch):
        self.calls, self.forked, self.current = [], [], None
        real_fork = torch.random.fork_rng
        monkeypatch.setattr(torch.cuda, "manual_seed", lambda seed: self.calls.append(("seed", self.current, seed)))
        monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: self.calls.append(("seed_all", seed)))
        monkeypatch.setattr(torch.cuda, "device", self.device)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        # record which devices' generators would be saved; fork the CPU stream for real
        monkeypatch.setattr(torch.random, "fork_rng", lambda devices=(): self.forked.append(list(devices))
                            or real_fork(devices=[]))

    def device(self, index):
        import contextlib

        @contextlib.contextmanager
        def scope():
            self.current = index
            try:
                yield
            finally:
                self.current = None

        return scope()


def test_seeding_a_cuda_run_touches_only_that_devices_generator(monkeypatch):
    cuda = FakeCuda(monkeypatch)
    before = torch.get_rng_state()
    with seeded(3, torch.device("cuda", 1)):
        first = torch.rand(2)
    with seeded(3, torch.device("cuda", 1)):
        assert torch.equal(torch.rand(2), first)
    assert torch.equal(torch.get_rng_state(), before)  # the CPU stream is restored
    assert cuda.forked == [[1], [1]]  # fork_rng saves and restores device 1's generator ...
    assert cuda.calls == [("seed", 1, 3), ("seed", 1, 3)]  # ... and only device 1 is reseeded


def test_building_and_training_never_reseed_every_gpu(monkeypatch):
    cuda = FakeCuda(monkeypatch)
    model = make_tiny("lora", n_classes=N_CLASSES, seed=4)
    finetune(model, TRAIN, VAL, TrainConfig(epochs=1, lr=1e-3, batch_size=16, seed=4), progress=False)
    assert not [call for call in cuda.calls if call[0] == "seed_all"]
    assert all(forked == [] for forked in cuda.forked)  # CPU work forks the CPU stream only


# ---- fp32 measurement and determinism -------------------------------------------------------


def _flags():
    return [getattr(owner, name) for owner, name in devices._precision_flags()]


def test_measurements_switch_tf32_off_and_restore_it():
    owner, name = devices._precision_flags()[1]
    previous = getattr(owner, name)
    setattr(owner, name, "tf32" if name == "fp32_precision" else True)  # PyTorch's cuDNN default
    try:
        outside = _flags()
        with full_fp32():
            assert _flags() == (["ieee", "ieee"] if name == "fp32_precision" else [False, False])
        assert _flags() == outside
        model = make_tiny(n_classes=3)
        with evaluating(model, torch.device("cpu")):
            assert _flags()[1] in ("ieee", False)  # every attention, CKA and zero-shot pass
        assert _flags() == outside
    finally:
        setattr(owner, name, previous)


def test_deterministic_mode_switches_the_kernels_and_restores_them(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    assert not torch.are_deterministic_algorithms_enabled()
    with deterministic():
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        assert not torch.backends.cudnn.benchmark
        assert devices.os.environ["CUBLAS_WORKSPACE_CONFIG"] in devices.CUBLAS_WORKSPACE
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic
    with deterministic(False):
        assert not torch.are_deterministic_algorithms_enabled()


def test_a_deterministic_run_gives_the_numbers_of_a_plain_one_on_the_cpu():
    settings = dict(epochs=2, lr=1e-3, batch_size=16, seed=5, num_threads=1)
    plain = finetune(make_tiny(n_classes=N_CLASSES), TRAIN, VAL, TrainConfig(**settings), progress=False)
    strict = finetune(make_tiny(n_classes=N_CLASSES), TRAIN, VAL, TrainConfig(**settings, deterministic=True),
                      progress=False)
    assert without_timings(plain.history) == without_timings(strict.history)
    assert_same_states(plain.final_state, strict.final_state)
    assert not torch.are_deterministic_algorithms_enabled()


# ---- the loader's GPU branches ---------------------------------------------------------------


@pytest.mark.parametrize("n_bytes, free, override, expected", [
    (100, None, True, False),  # no GPU: never
    (100, 1000, None, True),  # a quarter of the free memory is 250 bytes
    (300, 1000, None, False),
    (300, 1000, True, True),  # asked for explicitly
    (100, 1000, False, False),
])
def test_keeping_the_training_images_on_the_gpu_is_decided_from_its_free_memory(n_bytes, free, override, expected):
    assert keeps_data_on_device(n_bytes, free, override) is expected


def test_flipping_with_torch_where_equals_flipping_row_by_row():
    generator = torch.Generator().manual_seed(0)
    split = ImageSplit(torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8, generator=generator),
                       torch.arange(10) % 2, ["a", "b"])
    mean, std = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.3, 0.25])
    index, flip = torch.tensor([3, 1, 7, 0]), torch.tensor([True, False, True, True])
    rows = CachedBatches(split, torch.device("cpu"), False, mean, std, batch_size=4, flip_rows=True)
    where = CachedBatches(split, torch.device("cpu"), False, mean, std, batch_size=4, flip_rows=False)
    expected = to_model_input(split.images[index], mean, std, flip_mask=flip)
    for loader in (rows, where):
        images, labels = loader.take(index, flip)
        torch.testing.assert_close(images, expected, rtol=0, atol=1e-6)
        assert torch.equal(labels, split.labels[index])


def test_the_staging_buffer_is_reused_only_after_the_previous_copy_finished():
    events = []

    class FakeEvent:
        def __init__(self):
            self.id = len([e for e in events if e[0] == "new"])
            events.append(("new", self.id))

        def record(self):
            events.append(("record", self.id))

        def synchronize(self):
            events.append(("wait", self.id))

    split = ImageSplit(torch.zeros(6, 3, 4, 4, dtype=torch.uint8), torch.zeros(6, dtype=torch.long), ["a"])
    loader = CachedBatches(split, torch.device("cpu"), False, torch.zeros(3), torch.ones(3), batch_size=2)
    loader._staged = _CopyFence(FakeEvent)  # what a pinned buffer on a GPU gets
    real_select = torch.index_select

    def gather(*args, **kwargs):
        events.append(("gather",))
        return real_select(*args, **kwargs)

    torch.index_select = gather
    try:
        for start in (0, 2, 4):
            loader.take(torch.arange(start, start + 2), None)
    finally:
        torch.index_select = real_select
    assert events == [("gather",), ("new", 0), ("record", 0),
                      ("wait", 0), ("gather",), ("new", 1), ("record", 1),
                      ("wait", 1), ("gather",), ("new", 2), ("record", 2)]


# ---- jobs and profiles -----------------------------------------------------------------------


def test_a_job_whose_script_uses_no_gpu_is_pinned_to_the_cpu(monkeypatch, tmp_path):
    from clipdrift.pipeline.jobs.runner import run_script

    monkeypatch.delenv(devices.DEVICE_ENV)
    seen = {}
    job = SimpleNamespace(log=[str(tmp_path / "job.log")], threads=1, rule="aggregate", resources={"gpu": 1})
    run_script(job, lambda smk: seen.update(device=resolve_device("auto")))
    assert seen["device"] == torch.device("cpu") and devices.os.environ[devices.DEVICE_ENV] == "cpu"
    logging.getLogger().handlers.clear()


def test_a_gpu_job_that_claims_a_gpu_takes_a_slot_and_logs_its_device(monkeypatch, tmp_path):
    import clipdrift.pipeline.jobs.gpuslots
    from clipdrift.pipeline.jobs.runner import run_script

    claims = []
    slot = SimpleNamespace(describe=lambda: "GPU slot 1/2: CUDA_VISIBLE_DEVICES=1")
    monkeypatch.setattr(clipdrift.pipeline.jobs.gpuslots, "claim_gpu", lambda: claims.append(1) or slot)
    job = SimpleNamespace(log=[str(tmp_path / "job.log")], threads=1, rule="finetune", resources={"gpu": 1})
    run_script(job, lambda smk: None, uses_gpu=True)
    unclaimed = SimpleNamespace(log=[str(tmp_path / "other.log")], threads=1, rule="finetune", resources={"gpu": 0})
    run_script(unclaimed, lambda smk: None, uses_gpu=True)
    logging.getLogger().handlers.clear()
    assert claims == [1]  # only the job that claimed a GPU token takes a slot
    assert "GPU slot 1/2: CUDA_VISIBLE_DEVICES=1" in (tmp_path / "job.log").read_text()


def _uses_gpu(script: str) -> bool:
    tree = ast.parse((REPO / "workflow/scripts" / script).read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "run_script"]
    assert len(calls) == 1, f"{script} must call run_script once"
    return any(k.arg == "uses_gpu" and getattr(k.value, "value", False) is True for k in calls[0].keywords)


@pytest.mark.parametrize("profile", ["local", "slurm"])
def test_every_rule_that_can_use_a_gpu_claims_one_in_every_profile(profile):
    scripts = rule_scripts(REPO / "workflow")
    gpu_rules = {"finetune", "extract", "zeroshot", "zeroshot_classifier", "zeroshot_pretrained_indomain"}
    assert gpu_rules | {"report"} <= set(scripts)
    claims = yaml.safe_load((REPO / "profiles" / profile / "config.yaml").read_text())["set-resources"]
    for rule, script in scripts.items():
        claimed = int(claims.get(rule, {}).get("gpu", 0))
        if _uses_gpu(script):
            assert claimed >= 1, f"profiles/{profile}: rule {rule} runs on a GPU but claims none"
        else:
            assert claimed == 0, f"profiles/{profile}: rule {rule} claims a GPU its script never uses"


# ---- the remaining CUDA-only branches, with the device calls replaced -------------------------


def test_a_cuda_run_decides_its_precision_from_its_own_gpu(monkeypatch):
    from clipdrift.train.precision import resolve_precision

    asked = []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: asked.append(device) or (7, 5))
    t4 = resolve_precision("auto", torch.device("cuda", 2))
    assert (t4.train, t4.eval, t4.scaled, t4.device_type) == ("fp16", "fp32", True, "cuda")
    assert asked == [torch.device("cuda", 2)]


def test_a_cuda_run_measures_the_free_memory_of_its_gpu(monkeypatch):
    from clipdrift.train.batches import free_gpu_memory

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (8 << 30, 16 << 30))
    assert free_gpu_memory(torch.device("cuda", 0)) == 8 << 30
    assert free_gpu_memory(torch.device("cpu")) is None


def test_the_resume_state_saves_and_restores_the_runs_gpu_stream(monkeypatch):
    from clipdrift.train.resume import _rng_tensors, _set_rng_tensors

    streams = {}
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: torch.tensor([7, 7], dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: streams.update({device: state}))
    saved = _rng_tensors(torch.device("cuda", 1))
    assert set(saved) == {"rng/cpu", "rng/cuda"} and saved["rng/cuda"].tolist() == [7, 7]
    torch.rand(3)  # move the CPU stream on
    _set_rng_tensors(saved, torch.device("cuda", 1))
    assert torch.equal(torch.get_rng_state(), saved["rng/cpu"]) and list(streams) == [torch.device("cuda", 1)]
    assert set(_rng_tensors(torch.device("cpu"))) == {"rng/cpu"}


def test_seeding_the_current_gpu_when_the_device_has_no_index(monkeypatch):
    cuda = FakeCuda(monkeypatch)
    with seeded(5, "cuda"):
        pass
    assert cuda.forked == [[0]] and cuda.calls == [("seed", 0, 5)]


def test_zero_shot_mixed_precision_is_cuda_autocast_only_when_asked_for(monkeypatch):
    from clipdrift.measure import zeroshot

    opened = []
    monkeypatch.setattr(torch, "autocast", lambda device_type, **kwargs: opened.append(device_type) or "autocast")
    assert zeroshot._autocast(torch.device("cuda"), True) == "autocast" and opened == ["cuda"]
    assert zeroshot._autocast(torch.device("cuda"), False) != "autocast"
    assert zeroshot._autocast(torch.device("cpu"), True) != "autocast" and opened == ["cuda"]


def test_older_torch_without_the_fp32_precision_api_gets_its_allow_tf32_flags_switched(monkeypatch):
    matmul, cudnn = SimpleNamespace(allow_tf32=True), SimpleNamespace(allow_tf32=True)
    monkeypatch.setattr(torch.backends.cuda, "matmul", matmul)
    monkeypatch.setattr(torch.backends, "cudnn", cudnn)
    with full_fp32():
        assert (matmul.allow_tf32, cudnn.allow_tf32) == (False, False)
    assert (matmul.allow_tf32, cudnn.allow_tf32) == (True, True)


@pytest.mark.parametrize("failure, expected", [
    (OSError(28, "No space left on device", "/lab/results/x.safetensors.tmp"),
     "rule finetune could not write /lab/results/x.safetensors.tmp: the disk is full (No space left on device); free "
     "space there, or point results_dir at a disk with room, and rerun. Nothing half-written was kept."),
    (RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: \"No space left on "
                  "device\" }) No space left on device (os error 28)"),
     "rule finetune could not write results/test/runs/r: the disk is full"),
    (PermissionError(13, "Permission denied", "/lab/results/x.json"),
     "rule finetune could not write /lab/results/x.json: permission denied (Permission denied); give this user write"),
])
def test_a_full_disk_or_a_folder_without_write_permission_is_one_line_naming_the_path_and_the_fix(
        tmp_path, capsys, failure, expected):
    from clipdrift.pipeline.jobs.runner import run_script

    def fail(smk):
        raise failure

    job = SimpleNamespace(log=[str(tmp_path / "job.log")], threads=1, rule="finetune", resources={},
                          output=["results/test/runs/r/best.safetensors"])
    with pytest.raises(SystemExit) as ended:
        run_script(job, fail)
    logging.getLogger().handlers.clear()
    assert ended.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].split(" ERROR clipdrift: ", 1)[1].startswith(expected), lines
    assert "Traceback" not in (tmp_path / "job.log").read_text()


def test_any_other_error_still_raises_with_its_traceback(tmp_path):
    from clipdrift.pipeline.jobs.runner import run_script

    job = SimpleNamespace(log=[str(tmp_path / "job.log")], threads=1, rule="finetune", resources={})
    with pytest.raises(ZeroDivisionError):
        run_script(job, lambda smk: 1 / 0)
    logging.getLogger().handlers.clear()
    assert "unexpected error in rule finetune" in (tmp_path / "job.log").read_text()
