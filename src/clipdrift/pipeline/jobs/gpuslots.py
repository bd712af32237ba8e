"""One GPU per job on a multi-GPU machine: exclusive device slots held by kernel file locks.

Snakemake's local executor counts a ``gpu`` resource but never tells a job *which* GPU to use
(snakemake/snakemake#281): with ``--resources gpu=4`` four fine-tunes start and all land on
``cuda:0``. :func:`claim_gpu`, called at the very start of a GPU job (before CUDA initialises,
which is when CUDA reads ``CUDA_VISIBLE_DEVICES``), takes an exclusive slot on one device and
narrows ``CUDA_VISIBLE_DEVICES`` to that device.

Lock scheme: slot ``k`` of device ``d`` is the file ``<lock dir>/gpu-<d>.slot-<k>.lock``, and a
job holds the slot while an open descriptor of that file holds ``flock(LOCK_EX)``. The kernel
drops the lock when the last copy of that descriptor closes, so a job that exits, crashes or is
SIGKILLed frees its slot with no cleanup; a lock file left behind is harmless (the file is not
the lock, the flock is). The file's text only names its latest holder, for error messages.

The lock directory is shared by every job on the machine: ``/tmp/clipdrift-gpu-slots-<uid>``
unless ``lock_dir`` or ``$CLIPDRIFT_GPU_SLOT_DIR`` says otherwise. Every job sharing it must
name devices the same way (indices or UUIDs) and use the same ``slots_per_gpu``.

Stdlib only, and torch is never imported here: importing it is harmless, but anything that
initialises CUDA before the claim would pin this process to the devices it saw then.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Self

from clipdrift.core.errors import UserFacingError

LOCK_DIR_ENV = "CLIPDRIFT_GPU_SLOT_DIR"
# Set next to CUDA_VISIBLE_DEVICES by a claim: "<device>\t<pid>\t<lock file>". A child process
# of the job (or a second claim in it) sees that its GPU is already covered by a held slot.
HOLDER_ENV = "CLIPDRIFT_GPU_SLOT"
VISIBLE_ENV = "CUDA_VISIBLE_DEVICES"
ORDER_ENV = "CUDA_DEVICE_ORDER"
POLL_SECONDS = 0.2

log = logging.getLogger(__name__)


class GpuSlotError(UserFacingError):
    """A GPU slot cannot be claimed as asked (bad argument, unusable lock directory)."""


class GpuSlotTimeout(GpuSlotError, TimeoutError):
    """Every GPU slot stayed held by other jobs until the timeout."""


@dataclass(eq=False)
class GpuSlot:
    """The GPU a job may use and, when this process chose it, the slot lock it holds.

    ``slot`` counts from 0 in claim order (``describe()`` shows it from 1) out of ``slots``.
    When someone else chose the device (the scheduler, or the parent job that holds the slot),
    ``assigned_by`` names them and ``slot`` is None. The lock lasts until :meth:`release`, the end
    of the ``with`` block, or the end of the process: dropping the handle does not release it.
    """

    device: str
    slot: int | None = None
    slots: int | None = None
    slots_per_gpu: int = 1
    lock_path: Path | None = None
    assigned_by: str | None = None
    _fd: int | None = field(default=None, repr=False)
    _saved_env: dict[str, str | None] = field(default_factory=dict, repr=False)

    @property
    def held(self) -> bool:
        """Whether this handle still holds its slot lock."""
        return self._fd is not None

    def describe(self) -> str:
        """One line for the job's log: which device, and why."""
        if self.assigned_by is not None:
            return f"GPU chosen by {self.assigned_by}: CUDA_VISIBLE_DEVICES={self.device} (no slot taken here)"
        sharing = f", shared by {self.slots_per_gpu} slots" if self.slots_per_gpu > 1 else ""
        state = "" if self.held else " [released]"
        return (f"GPU slot {self.slot + 1}/{self.slots}: CUDA_VISIBLE_DEVICES={self.device}{sharing} "
                f"(lock {self.lock_path}){state}")

    def release(self) -> None:
        """Free the slot and restore the environment as it was before the claim; idempotent."""
        if self._fd is None:
            return
        # closing (not LOCK_UN) leaves the lock with any forked child still using the GPU
        os.close(self._fd)
        self._fd = None
        _restore_env(self._saved_env)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


