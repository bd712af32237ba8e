"""GPU slots: one device per job, exclusive across processes, freed when a holder dies.

Every test runs on CPU with a fabricated device list (or a fabricated CUDA_VISIBLE_DEVICES /
nvidia-smi): the slots are file locks, so no GPU is needed to check who holds which device.
"""

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from clipdrift.pipeline.jobs import gpuslots
from clipdrift.pipeline.jobs.gpuslots import GpuSlotError, GpuSlotTimeout, claim_gpu, visible_devices

# A job in miniature: claim a slot, print what it got, hold it (for `hold` seconds, or until its
# stdin closes), print when it stops holding, release. Log lines go to stdout as "LOG ...".
HOLDER = textwrap.dedent("""
    import json, logging, os, sys, time
    from clipdrift.pipeline.jobs.gpuslots import claim_gpu
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="LOG %(message)s")
    args = json.loads(sys.argv[1])
    slot = claim_gpu(devices=args.get("devices"), slots_per_gpu=args.get("slots_per_gpu", 1),
                     lock_dir=args["lock_dir"], timeout=args.get("timeout", 60))
    start = time.monotonic()
    print(json.dumps({"start": start, "device": slot.device, "lock": str(slot.lock_path),
                      "visible": os.environ["CUDA_VISIBLE_DEVICES"], "described": slot.describe()}), flush=True)
    if args.get("hold") is None:
        sys.stdin.read()
    else:
        time.sleep(args["hold"])
    print(json.dumps({"end": time.monotonic()}), flush=True)
    slot.release()
""")

ENV_NAMES = ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", gpuslots.HOLDER_ENV, gpuslots.LOCK_DIR_ENV, "SLURM_JOB_ID")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    # claims write os.environ; start each test as a plain workstation job and restore afterwards
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)


def start_holder(lock_dir, env=None, **args):
    """A holder process; its environment is this one's without GPU-slot variables, plus ``env``."""
    env = {**{name: value for name, value in os.environ.items() if name not in ENV_NAMES}, **(env or {})}
    return subprocess.Popen([sys.executable, "-c", HOLDER, json.dumps({"lock_dir": str(lock_dir), **args})],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)


def read_json_line(process):
    """The holder's next JSON line, skipping its log lines."""
    while True:
        line = process.stdout.readline()
        assert line, f"holder {process.pid} ended without a report (exit code {process.wait()})"
        if line.startswith("{"):
            return json.loads(line)


def read_until(process, text):
    while text not in (line := process.stdout.readline()):
        assert line, f"holder {process.pid} ended before printing {text!r}"


@contextlib.contextmanager
def holding(lock_dir, env=None, **args):
    """A holder process that has claimed its slot; it releases when the block ends."""
    process = start_holder(lock_dir, env, **args)
    try:
        yield read_json_line(process), process
    finally:
        process.stdin.close()
        process.wait(timeout=30)


def test_competing_processes_never_share_a_slot(tmp_path):
    workers = [start_holder(tmp_path, devices=["0", "1"], hold=0.3) for _ in range(6)]
    held = []
    for worker in workers:
        out, _ = worker.communicate(timeout=120)
        assert worker.returncode == 0, out
        reports = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        held.append({**reports[0], **reports[1]})

    assert {h["lock"] for h in held} == {str(tmp_path / "gpu-0.slot-0.lock"), str(tmp_path / "gpu-1.slot-0.lock")}
    assert all(h["visible"] == h["device"] for h in held)
    for lock in {h["lock"] for h in held}:
        spans = sorted((h["start"], h["end"]) for h in held if h["lock"] == lock)
        for (_, earlier_end), (later_start, _) in itertools.pairwise(spans):
            assert later_start >= earlier_end, f"two processes held {lock} at once: {spans}"
    for h in held:
        at_once = sum(other["start"] <= h["start"] < other["end"] for other in held)
        assert at_once <= 2


def test_a_killed_holder_frees_its_slot(tmp_path):
    with holding(tmp_path, devices=["0"]) as (first, first_process):
        with pytest.raises(GpuSlotTimeout, match=f"pid {first_process.pid}"):
            claim_gpu(devices=["0"], lock_dir=tmp_path, timeout=0)
        waiter = start_holder(tmp_path, devices=["0"], timeout=30)
        read_until(waiter, "waiting")
        first_process.send_signal(signal.SIGKILL)
        first_process.wait(timeout=10)
        killed_at = time.monotonic()
        second = read_json_line(waiter)
        waiter.stdin.close()
        waiter.wait(timeout=30)

    assert first_process.returncode == -signal.SIGKILL
    assert second["lock"] == first["lock"]
    assert second["start"] - killed_at < 2.0


