"""Stopping a job cleanly when it is asked to: SLURM's warning signal before it preempts a job or
its time limit ends (``--signal``, profiles/slurm), its SIGTERM, or Ctrl-C on a local run.

:func:`stop_on_signals` turns those signals into a flag the work polls at safe points (a
fine-tune: after each optimiser step), instead of an exception at an arbitrary line; a second
signal of the same kind ends the job at once (its last saved state stays valid: states are
replaced atomically). A job that stopped this way exits with :data:`STOPPED_EXIT`, which tells a
requeue apart from a failure. How a job runs, not what it computes (outside every code digest).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Callable, Iterator

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
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
