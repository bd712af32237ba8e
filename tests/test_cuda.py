"""On a real GPU (marker `cuda`; skipped elsewhere; benchmarks/bench_gpu.py runs them): the
CUDA path gives the CPU's numbers where it must, and runs the precision modes it claims.

The CPU tests exercise the same lines with the device calls replaced; these check what only a
GPU can show: autocast kernels, TF32, the asynchronous staging copy, determinism of GPU kernels.
"""

import pytest
import torch
from tiny_models import make_tiny

from clipdrift.measure.settings import AttentionConfig, CKAConfig
from clipdrift.train.config import TrainConfig
from clipdrift.train.engine import finetune

from reference_drift import attention_table, cka_table
from test_train import N_CLASSES, TEST, TRAIN, VAL, assert_same_states, without_timings

pytestmark = pytest.mark.cuda


def _config(**overrides) -> TrainConfig:
    values = dict(epochs=2, lr=1e-3, batch_size=16, seed=5, device="cuda", deterministic=True)
    return TrainConfig(**{**values, **overrides})


@pytest.mark.parametrize("amp", ["fp16", "bf16", "auto"])
def test_mixed_precision_training_runs_and_evaluates_in_fp32(amp):
    if amp == "bf16" and torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("bf16 is only emulated below compute capability 8.0")
    result = finetune(make_tiny(n_classes=N_CLASSES), TRAIN, VAL, _config(amp=amp), test=TEST, progress=False)
    history = result.history
    assert history["device"].startswith("cuda") and history["eval_precision"] == "fp32"
    assert history["precision"] == ("bf16" if amp == "auto" and torch.cuda.get_device_capability() >= (8, 0)
                                    else "fp16" if amp == "auto" else amp)
    assert history["grad_scaler"] == (history["precision"] == "fp16") and history["status"] == "completed"
    assert all(bool(t.isfinite().all()) for t in result.final_state.values())


def test_same_seed_same_numbers_and_resume_equals_uninterrupted_on_the_gpu(tmp_path):
    first = finetune(make_tiny(n_classes=N_CLASSES), TRAIN, VAL, _config(amp="fp16"), progress=False)
    second = finetune(make_tiny(n_classes=N_CLASSES), TRAIN, VAL, _config(amp="fp16"), progress=False)
    assert without_timings(first.history) == without_timings(second.history)
    assert_same_states(first.final_state, second.final_state)

    def crash(entry):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(make_tiny(n_classes=N_CLASSES), TRAIN, VAL, _config(amp="fp16"), resume=tmp_path / "r",
                 progress=False, on_epoch_end=crash)
    resumed = finetune(make_tiny(n_classes=N_CLASSES), TRAIN, VAL, _config(amp="fp16"), resume=tmp_path / "r",
                       progress=False)
    assert resumed.history["resumed_from_epoch"] == 1
    assert_same_states(resumed.final_state, first.final_state)


def test_keeping_the_images_on_the_gpu_or_staging_them_gives_the_same_run():
    staged = finetune(make_tiny(n_classes=N_CLASSES), TRAIN, VAL, _config(data_on_device=False), progress=False)
    resident = finetune(make_tiny(n_classes=N_CLASSES), TRAIN, VAL, _config(data_on_device=True), progress=False)
    assert_same_states(staged.final_state, resident.final_state)


def test_gpu_measurements_equal_the_cpu_ones():
    tuned, base = make_tiny("full", seed=3), make_tiny("full", seed=4)
    from test_metrics import make_probe

    probe = make_probe(16)
    before = (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision)
    on = {device: attention_table(tuned, base, probe, AttentionConfig(batch_size=8, device=device))
          for device in ("cpu", "cuda")}
    torch.testing.assert_close(on["cuda"]["value"].to_numpy(), on["cpu"]["value"].to_numpy(), rtol=1e-5, atol=1e-7)
    cka = {device: cka_table(tuned, base, probe, CKAConfig(batch_size=8, device=device)) for device in ("cpu", "cuda")}
    torch.testing.assert_close(cka["cuda"]["value"].to_numpy(), cka["cpu"]["value"].to_numpy(), rtol=1e-5, atol=1e-7,
                               equal_nan=True)
    assert (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision) == before


def test_gpu_slot_claims_a_real_device(tmp_path, monkeypatch):
    from clipdrift.pipeline.jobs.gpuslots import claim_gpu

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    slot = claim_gpu(lock_dir=tmp_path, timeout=5)
    assert slot is not None and "CUDA_VISIBLE_DEVICES=" in slot.describe()
    slot.release()
