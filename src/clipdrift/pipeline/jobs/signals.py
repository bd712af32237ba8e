"""Stopping a job cleanly when it is asked to: SLURM's warning signal before it preempts a job or
its time limit ends (``--signal``, profiles/slurm), its SIGTERM, or Ctrl-C on a local run.

:func:`stop_on_signals` turns those signals into a flag the work polls at safe points (a
fine-tune: after each optimiser step), instead of an exception at an arbitrary line; a second
signal of the same kind ends the job at once (its last saved state stays valid: states are
replaced atomically). A job that stopped this way exits with :data:`STOPPED_EXIT`, which tells a
requeue apart from a failure. :func:`let_jobs_take_the_warning` makes Snakemake, and what it
starts, ignore the warning signal, so that only the fine-tune acts on it. How a job runs, not
what it computes (outside every code digest).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Callable, Iterator

log = logging.getLogger(__name__)

# The signal profiles/slurm asks SLURM to send ahead of a time limit (sbatch --signal=USR1@<seconds>).
WARNING_SIGNAL = signal.SIGUSR1
STOP_SIGNALS = (signal.SIGTERM, WARNING_SIGNAL, signal.SIGINT)
# EX_TEMPFAIL (sysexits.h): "temporary failure, the user is invited to retry" - the state is saved.
STOPPED_EXIT = 75


@contextlib.contextmanager
def stop_on_signals(signals=STOP_SIGNALS) -> Iterator[Callable[[], bool]]:
    """Within the block, the first of ``signals`` sets a flag the yielded callable reports; the
    previous handlers come back when the block ends."""
    received: list[int] = []
    previous = {}

    def handler(number, _frame):
        if number in received:  # asked twice: stop now, the saved state stands
            signal.signal(number, signal.SIG_DFL)
            os.kill(os.getpid(), number)
            return
        received.append(number)
        log.warning("%s received: stopping after the current step, with its state saved", signal.Signals(number).name)

    for number in signals:
        previous[number] = signal.signal(number, handler)
    try:
        yield lambda: bool(received)
    finally:
        for number, old in previous.items():
            signal.signal(number, old)


def let_jobs_take_the_warning() -> None:
    """Make this Snakemake process, and every process it starts, ignore SLURM's warning signal
    unless it handles the signal itself (a fine-tune does: :func:`stop_on_signals`).

    SLURM sends the warning to every process of a job's steps: the Snakemake that runs the job
    (the executor plugin starts it with srun), the shell Snakemake runs the script through, and
    the job. Left at its default, the signal ends that Snakemake or that shell first (bash before
    5.1 does not exec the last command of ``set -euo pipefail; python …``), and SLURM then kills
    the rest of the step, a fine-tune in the middle of saving its state. Ignored, it reaches the
    fine-tune alone: it saves and exits :data:`STOPPED_EXIT`; a measurement job carries on, and
    reruns if the time limit ends it. SIG_IGN rather than a handler because a handler would not
    survive the shell's exec, and a disposition ignored on entry is one a shell keeps.
    """
    with contextlib.suppress(ValueError):  # not the main thread (Snakemake's API used from a thread): nothing to do
        signal.signal(WARNING_SIGNAL, signal.SIG_IGN)
