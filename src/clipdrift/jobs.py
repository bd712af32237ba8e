"""What a workflow job needs at run time: the scripts' common runner (logging, threads, its
device and clean user errors) and the run columns of the tables it writes.

Parse-time planning is in :mod:`clipdrift.plan`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from clipdrift.errors import UserFacingError

log = logging.getLogger("clipdrift")

def run_script(snakemake, main: Callable, uses_gpu: bool = False) -> None:
    """Run a workflow script's ``main(snakemake)`` with logging, threads, its device and clean
    user errors.

    ``uses_gpu``: the script's work runs on a GPU when there is one. Such a job takes its own
    GPU when the job claims ``gpu`` resources (a slot of :mod:`clipdrift.gpuslots`, so that
    concurrent jobs on a multi-GPU workstation never share a device by accident); a job of a
    script that does not use a GPU is pinned to the CPU, so it can never compete for one
    without claiming it.
    """
    _configure_logging(snakemake.log[0] if len(snakemake.log) else None)
    try:
        _choose_device(snakemake, uses_gpu)
        torch = sys.modules.get("torch")  # a job whose script needs no torch does not pay its import
        if torch is not None:
            torch.set_num_threads(max(1, int(snakemake.threads)))
        main(snakemake)
    except UserFacingError as error:
        log.error("%s", error)
        sys.exit(1)
    except Exception:
        log.exception("unexpected error in rule %s", getattr(snakemake, "rule", "?"))
        raise


def _choose_device(snakemake, uses_gpu: bool) -> None:
    # before anything initialises CUDA in this process: CUDA_VISIBLE_DEVICES is read once
    import os

    from clipdrift.device import DEVICE_ENV

    if not uses_gpu:
        os.environ[DEVICE_ENV] = "cpu"
        return
    if int(snakemake.resources.get("gpu", 0) or 0) > 0:
        from clipdrift.gpuslots import claim_gpu

        slot = claim_gpu()  # held until the job's process exits
        log.info("%s", slot.describe() if slot is not None else "no GPU found: this job runs on the CPU")


def _configure_logging(log_path: str | None) -> None:
    # the job's log file gets everything; the terminal, shared by every job Snakemake runs, only
    # warnings and errors (without a log file, everything)
    terminal = logging.StreamHandler(sys.stderr)
    handlers: list[logging.Handler] = [terminal]
    if log_path:
        terminal.setLevel(logging.WARNING)
        handlers.append(logging.FileHandler(log_path, mode="w"))
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=handlers, force=True
    )


def with_run_columns(frame, run: dict):
    """``frame`` with the run's dataset/method/lr/seed as leading columns."""
    columns = {key: run[key] for key in ("dataset", "method", "lr", "seed")}
    return frame.assign(**columns)[[*columns, *frame.columns]]
