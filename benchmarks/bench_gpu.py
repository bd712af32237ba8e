"""The paper's code path on a CUDA GPU: training images/s, peak memory and MFU, extraction and
zero-shot images/s, then the `cuda`-marked GPU tests.

What it runs (all through the package, the code a study runs; random weights, no download):

- ``clipdrift.train.engine.finetune`` on ViT-B/32 (``BackboneSpec("ViT-B-32-quickgelu", None)``) with
  fabricated, seeded 224x224 uint8 images of 10 classes, batch 64, a fixed number of optimiser
  steps, for Full FT and LoRA (``apply_method``), in fp16 (GradScaler) and bf16 (bf16 skipped
  below compute capability 8.0, where it is only emulated). Epoch 1 is the warm-up and is not
  timed; images/s is the engine's own per-epoch training rate over the later epochs (the
  per-epoch selection evaluation excluded; the selection split is kept small). Peak memory is
  ``torch.cuda.max_memory_allocated`` over the ``finetune`` call, reset between configurations
  (it includes the whole CLIP with its frozen text tower, AdamW state, activations and the uint8
  training images the engine keeps on the GPU).
- the drift measurement (device cuda) on a probe of 200 images: the pretrained reference once,
  then one extraction pass of the fine-tuned model, attention and CKA together (fp32, no TF32,
  as published).
- ``zeroshot.text_classifier`` (random text tower, 10 classes x the 18 CIFAR templates) and
  ``zeroshot.evaluate`` (fp32) on a few thousand images.
- ``python -m pytest -m cuda tests/test_cuda.py -q`` in a subprocess (conftest pins the suite to
  the CPU but lets `cuda`-marked tests use the GPU).

FLOP accounting (model FLOPs; 1 multiply-add = 2 FLOPs, as in the GPUs' peak figures), counted
per image from the model's own shapes: T tokens (49 patches + CLS for ViT-B/32 at 224), width w,
MLP width m, L blocks, patch p, E embed dim, C classes, LoRA rank r on k targets (q, v):

    patch embedding   P * 3p^2 * w                   MACs
    block linears     L * T * (4w^2 + 2wm)           (q, k, v, out, MLP)
    attention         L * 2 * T^2 * w                (QK^T and PV)
    projection, head  w*E + E*C
    LoRA adapters     L * k * T * 2wr                (A and B)

ViT-B/32 forward = 4.41 GMACs = 8.82 GFLOPs per 224x224 image. (The "4.4 GFLOPs" of model tables
are multiply-adds; counting them as FLOPs against a tensor-core peak would halve the MFU.)
Training: every matmul costs its forward, its input gradient (dgrad) and, if its weight trains,
its weight gradient (wgrad), each as much as the forward; a dgrad nothing below needs is not
computed (autograd skips it).

    Full FT = 2 x patch (no dgrad into the images) + 3 x (linears + attention + projection/head)
            = 26.2 GFLOPs per image  (~2.97 x forward)
    LoRA    = 1 x patch (frozen, nothing below it trains) + 2 x linears (frozen: forward + dgrad)
              + 3 x attention (no weights: both operands' gradients) + 3 x projection/head
              + 3 x adapters, less what autograd skips in block 0, below which nothing trains: the
              dgrad of q/k/v and of the adapters' A, and dK (k_proj has no adapter)
            = 17.4 GFLOPs per image  (~1.97 x forward)

The script prints the analytic count next to ``torch.utils.flop_counter``'s count of one forward
and backward pass (attention in its explicit-softmax form, so the counter sees its matmuls on any
device). MFU = images/s x training FLOPs per image / the GPU's dense fp16/bf16 tensor peak from
:data:`PEAK_TFLOPS` (matched by device name; "unknown" otherwise). Zero-shot scoring runs in fp32
without TF32, so its utilisation is given against the fp32 (CUDA-core) peak.

    python benchmarks/bench_gpu.py                   # on a GPU: ~1-2 minutes on an H100/H200
    python benchmarks/bench_gpu.py --quick           # smoke pass: fewer steps
    python benchmarks/bench_gpu.py --json out.json   # also write every number as JSON
    python benchmarks/bench_gpu.py --dry-run-on-cpu  # same code on the CPU, clipdrift-tiny, tiny sizes

Without a CUDA GPU (and without ``--dry-run-on-cpu``) it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

# (model in torch.cuda.get_device_name, whole words, dense fp16/bf16 tensor-core TFLOP/s, fp32
# CUDA-core TFLOP/s), vendor datasheet figures without sparsity; the first match wins.
PEAK_TFLOPS = [
    ("H200 NVL", 835, 60), ("H200", 989, 67), ("GH200", 989, 67),
    ("H100 PCIe", 756, 51), ("H100 NVL", 835, 60), ("H100", 989, 67),
    ("A100", 312, 19.5), ("L40S", 362, 91.6), ("L4", 121, 30.3), ("A10", 125, 31.2),
    ("T4", 65, 8.1), ("V100", 125, 15.7),
]
TESTS = ["-m", "pytest", "-m", "cuda", "tests/test_cuda.py", "-q"]
LR = 1e-5


@dataclass(frozen=True)
class Sizes:
    backbone: str
    n_classes: int
    batch_size: int
    steps_per_epoch: int
    epochs: int  # epoch 1 is the warm-up, not timed
    n_select: int
    n_probe: int
    n_zeroshot: int
    zeroshot_batch: int


FULL = Sizes("ViT-B-32-quickgelu", 10, 64, steps_per_epoch=40, epochs=3, n_select=64, n_probe=200, n_zeroshot=4096,
             zeroshot_batch=256)
QUICK = Sizes("ViT-B-32-quickgelu", 10, 64, steps_per_epoch=10, epochs=2, n_select=64, n_probe=200, n_zeroshot=1024,
              zeroshot_batch=256)
DRY = Sizes("clipdrift-tiny", 10, 16, steps_per_epoch=3, epochs=2, n_select=16, n_probe=32, n_zeroshot=64,
            zeroshot_batch=32)


# ---------------------------------------------------------------------------------------------
# The device and the few CUDA-only measurements (None on the CPU)
# ---------------------------------------------------------------------------------------------

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def peak_tflops(name: str) -> tuple[float, float] | None:
    """(dense fp16/bf16 tensor, fp32) peak TFLOP/s of a GPU by name; None if not in the table."""
    for key, tensor, fp32 in PEAK_TFLOPS:
        if re.search(rf"\b{re.escape(key)}\b", name, flags=re.IGNORECASE):
            return tensor, fp32
    return None


def device_info(device: torch.device) -> dict:
    info = {"torch": torch.__version__, "torch_cuda": torch.version.cuda, "device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=props.name, capability=f"{props.major}.{props.minor}",
                    memory_gib=round(props.total_memory / 2**30, 1), sms=props.multi_processor_count,
                    cudnn=torch.backends.cudnn.version())
    else:
        info.update(name="CPU (dry run)", capability=None, memory_gib=None, sms=None, cudnn=None,
                    threads=torch.get_num_threads())
    peaks = peak_tflops(info["name"]) if device.type == "cuda" else None
    info["peak_tflops_16bit"], info["peak_tflops_fp32"] = peaks if peaks else (None, None)
    return info


def print_device(info: dict) -> None:
    if info["capability"] is not None:
        print(f"device: {info['name']}, compute capability {info['capability']}, {info['memory_gib']} GiB, "
              f"{info['sms']} SMs")
    else:
        print(f"device: {info['name']}, {info['threads']} torch threads")
    print(f"torch {info['torch']}, CUDA {info['torch_cuda']}, cuDNN {info['cudnn']}")
    if info["peak_tflops_16bit"] is not None:
        print(f"peak (datasheet, dense): {info['peak_tflops_16bit']:g} TFLOP/s fp16/bf16 tensor, "
              f"{info['peak_tflops_fp32']:g} TFLOP/s fp32")
    else:
        print("peak TFLOP/s: unknown (not in PEAK_TFLOPS): MFU not computed")


# ---------------------------------------------------------------------------------------------
# Data and models
# ---------------------------------------------------------------------------------------------

def fabricate(sizes: Sizes, image_size: int) -> dict:
    """Seeded uint8 images and labels: a training pool (also the probe's and zero-shot's source)
    sized for ``steps_per_epoch`` full batches, and a small selection split."""
    from clipdrift.data.split import ImageSplit

    generator = torch.Generator().manual_seed(0)
    names = [f"class {k}" for k in range(sizes.n_classes)]

    def split(n: int) -> ImageSplit:
        images = torch.randint(0, 256, (n, 3, image_size, image_size), dtype=torch.uint8, generator=generator)
        return ImageSplit(images, torch.randint(0, sizes.n_classes, (n,), generator=generator), names)

    n_train = sizes.steps_per_epoch * sizes.batch_size
    pool = split(max(n_train, sizes.n_zeroshot, sizes.n_probe))
    return {"train": pool.subset(range(n_train)), "select": split(sizes.n_select),
            "probe": pool.subset(range(sizes.n_probe)), "zeroshot": pool.subset(range(sizes.n_zeroshot))}


def analytic_macs(model, method) -> dict[str, int]:
    """Multiply-adds per image of the image tower + projection + head, by part (see the docstring)."""
    from clipdrift.model.backbones import image_tower_blocks

    visual = model.clip.visual
    blocks = image_tower_blocks(model.clip)
    width, layers, mlp = visual.transformer.width, len(blocks), blocks[0].mlp.c_fc.out_features
    conv = visual.conv1
    patches = visual.grid_size[0] * visual.grid_size[1]
    tokens = patches + 1
    lora = method.method == "lora"
    targets = set(method.lora_targets) if lora else set()
    # Of block 0's four attention-backward matmuls (dP, dQ, dK, dV), those some adapter needs.
    needed = bool(targets & {"q_proj", "k_proj"}) + sum(name in targets for name in ("q_proj", "k_proj", "v_proj"))
    return {
        "patch_embed": patches * conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1] * width,
        "linears": layers * tokens * (4 * width * width + 2 * width * mlp),
        "attention": layers * 2 * tokens * tokens * width,
        "projection_head": width * visual.output_dim + visual.output_dim * model.n_classes,
        "lora": layers * len(targets) * tokens * 2 * width * method.lora_r,
        # LoRA: nothing below block 0 trains, so autograd skips these backward matmuls of block 0:
        # the input gradients of q/k/v and of the adapters' A, and the attention gradients no adapter needs.
        "lora_block0_skipped": (3 * tokens * width * width
                                + len(targets & {"q_proj", "k_proj", "v_proj"}) * tokens * method.lora_r * width
                                + (4 - needed) * tokens * tokens * width) if lora else 0,
    }


def analytic_flops(model, method) -> dict[str, float]:
    """Forward and training FLOPs per image (2 per multiply-add)."""
    m = analytic_macs(model, method)
    forward = m["patch_embed"] + m["linears"] + m["attention"] + m["projection_head"] + m["lora"]
    if method.method == "full":
        train = 2 * m["patch_embed"] + 3 * (m["linears"] + m["attention"] + m["projection_head"])
    else:
        train = (m["patch_embed"] + 2 * m["linears"] + 3 * m["attention"] + 3 * m["projection_head"] + 3 * m["lora"]
                 - m["lora_block0_skipped"])
    return {"forward": 2.0 * forward, "train": 2.0 * train}


def counted_flops(model, image_size: int) -> dict[str, float]:
    """torch.utils.flop_counter's FLOPs per image of one forward and one forward+backward pass
    (a CPU copy, explicit-softmax attention so that its matmuls are counted on any device)."""
    import copy

    from torch.utils.flop_counter import FlopCounterMode

    from clipdrift.model.backbones import explicit_attention_modules

    model = copy.deepcopy(model).to("cpu").train()
    for module in explicit_attention_modules(model.clip):
        module.capture = True
    x = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as forward:
        with torch.no_grad():
            model(x)
    with FlopCounterMode(display=False) as train:
        model(x).float().sum().backward()
    return {"forward": forward.get_total_flops() / 2, "train": train.get_total_flops() / 2}


# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------

def train_one(base, method_name: str, amp: str, data: dict, sizes: Sizes, device: torch.device,
              peaks) -> tuple[dict, object]:
    """One ``finetune`` run; its row of numbers and the trained model (moved to the CPU)."""
    import copy
    import gc

    from clipdrift.model.adapters import MethodConfig, apply_method
    from clipdrift.train.config import TrainConfig
    from clipdrift.train.engine import finetune

    method = MethodConfig(method_name)
    model = apply_method(copy.deepcopy(base), method)
    config = TrainConfig(epochs=sizes.epochs, lr=LR, batch_size=sizes.batch_size, device=str(device), amp=amp,
                         cpu_autocast=device.type == "cpu")
    gc.collect()
    reset_peak(device)
    started = time.perf_counter()
    result = finetune(model, data["train"], data["select"], config, progress=False)
    sync(device)
    wall = time.perf_counter() - started
    history = result.history
    timed = history["epochs"][1:] or history["epochs"]
    train_s = sum(e["train_s"] for e in timed)
    images_per_s = len(data["train"]) * len(timed) / train_s
    flops = analytic_flops(model, method)
    achieved = images_per_s * flops["train"] / 1e12
    row = {
        "method": method_name, "amp": amp, "precision": history["precision"], "status": history["status"],
        "steps": history["steps"], "timed_steps": len(timed) * (history["steps"] // len(history["epochs"])),
        "skipped_steps": history["skipped_steps"], "images_per_s": images_per_s,
        "warmup_images_per_s": history["epochs"][0]["images_per_s"],
        "step_ms": 1000 * sizes.batch_size / images_per_s,
        "select_eval_s": sum(e["time_s"] - e["train_s"] for e in history["epochs"]),
        "finetune_wall_s": wall, "peak_gib": peak_gib(device),
        "train_gflop_per_image": flops["train"] / 1e9, "achieved_tflops": achieved,
        "mfu": achieved / peaks[0] if peaks else None,
        "trainable_params": history["trainable_params"]["total"], "final_train_loss": history["epochs"][-1]["train_loss"],
    }
    model.to("cpu")
    del result
    return row, model


def extraction(tuned, base, probe, device: torch.device) -> dict:
    """images/s of the workflow's drift measurement on the probe: the pretrained reference once
    (probe_reference), then one pass of the fine-tuned model (extract: attention and CKA)."""
    from clipdrift.measure.drift import AttentionConfig, CKAConfig
    from clipdrift.measure.extract import extract, probe_reference

    tuned.to(device)
    base.to(device)
    attention, cka = AttentionConfig(device=str(device)), CKAConfig(device=str(device))
    out = {"probe_images": len(probe)}
    warm_up = probe.subset(range(min(len(probe), attention.batch_size)))
    extract(tuned, probe_reference(base, warm_up, attention, cka), warm_up, attention, cka)
    reference = timed(out, "reference", device, len(probe), attention.batch_size,
                      lambda: probe_reference(base, probe, attention, cka))
    timed(out, "extract", device, len(probe), attention.batch_size,
          lambda: extract(tuned, reference, probe, attention, cka))
    return out


def timed(out: dict, name: str, device: torch.device, images: int, batch_size: int, work):
    """Run ``work`` once, recording its seconds, probe images/s and peak memory in ``out[name]``."""
    reset_peak(device)
    started = time.perf_counter()
    result = work()
    sync(device)
    seconds = time.perf_counter() - started
    out[name] = {"seconds": seconds, "images_per_s": images / seconds, "batch_size": batch_size,
                 "peak_gib": peak_gib(device)}
    return result


def zeroshot(base, split, sizes: Sizes, device: torch.device, peaks) -> dict:
    """Seconds of text_classifier (random text tower) and images/s of zeroshot.evaluate (fp32)."""
    import open_clip

    from clipdrift.data.classnames import template_texts
    from clipdrift.measure.zeroshot import evaluate, text_classifier
    from clipdrift.model.adapters import MethodConfig

    base.to(device)
    templates = template_texts("cifar18")
    sync(device)
    started = time.perf_counter()
    weights = text_classifier(base.clip, open_clip.get_tokenizer(sizes.backbone), split.class_names, templates)
    sync(device)
    text_s = time.perf_counter() - started
    evaluate(base, weights, split.subset(range(min(len(split), sizes.zeroshot_batch))), batch_size=sizes.zeroshot_batch,
             device=device)  # warm-up
    reset_peak(device)
    started = time.perf_counter()
    scores = evaluate(base, weights, split, batch_size=sizes.zeroshot_batch, device=device)
    sync(device)
    seconds = time.perf_counter() - started
    forward = analytic_flops(base, MethodConfig("full"))["forward"]
    achieved = len(split) / seconds * forward / 1e12
    return {"text_classifier_s": text_s, "prompts": len(split.class_names) * len(templates),
            "weights_shape": list(weights.shape), "images": len(split), "batch_size": sizes.zeroshot_batch,
            "seconds": seconds, "images_per_s": len(split) / seconds, "achieved_tflops": achieved,
            "fp32_utilisation": achieved / peaks[1] if peaks else None, "peak_gib": peak_gib(device),
            "top1": scores["top1"]}


def run_gpu_tests() -> dict:
    """The `cuda`-marked tests, as a user would run them; on the CPU they all skip."""
    started = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, *TESTS], cwd=REPO, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        return {"command": "python3 " + " ".join(TESTS), "returncode": None, "result": "timed out after 900 s",
                "seconds": time.perf_counter() - started}
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    summary = next((line for line in reversed(lines) if " in " in line and any(
        word in line for word in ("passed", "failed", "skipped", "error", "deselected", "no tests"))),
        lines[-1] if lines else "(no output)")
    result = {"command": "python3 " + " ".join(TESTS), "returncode": done.returncode, "result": summary.strip("= "),
              "seconds": time.perf_counter() - started}
    if done.returncode != 0:
        result["output_tail"] = "\n".join((done.stdout + done.stderr).splitlines()[-60:])
    return result


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------

def fmt(value, spec: str, missing: str = "n/a") -> str:
    return missing if value is None else format(value, spec)


def gib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} GiB"


def pct(fraction: float | None) -> str:
    return "n/a" if fraction is None else f"{100 * fraction:.1f}%"


def print_flops(flops: dict) -> None:
    print("\nFLOPs per image (2 per multiply-add): analytic | torch.utils.flop_counter")
    for method, values in flops.items():
        a, c = values["analytic"], values["counted"]
        print(f"  {method:5s} forward {a['forward'] / 1e9:8.3f} | {c['forward'] / 1e9:8.3f} GFLOP   "
              f"training {a['train'] / 1e9:8.3f} | {c['train'] / 1e9:8.3f} GFLOP  "
              f"({a['train'] / a['forward']:.2f} x forward)")
    print("  training = forward + input grads + weight grads of trainable weights (frozen: forward + input grads); "
          "MFU uses the analytic count")


def print_training(rows: list[dict], sizes: Sizes, n_train: int) -> None:
    print(f"\ntraining: finetune, batch {sizes.batch_size}, {n_train} images = {sizes.steps_per_epoch} steps/epoch x "
          f"{sizes.epochs} epochs, lr {LR:g}; epoch 1 = warm-up (not timed); selection split {sizes.n_select} images")
    print(f"  {'method':6s} {'precision':9s} {'images/s':>9s} {'step ms':>8s} {'warm-up':>9s} {'peak GiB':>8s} "
          f"{'TFLOP/s':>8s} {'MFU':>6s} {'skipped':>7s} {'eval s':>6s} {'wall s':>6s}")
    for r in rows:
        if r.get("skipped"):
            print(f"  {r['method']:6s} {r['amp']:9s} skipped: {r['skipped']}")
            continue
        print(f"  {r['method']:6s} {r['precision']:9s} {r['images_per_s']:9.1f} {r['step_ms']:8.2f} "
              f"{r['warmup_images_per_s']:9.1f} {fmt(r['peak_gib'], '8.2f'):>8s} {r['achieved_tflops']:8.2f} "
              f"{pct(r['mfu']):>6s} {r['skipped_steps']:7d} {r['select_eval_s']:6.2f} "
              f"{r['finetune_wall_s']:6.1f}")
    print("  images/s: the engine's training rate (one host sync per step) over the timed epochs; warm-up: epoch 1's; "
          "skipped: fp16 steps the GradScaler skipped; eval s: selection evaluations")


def print_extraction(result: dict) -> None:
    print(f"\ndrift measurement on a probe of {result['probe_images']} images (fp32; the pretrained reference once "
          "per dataset, then one pass per checkpoint):")
    for name in ("reference", "extract"):
        r = result[name]
        print(f"  {name:16s} {r['images_per_s']:9.1f} probe images/s  ({r['seconds']:.2f} s, batch "
              f"{r['batch_size']}, peak memory {gib(r['peak_gib'])})")


def print_zeroshot(result: dict) -> None:
    print(f"\nzero-shot: text_classifier {result['prompts']} prompts -> {tuple(result['weights_shape'])} in "
          f"{result['text_classifier_s']:.2f} s (random text tower)")
    utilisation = "" if result["fp32_utilisation"] is None else f" = {pct(result['fp32_utilisation'])} of the fp32 peak"
    print(f"  evaluate         {result['images_per_s']:9.1f} images/s  ({result['images']} images, batch "
          f"{result['batch_size']}, fp32 without TF32, {result['seconds']:.2f} s, {result['achieved_tflops']:.2f} "
          f"TFLOP/s{utilisation}, peak memory {gib(result['peak_gib'])}, top-1 {result['top1']:.3f}: chance, "
          "random weights)")


# ---------------------------------------------------------------------------------------------

def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke pass: 10 steps per epoch, 2 epochs, fewer images")
    parser.add_argument("--dry-run-on-cpu", action="store_true",
                        help="run the same code on the CPU with clipdrift-tiny and tiny sizes (no GPU numbers)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write every number to PATH as JSON")
    parser.add_argument("--skip-tests", action="store_true", help="do not run the cuda-marked tests")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if not args.dry_run_on_cpu and not torch.cuda.is_available():
        print(f"no CUDA GPU here: nothing to benchmark (torch {torch.__version__}, built for CUDA "
              f"{torch.version.cuda}; --dry-run-on-cpu runs the same code on the CPU)")
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random weights: nothing to fetch
    started = time.perf_counter()
    device = torch.device("cpu" if args.dry_run_on_cpu else "cuda")
    sizes = DRY if args.dry_run_on_cpu else QUICK if args.quick else FULL
    info = device_info(device)
    print_device(info)
    peaks = (info["peak_tflops_16bit"], info["peak_tflops_fp32"]) if info["peak_tflops_16bit"] else None

    from clipdrift.model.adapters import MethodConfig, apply_method
    from clipdrift.model.backbones import BackboneSpec, build_classifier, image_preprocess_config

    spec = BackboneSpec(sizes.backbone, None)
    base = build_classifier(spec, sizes.n_classes, seed=0)
    image_size = image_preprocess_config(base.clip)["size"][0]
    data = fabricate(sizes, image_size)
    print(f"model: {sizes.backbone} (random weights), {image_size}x{image_size} fabricated uint8 images, "
          f"{sizes.n_classes} classes, seed 0")

    import copy

    flops = {}
    for method in ("full", "lora"):
        config = MethodConfig(method)
        model = apply_method(copy.deepcopy(base), config)
        flops[method] = {"analytic": analytic_flops(model, config), "counted": counted_flops(model, image_size)}
        del model
    print_flops(flops)

    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    rows, tuned = [], None
    for method in ("full", "lora"):
        for amp in ("fp16", "bf16"):
            if capability is not None and amp == "bf16" and capability < (8, 0):
                rows.append({"method": method, "amp": amp, "skipped": "bf16 is only emulated below compute capability 8.0"})
                continue
            row, model = train_one(base, method, amp, data, sizes, device, peaks)
            rows.append(row)
            if method == "full" and (tuned is None or amp == "bf16"):
                tuned = model
            del model
    print_training(rows, sizes, len(data["train"]))

    extracted = extraction(tuned, base, data["probe"], device)
    print_extraction(extracted)
    scored = zeroshot(base, data["zeroshot"], sizes, device, peaks)
    print_zeroshot(scored)

    del tuned, base
    reset_peak(device)
    tests = None
    if not args.skip_tests:
        tests = run_gpu_tests()
        print(f"\nGPU tests: {tests['command']}\n  {tests['result']} (exit {tests['returncode']}, {tests['seconds']:.0f} s)")
        if "output_tail" in tests:
            print(tests["output_tail"])
    total = time.perf_counter() - started
    print(f"\nbenchmark wall time: {total:.0f} s")

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {"device": info, "sizes": asdict(sizes), "lr": LR, "flops_per_image": flops, "training": rows,
                  "extraction": extracted, "zeroshot": scored, "tests": tests, "wall_s": total,
                  "dry_run_on_cpu": args.dry_run_on_cpu, "quick": args.quick}
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 1 if tests is not None and tests["returncode"] != 0 else 0


if __name__ == "__main__":
    sys.exit(main())