def claim_gpu(
    devices: Sequence[str | int] | None = None,
    slots_per_gpu: int = 1,
    lock_dir: str | os.PathLike | None = None,
    timeout: float | None = None,
    scheduler_assigned: bool | None = None,
    poll_interval: float = POLL_SECONDS,
) -> GpuSlot | None:
    """Claim one GPU slot for this process and make its device the only one CUDA will see.

    ``devices`` is the pool to share out (tests fabricate one); None means: the devices in
    ``CUDA_VISIBLE_DEVICES`` if set, else the GPUs ``nvidia-smi`` lists, else none. With None,
    a device already chosen for this process is kept as it is: by a scheduler
    (``scheduler_assigned``, default: ``SLURM_JOB_ID`` is set) or by a parent job's held slot.
    Slots are tried every GPU's first slot before any second one, so jobs spread out; the call
    waits for a free slot up to ``timeout`` seconds (None: for ever).

    Returns None, leaving the environment alone, when there is no GPU (a CPU job).
    Raises :class:`GpuSlotTimeout` when no slot came free in time.
    """
    _check_arguments(slots_per_gpu, timeout, poll_interval)
    pin_pci_order = False
    if devices is None:
        decided_by = _inherited_holder() or _scheduler(scheduler_assigned)
        if decided_by:
            return _assigned_elsewhere(decided_by)
        pool = visible_devices()
        if pool is None:
            pool, pin_pci_order = nvidia_smi_devices(), True
    else:
        pool = _normalise_devices(devices)
    if not pool:
        return None
    return _claim_from_pool(pool, slots_per_gpu, slot_lock_dir(lock_dir), timeout, poll_interval, pin_pci_order)


def visible_devices() -> list[str] | None:
    """The devices ``CUDA_VISIBLE_DEVICES`` lets CUDA see, in order; None when it is unset.

    Read as CUDA reads it: entries are indices or ``GPU-``/``MIG-`` UUIDs, and the list ends at
    the first entry CUDA rejects, so ``""`` and ``"-1"`` hide every GPU.
    """
    value = os.environ.get(VISIBLE_ENV)
    if value is None:
        return None
    devices: list[str] = []
    for entry in (part.strip() for part in value.split(",")):
        if not re.fullmatch(r"[0-9]+|(GPU|MIG)-\S+", entry):
            break
        if entry not in devices:
            devices.append(entry)
    return devices


def nvidia_smi_devices() -> list[str]:
    """The GPU indices ``nvidia-smi`` lists; [] without it.

    nvidia-smi asks the driver through NVML in its own process, so CUDA stays uninitialised here.
    """
    executable = shutil.which("nvidia-smi")
    if executable is None:
        return []
    command = [executable, "--query-gpu=index", "--format=csv,noheader"]
    try:
        listing = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError) as error:
        detail = getattr(error, "stdout", None) or getattr(error, "stderr", None) or error
        log.warning("nvidia-smi could not list the GPUs (%s); the job runs without a GPU slot. Fix the "
                    "driver, or set CUDA_VISIBLE_DEVICES to the GPUs to share out.", str(detail).strip())
        return []
    return [line.strip() for line in listing.splitlines() if line.strip().isdigit()]


def slot_lock_dir(lock_dir: str | os.PathLike | None = None) -> Path:
    """Where the slot lock files live: ``lock_dir``, else ``$CLIPDRIFT_GPU_SLOT_DIR``, else the default."""
    if lock_dir is not None:
        return Path(lock_dir)
    if os.environ.get(LOCK_DIR_ENV):
        return Path(os.environ[LOCK_DIR_ENV])
    return _default_lock_dir()


def _default_lock_dir() -> Path:
    # /tmp itself, not $TMPDIR: Snakemake and SLURM may give each job its own TMPDIR, and every
    # job on the machine must meet in the same directory
    return Path("/tmp") / f"clipdrift-gpu-slots-{os.getuid()}"


def _check_arguments(slots_per_gpu, timeout, poll_interval) -> None:
    if not isinstance(slots_per_gpu, int) or slots_per_gpu < 1:
        raise GpuSlotError(f"slots_per_gpu={slots_per_gpu!r} is not a positive integer: use 1 for one job per "
                           "GPU, or more to let that many small jobs share each GPU")
    if timeout is not None and timeout < 0:
        raise GpuSlotError(f"timeout={timeout!r} is negative: give seconds to wait, or None to wait for ever")
    if poll_interval <= 0:
        raise GpuSlotError(f"poll_interval={poll_interval!r} must be positive seconds")


def _normalise_devices(devices: Sequence[str | int]) -> list[str]:
    names: list[str] = []
    for device in devices:
        name = str(device).strip()
        if not name:
            raise GpuSlotError(f"devices {list(devices)!r} has an empty entry: name each GPU by index or UUID")
        if name not in names:
            names.append(name)
    return names


def _inherited_holder() -> str | None:
    """Who already holds a slot for the one device this process sees (this process or a parent)."""
    marker = os.environ.get(HOLDER_ENV)
    if not marker:
        return None
    device, pid, lock_path = (marker.split("\t") + ["", "", ""])[:3]
    # a marker whose slot is no longer held (the parent released it) is stale: claim afresh
    if visible_devices() != [device] or not _is_locked(Path(lock_path)):
        return None
    return "this process's GPU slot" if pid == str(os.getpid()) else f"the GPU slot of process {pid}"


def _scheduler(scheduler_assigned: bool | None) -> str | None:
    if scheduler_assigned is None:
        scheduler_assigned = "SLURM_JOB_ID" in os.environ
    if not scheduler_assigned:
        return None
    job = os.environ.get("SLURM_JOB_ID")
    return f"SLURM job {job}" if job else "the scheduler"


