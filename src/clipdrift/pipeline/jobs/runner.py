"""The runner every workflow script calls: the job's log, threads and device, clean user errors,
and the job's own account of its time and memory. How a job runs, not what it computes (outside
every code digest, see :mod:`clipdrift.pipeline.codedigest`)."""

from __future__ import annotations

import errno
import logging
import os
import re
import resource
import sys
import time
from collections.abc import Callable

from clipdrift.core.errors import UserFacingError
from clipdrift.pipeline.jobs.warm.client import JobStart, job_start

PACKAGE_LOGGER = "clipdrift"  # every module logs to a child of it (logging.getLogger(__name__))
log = logging.getLogger(PACKAGE_LOGGER)

def run_script(snakemake, main: Callable, uses_gpu: bool = False) -> None:
    """Run a workflow script's ``main(snakemake)`` with logging, threads, its device and clean
    user errors, and record the job's own time and memory.

    ``uses_gpu``: the script's work runs on a GPU when there is one. Such a job takes its own
    GPU when the job claims ``gpu`` resources (a slot of :mod:`clipdrift.pipeline.jobs.gpuslots`, so that
    concurrent jobs on a multi-GPU workstation never share a device by accident); a job of a
    script that does not use a GPU is pinned to the CPU, so it can never compete for one
    without claiming it.

    The job's log says whether it runs warm (forked by the job server) or cold, and why. With a
    ``usage`` log (every rule of the workflow has one), the job writes its own account there:
    see :func:`usage_record`.
    """
    start = job_start()
    _configure_logging(snakemake.log[0] if len(snakemake.log) else None)
    log.info("%s", start.describe())
    main_started, ok = time.time(), False
    try:
        _choose_device(snakemake, uses_gpu)
        torch = sys.modules.get("torch")  # a job whose script needs no torch does not pay its import
        if torch is not None:
            torch.set_num_threads(max(1, int(snakemake.threads)))
        main(snakemake)
        ok = True
    except UserFacingError as error:
        log.error("%s", error)
        sys.exit(1)
    except Exception as error:
        refusal = machine_refusal(error, snakemake)
        if refusal is None:
            log.exception("unexpected error in rule %s", getattr(snakemake, "rule", "?"))
            raise
        log.error("%s", refusal)  # the terminal gets errors too
        sys.exit(1)
    finally:
        _write_usage(snakemake, usage_record(getattr(snakemake, "rule", "?"), start, main_started, time.time(), ok))


# What the machine refused, and what the user can do about it (an OSError's errno, or the
# "(os error N)" a library written in Rust, safetensors among them, puts in its message).
REFUSALS = {
    errno.ENOSPC: ("the disk is full", "free space there, or point results_dir at a disk with room, and rerun"),
    errno.EDQUOT: ("the disk quota is used up", "free space in your quota, or point results_dir elsewhere, and rerun"),
    errno.EACCES: ("permission denied", "give this user write access there, or point results_dir at a folder you "
                   "can write, and rerun"),
    errno.EPERM: ("operation not permitted", "give this user write access there, or point results_dir at a folder you "
                  "can write, and rerun"),
    errno.EROFS: ("the file system is read-only", "point results_dir at a writable disk and rerun"),
}


def machine_refusal(error: BaseException, snakemake) -> str | None:
    """One line for a job the machine refused to let write (a full disk, no permission): the rule,
    the path, what failed and what to do; None for any other error. Outputs are written
    atomically, so nothing half-written is left behind."""
    for cause in _chain(error):
        number = cause.errno if isinstance(cause, OSError) else None
        found = re.search(r"\(os error (\d+)\)", str(cause))
        number = number if number in REFUSALS else int(found.group(1)) if found else None
        if number in REFUSALS:
            what, fix = REFUSALS[number]
            outputs = list(getattr(snakemake, "output", []) or [])
            path = getattr(cause, "filename", None) or (os.path.dirname(str(outputs[0])) if outputs else os.getcwd())
            return (f"rule {getattr(snakemake, 'rule', '?')} could not write {path}: {what} "
                    f"({os.strerror(number)}); {fix}. Nothing half-written was kept.")
    return None


def _chain(error: BaseException):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def usage_record(rule: str, start: JobStart, main_started: float, ended: float, ok: bool) -> dict:
    """A job's own account of itself: how it started (``warm``/``cold`` and why), its start-up
    (from the start of the process Snakemake started, Snakemake's script preamble included, to
    the first line of ``main``), its compute (``main``), and the CPU time and peak resident
    memory of the process that ran it and of the processes it waited for.

    Snakemake's ``benchmark:`` file measures the process Snakemake started and its children: for
    a warm job, only the thin client waiting for the server's child. These are the job's own.
    """
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    handed_over = start.handed_over or start.process_start
    return {
        "rule": rule,
        "mode": start.mode,
        "detail": start.detail,
        "startup_s": round(main_started - start.process_start, 3),
        # of which: Snakemake's script preamble; handing over to the server (to the child's first
        # line, warm only); then the child's set-up and the script's own imports
        "preamble_s": round(handed_over - start.process_start, 3),
        "hand_over_s": round(start.forked - handed_over, 3) if start.forked else None,
        "script_imports_s": round(main_started - (start.forked or handed_over), 3),
        "compute_s": round(ended - main_started, 3),
        "s": round(ended - start.process_start, 3),
        "cpu_s": round(own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime, 3),
        "max_rss_mb": round(max(own.ru_maxrss, children.ru_maxrss) / 1024, 1),  # Linux: kilobytes
        "ok": ok,
    }


def _write_usage(snakemake, record: dict) -> None:
    path = snakemake.log.get("usage") if hasattr(snakemake.log, "get") else None
    if path:
        from clipdrift.core.io import write_json

        write_json(path, record)


def _choose_device(snakemake, uses_gpu: bool) -> None:
    # before anything initialises CUDA in this process: CUDA_VISIBLE_DEVICES is read once
    import os

    from clipdrift.core.environment import DEVICE_ENV

    if not uses_gpu:
        os.environ[DEVICE_ENV] = "cpu"
        return
    if int(snakemake.resources.get("gpu", 0) or 0) > 0:
        from clipdrift.pipeline.jobs.gpuslots import claim_gpu

        slot = claim_gpu()  # held until the job's process exits
        log.info("%s", slot.describe() if slot is not None else "no GPU found: this job runs on the CPU")


def _configure_logging(log_path: str | None) -> None:
    """The job's log file gets clipdrift's own lines from INFO and every other library's from
    WARNING (open_clip alone writes seven INFO lines per model it builds); the terminal, shared
    by every job Snakemake runs, gets warnings and errors (without a log file, everything)."""
    terminal = logging.StreamHandler(sys.stderr)
    handlers: list[logging.Handler] = [terminal]
    if log_path:
        terminal.setLevel(logging.WARNING)
        handlers.append(logging.FileHandler(log_path, mode="w"))
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=handlers, force=True
    )
    logging.getLogger(PACKAGE_LOGGER).setLevel(logging.INFO)