def test_an_existing_cuda_visible_devices_is_the_pool(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    with claim_gpu(lock_dir=tmp_path) as slot:
        assert slot.device in {"3", "5"}
        assert os.environ["CUDA_VISIBLE_DEVICES"] == slot.device
        assert "CUDA_DEVICE_ORDER" not in os.environ  # the user's numbering stays theirs
        # another job with the same pool gets the other device
        with holding(tmp_path, env={"CUDA_VISIBLE_DEVICES": "3,5"}) as (other, _):
            assert {other["device"], slot.device} == {"3", "5"}
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3,5"


def test_two_slots_per_gpu_spread_jobs_over_the_gpus_first(tmp_path):
    with contextlib.ExitStack() as stack:
        claims = [stack.enter_context(claim_gpu(devices=["0", "1"], slots_per_gpu=2, lock_dir=tmp_path, timeout=0))
                  for _ in range(4)]
        assert claims[0].device != claims[1].device
        assert sorted(c.device for c in claims) == ["0", "0", "1", "1"]
        assert len({c.lock_path for c in claims}) == 4
        assert [(c.slot, c.slots) for c in claims] == [(0, 4), (1, 4), (2, 4), (3, 4)]
        with pytest.raises(GpuSlotTimeout, match="all 4 slots"):
            claim_gpu(devices=["0", "1"], slots_per_gpu=2, lock_dir=tmp_path, timeout=0)
    assert all(not c.held for c in claims)


def test_without_devices_nothing_is_claimed_and_the_environment_stays(tmp_path, monkeypatch):
    before = dict(os.environ)
    assert claim_gpu(devices=[], lock_dir=tmp_path) is None
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi
    assert claim_gpu(lock_dir=tmp_path / "slots") is None
    assert dict(os.environ) == {**before, "PATH": str(tmp_path)}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # GPUs hidden on purpose
    assert claim_gpu(lock_dir=tmp_path / "slots") is None
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
    assert not (tmp_path / "slots").exists()


def test_gpus_are_discovered_through_nvidia_smi(tmp_path, monkeypatch):
    fake_smi = tmp_path / "bin" / "nvidia-smi"
    fake_smi.parent.mkdir()
    fake_smi.write_text("#!/bin/sh\nprintf '0\\n1\\n'\n")
    fake_smi.chmod(0o755)
    monkeypatch.setenv("PATH", str(fake_smi.parent))
    with claim_gpu(lock_dir=tmp_path / "slots") as slot:
        assert slot.device == "0" and slot.slots == 2
        assert os.environ["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"  # CUDA's index 0 is nvidia-smi's 0
    assert "CUDA_DEVICE_ORDER" not in os.environ and "CUDA_VISIBLE_DEVICES" not in os.environ


def test_a_device_chosen_by_slurm_is_left_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    slot = claim_gpu(lock_dir=tmp_path / "slots")
    assert slot.device == "0" and slot.slot is None and not slot.held
    assert "SLURM job 4242" in slot.describe() and "CUDA_VISIBLE_DEVICES=0" in slot.describe()
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    assert not (tmp_path / "slots").exists()  # no lock: every SLURM job may call its GPU "0"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert claim_gpu(lock_dir=tmp_path / "slots") is None


def test_the_jobs_own_processes_reuse_its_slot(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")
    with claim_gpu(lock_dir=tmp_path, timeout=0) as slot:
        again = claim_gpu(lock_dir=tmp_path, timeout=0)
        assert again.device == "7" and "this process" in again.assigned_by
        report = ("from clipdrift.pipeline.jobs.gpuslots import claim_gpu;"
                  "print(claim_gpu(lock_dir='unused', timeout=0).describe())")
        child = subprocess.run([sys.executable, "-c", report], capture_output=True, text=True, timeout=60, check=False)
        assert child.returncode == 0, child.stderr
        assert f"process {os.getpid()}" in child.stdout and "CUDA_VISIBLE_DEVICES=7" in child.stdout
    # once released, the marker is gone and a claim takes the slot afresh
    with claim_gpu(lock_dir=tmp_path, timeout=0) as fresh:
        assert fresh.held and fresh.lock_path == slot.lock_path


def test_describe_names_the_device_and_slot(tmp_path):
    with claim_gpu(devices=[2, "GPU-1a2b"], lock_dir=tmp_path) as slot:
        assert slot.describe().startswith("GPU slot 1/2: CUDA_VISIBLE_DEVICES=2 ")
        assert str(slot.lock_path) in slot.describe()
    assert slot.describe().endswith("[released]")


def test_the_module_imports_no_torch(tmp_path):
    check = ("import sys; from clipdrift.pipeline.jobs.gpuslots import claim_gpu; "
             f"claim_gpu(devices=['0'], lock_dir={str(tmp_path)!r}).release(); "
             "assert 'torch' not in sys.modules, 'torch was imported'")
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("value, devices", [
    ("0,1", ["0", "1"]), (" 2 , 0", ["2", "0"]), ("GPU-aa11,MIG-bb22", ["GPU-aa11", "MIG-bb22"]),
    ("0,-1,2", ["0"]), ("-1", []), ("", []), ("NoDevFiles", []), ("1,1", ["1"]),
])
def test_cuda_visible_devices_is_read_as_cuda_reads_it(monkeypatch, value, devices):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    assert visible_devices() == devices


def test_bad_arguments_name_the_fix(tmp_path):
    with pytest.raises(GpuSlotError, match="slots_per_gpu=0 is not a positive integer"):
        claim_gpu(devices=["0"], slots_per_gpu=0, lock_dir=tmp_path)
    with pytest.raises(GpuSlotError, match="timeout=-1 is negative"):
        claim_gpu(devices=["0"], lock_dir=tmp_path, timeout=-1)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(GpuSlotError, match="CLIPDRIFT_GPU_SLOT_DIR"):
        claim_gpu(devices=["0"], lock_dir=blocker / "slots")


def test_the_lock_dir_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(gpuslots.LOCK_DIR_ENV, str(tmp_path / "shared"))
    with claim_gpu(devices=["0"]) as slot:
        assert slot.lock_path.parent == tmp_path / "shared"