def _assigned_elsewhere(decided_by: str) -> GpuSlot | None:
    # the device was chosen for us: take no lock (under SLURM every job may see its GPU as "0",
    # so locking "0" would serialise jobs that own different GPUs)
    devices = visible_devices()
    if not devices:
        return None
    return GpuSlot(device=",".join(devices), assigned_by=decided_by)


def _claim_from_pool(pool, slots_per_gpu, lock_dir, timeout, poll_interval, pin_pci_order) -> GpuSlot:
    _prepare_lock_dir(lock_dir)
    # every GPU's first slot before any second slot: concurrent jobs spread over the GPUs first
    order = [(device, share) for share in range(slots_per_gpu) for device in pool]
    paths = [lock_dir / _lock_file_name(device, share) for device, share in order]
    index, fd = _acquire(paths, timeout, poll_interval, slots_per_gpu)
    device = order[index][0]
    saved_env = _narrow_visibility(device, paths[index], pin_pci_order)
    return GpuSlot(device=device, slot=index, slots=len(order), slots_per_gpu=slots_per_gpu,
                   lock_path=paths[index], _fd=fd, _saved_env=saved_env)


def _prepare_lock_dir(lock_dir: Path) -> None:
    try:
        lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        raise GpuSlotError(f"cannot create the GPU slot lock directory {lock_dir} ({error.strerror}): set "
                           f"{LOCK_DIR_ENV} to a writable directory on this machine's local disk") from error
    if lock_dir == _default_lock_dir() and lock_dir.stat().st_uid != os.getuid():
        raise GpuSlotError(f"the GPU slot lock directory {lock_dir} belongs to another user, who could block "
                           f"every slot: remove it, or set {LOCK_DIR_ENV} to a directory of your own")


def _lock_file_name(device: str, share: int) -> str:
    safe_device = re.sub(r"[^A-Za-z0-9._-]", "_", device)
    return f"gpu-{safe_device}.slot-{share}.lock"


def _acquire(paths: list[Path], timeout, poll_interval, slots_per_gpu) -> tuple[int, int]:
    """Lock the first free slot file, polling until ``timeout``: (its index, the held descriptor)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    announced_wait = False
    while True:
        for index, path in enumerate(paths):
            fd = _try_lock(path)
            if fd is not None:
                return index, fd
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise GpuSlotTimeout(_timeout_message(paths, timeout, slots_per_gpu))
        if not announced_wait:
            log.info("all %d GPU slots are held by other jobs; waiting for one (%s)", len(paths), _holders(paths))
            announced_wait = True
        time.sleep(poll_interval if remaining is None else min(poll_interval, remaining))


def _try_lock(path: Path) -> int | None:
    """An open descriptor holding the exclusive lock on ``path``, or None when another holds it."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise GpuSlotError(f"cannot open the GPU slot lock file {path} ({error.strerror}): make it writable, or "
                           f"set {LOCK_DIR_ENV} to a directory of your own") from error
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    _write_holder_note(fd)
    return fd


def _is_locked(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        # a shared lock conflicts only with a holder's exclusive one, and needs no write access
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _write_holder_note(fd: int) -> None:
    since = datetime.now().astimezone().isoformat(timespec="seconds")
    note = f"pid {os.getpid()} on {socket.gethostname()} since {since}\n"
    os.ftruncate(fd, 0)
    os.pwrite(fd, note.encode(), 0)


def _holders(paths: list[Path]) -> str:
    notes = []
    for path in paths:
        try:
            note = path.read_text().strip() or "holder unknown"
        except OSError:
            note = "holder unknown"
        notes.append(f"{path.name}: {note}")
    return "; ".join(notes)


def _timeout_message(paths: list[Path], timeout: float, slots_per_gpu: int) -> str:
    slots = len(paths)
    return (f"no GPU slot came free within {timeout:g} s: all {slots} slots ({slots_per_gpu} per GPU) are "
            f"held by other jobs ({_holders(paths)}). Run at most {slots} GPU jobs at once (snakemake "
            f"--resources gpu={slots}), raise slots_per_gpu to share each GPU, or wait longer; the lock "
            f"files are in {paths[0].parent}")


def _narrow_visibility(device: str, lock_path: Path, pin_pci_order: bool) -> dict[str, str | None]:
    """Show CUDA only ``device``; return the previous values for :meth:`GpuSlot.release`."""
    saved = {name: os.environ.get(name) for name in (VISIBLE_ENV, ORDER_ENV, HOLDER_ENV)}
    os.environ[VISIBLE_ENV] = device
    if pin_pci_order and ORDER_ENV not in os.environ:
        # nvidia-smi numbers GPUs in PCI bus order, CUDA by default fastest first: make index 2
        # the GPU that nvidia-smi calls 2, so the log line and nvidia-smi agree
        os.environ[ORDER_ENV] = "PCI_BUS_ID"
    os.environ[HOLDER_ENV] = f"{device}\t{os.getpid()}\t{lock_path}"
    return saved


def _restore_env(saved: dict[str, str | None]) -> None:
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
