"""What the job server imports, and when it is safe for it to fork.

The server imports what Snakemake's job preamble needs, every module outside the package that
the workflow scripts' code imports and every package module the scripts reach (all derived from
their import closures, :mod:`clipdrift.pipeline.codedigest`), with settings that leave no thread
behind. Before every fork it checks that it still has exactly one thread and no CUDA context: a
fork copies only the calling thread, and a child of a process that ran a libgomp pool hangs at
its first parallel region (measured).
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
from pathlib import Path

from clipdrift.pipeline.jobs.warm.freshness import PER_JOB_THREADS

# The server's own settings for its imports (children take the job's environment instead).
# Without them, measured on this stack, the imports leave idle native threads behind: torch's
# import one OpenMP worker, peft's one more (its import-time tensor code runs an OpenMP region),
# OpenBLAS threads-1 workers when Snakemake set OPENBLAS_NUM_THREADS to the first job's thread
# count, and pyarrow (through pandas) jemalloc's background thread "jemalloc_bg_thd". With one
# thread per threading library and no jemalloc background thread there are none; the CUDA
# availability check goes through NVML, which does not initialise CUDA.
IMPORT_SETTINGS = {**dict.fromkeys(sorted(PER_JOB_THREADS), "1"), "JE_ARROW_MALLOC_CONF": "background_thread:false",
                   "PYTORCH_NVML_BASED_CUDA_CHECK": "1"}
# What Snakemake's script preamble imports, and the job's pickled ``snakemake`` object needs.
JOB_PREAMBLE = ("snakemake.iocontainers", "snakemake.logging")


def preload_names(scripts_dir: Path) -> list[str]:
    """The modules to import, derived from the workflow scripts' import closures: what Snakemake's
    job preamble needs, every module outside the package that the scripts' code imports, then
    every package module the scripts reach."""
    from clipdrift.pipeline.codedigest import external_imports, script_closure

    scripts = sorted(scripts_dir.glob("*.py"))
    external = {name for script in scripts for name in external_imports(script)}
    package = {_module_name(path) for script in scripts for path in script_closure(script) if path.endswith(".py")}
    return [*JOB_PREAMBLE, *sorted(external - set(JOB_PREAMBLE)), *sorted(package)]


def _module_name(relative: str) -> str:
    """``metrics/cka.py`` -> ``clipdrift.measure.cka``; ``metrics/__init__.py`` -> ``clipdrift.measure``."""
    parts = relative.removesuffix(".py").split("/")
    return ".".join(["clipdrift", *parts[:-1], *([] if parts[-1] == "__init__" else parts[-1:])])


def preload(names: list[str]) -> list[str]:
    """Import ``names``, open_clip first through clipdrift.model.openclip (without timm, as in a job);
    the failures."""
    failed = []
    for name in (["clipdrift.model.openclip"] if "open_clip" in names else []) + names:
        try:
            importlib.import_module(name)
        except Exception as error:  # noqa: BLE001 - a job that needs it imports it itself, and fails there
            failed.append(f"{name} ({type(error).__name__}: {error})")
    return failed


def native_threads() -> list[str]:
    """Names of this process's threads other than the main one (from ``/proc/self/task``)."""
    names = []
    for task in sorted(os.listdir("/proc/self/task"), key=int):
        if int(task) != os.getpid():
            try:
                names.append(Path(f"/proc/self/task/{task}/comm").read_text().strip())
            except OSError:
                continue  # it ended meanwhile
    return names


def fork_hazards() -> list[str]:
    """What makes a fork unsafe right now (empty: safe)."""
    hazards = []
    others = native_threads()
    if others:
        hazards.append(f"{len(others)} threads besides the main one ({', '.join(others)})")
    if threading.active_count() != 1:
        hazards.append(f"Python threads {[thread.name for thread in threading.enumerate()]}")
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        hazards.append("CUDA is initialised")
    return hazards
