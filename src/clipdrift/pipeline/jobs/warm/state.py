"""Where a working directory's job server keeps its files: a folder only its user controls.

The socket, pid record, log and start lock of the server for one working directory live in
``<runtime>/clipdrift-warm-<uid>/<key>/``, never under the working directory (a study's folder
is often writable by a whole lab). ``<runtime>`` is ``$XDG_RUNTIME_DIR`` when it is the user's
private folder (as systemd makes it), else ``$TMPDIR`` or ``/tmp``; ``<key>`` names the working
directory's real path.

Both folders are created 0700, then opened once without following a link (``O_NOFOLLOW |
O_DIRECTORY``) and checked on the open descriptor: owned by this user, nothing for its group or
others. A folder that is not so (planted by another user, loosened by someone) is refused, never
repaired: the job runs cold and says why. Everything inside is reached relative to that
descriptor (files through ``dir_fd``, the socket through ``/proc/self/fd/<fd>/``), so no path is
looked up twice and a folder renamed or replaced after the check changes nothing. Files inside
are opened without following links; an entry that is a link or not a regular file is removed
and the file created afresh.

:func:`shared_workdir` says when the working directory itself is writable by others: Snakemake
runs the code it generates from ``.snakemake/`` there, so no job server is started for it.
Stdlib only.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import stat
from pathlib import Path

RUNTIME_ENV = "XDG_RUNTIME_DIR"
SOCKET = "server.sock"
PID_FILE = "server.pid"
LOG_FILE = "server.log"
START_LOCK = "start.lock"
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class StateRefused(Exception):
    """The server's folder is not one only this user controls; the message says which and why."""


def location(workdir: str | os.PathLike = ".", environ=None) -> Path:
    """The server's folder for ``workdir`` (whether or not it exists)."""
    environ = os.environ if environ is None else environ
    key = hashlib.sha256(os.path.realpath(workdir).encode()).hexdigest()[:16]
    return _runtime(environ) / f"clipdrift-warm-{os.getuid()}" / key


def _runtime(environ) -> Path:
    runtime = environ.get(RUNTIME_ENV)
    if runtime and os.path.isabs(runtime):
        try:
            info = os.stat(runtime)
        except OSError:
            info = None
        if info is not None and stat.S_ISDIR(info.st_mode) and _not_private(info) is None:
            return Path(runtime)
    return Path(environ.get("TMPDIR") or "/tmp")


def _not_private(info: os.stat_result) -> str | None:
    if info.st_uid != os.getuid():
        return f"belongs to uid {info.st_uid}, not to this user (uid {os.getuid()})"
    if stat.S_IMODE(info.st_mode) & 0o077:
        return f"is open to its group or others (mode {stat.S_IMODE(info.st_mode):o})"
    return None


def open_state_folder(workdir: str | os.PathLike = ".", environ=None) -> StateFolder:
    """The server's folder for ``workdir``, created if missing, opened and checked (see above)."""
    path = location(workdir, environ)
    runtime = os.open(path.parent.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        user = _private_subfolder(runtime, path.parent)
    finally:
        os.close(runtime)
    try:
        return StateFolder(_private_subfolder(user, path), path)
    finally:
        os.close(user)


def _private_subfolder(parent: int, path: Path) -> int:
    try:
        os.mkdir(path.name, 0o700, dir_fd=parent)
    except FileExistsError:
        pass
    try:
        fd = os.open(path.name, _OPEN_DIR, dir_fd=parent)
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENOTDIR):
            raise StateRefused(f"{path} is a link or a file, not a folder: remove it "
                               f"(or set {RUNTIME_ENV} to a folder only you can open)") from None
        raise
    problem = _not_private(os.fstat(fd))
    if problem:
        os.close(fd)
        raise StateRefused(f"{path} {problem}: remove it (or set {RUNTIME_ENV} to a folder only you can open)")
    return fd


class StateFolder:
    """An open, checked server folder: every name is looked up relative to its descriptor."""

    def __init__(self, fd: int, path: Path):
        self.fd = fd
        self.path = path  # for messages only: never opened again

    @classmethod
    def adopt(cls, fd: int, path: Path) -> StateFolder:
        """A folder descriptor handed over by another process, checked again."""
        info = os.fstat(fd)
        problem = "is not a folder" if not stat.S_ISDIR(info.st_mode) else _not_private(info)
        if problem:
            raise StateRefused(f"{path} {problem}")
        os.set_inheritable(fd, False)
        return cls(fd, path)

    def __enter__(self) -> StateFolder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def shown(self, name: str) -> str:
        """Where ``name`` is, for a message."""
        return str(self.path / name)

    def at(self, name: str) -> str:
        """A path to ``name`` that resolves through this folder's descriptor (for a socket)."""
        return f"/proc/self/fd/{self.fd}/{name}"

    def open_file(self, name: str, flags: int, exclusive: bool = False) -> int:
        """A regular file ``name`` opened with ``flags`` (created 0600 if missing), never through a
        link: a link, a FIFO or another odd entry there is removed and the file created.
        ``exclusive``: always a new file."""
        flags |= os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # a planted FIFO must not block
        fd = None if exclusive else self._open_regular(name, flags)
        if fd is None:
            self.unlink(name)
            fd = os.open(name, flags | os.O_EXCL, 0o600, dir_fd=self.fd)
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return fd

    def _open_regular(self, name: str, flags: int) -> int | None:
        """``name`` opened if it is (or is created as) a regular file of this user; None if
        something else is there."""
        try:
            fd = os.open(name, flags, 0o600, dir_fd=self.fd)
        except OSError as error:
            if error.errno in (errno.ELOOP, errno.ENXIO):  # a link; a FIFO nobody reads
                return None
            raise
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode) and info.st_uid == os.getuid():
            return fd
        os.close(fd)
        return None

    def read_text(self, name: str) -> str | None:
        """The text of regular file ``name``; None if it is missing or not a regular file."""
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=self.fd)
        except OSError:
            return None
        with os.fdopen(fd, "rb") as file:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            return file.read().decode(errors="replace")

    def write_text(self, name: str, text: str) -> None:
        """Replace ``name`` atomically with ``text`` (a new file renamed over it)."""
        temporary = f"{name}.{os.getpid()}"
        fd = self.open_file(temporary, os.O_WRONLY, exclusive=True)
        with os.fdopen(fd, "w") as file:
            file.write(text)
        self.rename(temporary, name)

    def unlink(self, name: str) -> None:
        try:
            os.unlink(name, dir_fd=self.fd)
        except FileNotFoundError:
            pass

    def rename(self, source: str, target: str) -> None:
        os.rename(source, target, src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def inode(self, name: str) -> int | None:
        try:
            return os.stat(name, dir_fd=self.fd, follow_symlinks=False).st_ino
        except FileNotFoundError:
            return None


def shared_workdir(workdir: str | os.PathLike = ".") -> str | None:
    """Why ``workdir`` (or its ``.snakemake``) is not the user's alone, or None."""
    root = Path(os.path.abspath(workdir))
    for path in (root, root / ".snakemake"):
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(info.st_mode):
            return f"{path} is a symbolic link"
        if info.st_uid != os.getuid():
            return f"{path} belongs to uid {info.st_uid}, not to this user"
        writers = [who for who, bit in (("its group", stat.S_IWGRP), ("others", stat.S_IWOTH)) if info.st_mode & bit]
        if writers:
            return f"{path} is writable by {' and '.join(writers)} (mode {stat.S_IMODE(info.st_mode):o})"
    return None
