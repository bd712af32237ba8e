"""Never old code: what ties a job server to the code it imported. Stdlib only.

**The fingerprint** (computed by every client, compared by the server before it forks): a hash of
everything the server's imports depend on that a client can see without importing it: the
package's files (every byte: a server never outlives an edit of the package), the interpreter,
the listing of every site directory and ``PYTHONPATH`` entry (the installed distributions and
their versions), the contents of the files Python runs at start-up (``*.pth`` in those folders,
``sitecustomize`` and ``usercustomize``) and the environment variables that libraries read when
they are imported. Variables Snakemake sets per job (thread counts) are left out; the child sets
the job's thread count itself.

**The imported files** (kept by the server, checked before every fork): every file of every
module the server imported from outside the standard library (third-party packages, editable
installs, ``PYTHONPATH``), with its inode, size, modification and change times as right after
the imports. An in-place edit keeps a file's name and so the fingerprint; it changes these. A
file changed while the server was importing counts as changed. A server that finds one changed
retires, and the job starts a fresh server that imports the new code. The check stats every
file (~4,100 for the workflow's stack: ~12 ms on a 2-core VM, per job).
"""

from __future__ import annotations

import hashlib
import os
import site
import sys
import sysconfig
from pathlib import Path

from clipdrift.pipeline.jobs.warm.wire import PROTOCOL

# Read by libraries when they are imported (a server keeps what it imported with): part of the
# fingerprint. Thread counts are set per job by Snakemake and again by the job itself.
IMPORT_ENV_PREFIXES = ("PYTHON", "LD_", "HF_", "HUGGINGFACE_", "TRANSFORMERS_", "TORCH", "PYTORCH_", "CUDA_",
                       "CUBLAS_", "OMP_", "KMP_", "GOMP_", "MKL_", "OPENBLAS_", "JE_", "MALLOC_", "ARROW_", "MPL",
                       "TOKENIZERS_")
PER_JOB_THREADS = frozenset({"OMP_NUM_THREADS", "GOTO_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                             "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"})  # as Snakemake sets them
PER_JOB_ENV = PER_JOB_THREADS | {"CUDA_VISIBLE_DEVICES"}
STARTUP_MODULES = ("sitecustomize", "usercustomize")  # imported by `site` before anything else
# File times come from the kernel's coarse clock, up to a tick behind time.time(): a file changed
# just before the imports began may look changed (a needless fresh server), never the reverse.
CLOCK_SLACK_S = 0.05


# --- the fingerprint ---------------------------------------------------------------------------


def package_dir() -> Path:
    """The folder of the clipdrift package this process imported."""
    return Path(sys.modules["clipdrift"].__file__).resolve().parent


def fingerprint(environ: dict[str, str] | None = None) -> str:
    """16 hex digits naming the package code and the Python environment a server would import."""
    environ = os.environ if environ is None else environ
    digest = hashlib.sha256()
    digest.update(f"{PROTOCOL}\0{sys.executable}\0{sys.version}\0{package_dir()}\n".encode())
    for name in sorted(import_environment(environ)):
        digest.update(f"env {name}={environ[name]}\n".encode())
    for relative, content in _package_files(package_dir()):
        digest.update(f"file {relative} {_sha(content)}\n".encode())
    for folder in _site_dirs(environ):
        try:
            entries = sorted(os.listdir(folder))
        except OSError:
            continue
        digest.update(f"site {folder}: {' '.join(entries)}\n".encode())
        for name in entries:
            if name.endswith(".pth") or name.removesuffix(".py") in STARTUP_MODULES:
                digest.update(f"startup {name} {_sha(_read(os.path.join(folder, name)))}\n".encode())
    for name in STARTUP_MODULES:
        path = getattr(sys.modules.get(name), "__file__", None)
        if isinstance(path, str):
            digest.update(f"startup {path} {_sha(_read(path))}\n".encode())
    return digest.hexdigest()[:16]


def import_environment(environ: dict[str, str]) -> list[str]:
    """Names of the environment variables that are part of the fingerprint."""
    return [name for name in environ if name.startswith(IMPORT_ENV_PREFIXES) and name not in PER_JOB_ENV]


def _sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError:
        return b""


def _package_files(root: Path):
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(name for name in subfolders if not name.startswith(".") and name != "__pycache__")
        for name in sorted(files):
            if not name.startswith(".") and not name.endswith((".pyc", ".pyo")):
                path = Path(folder) / name
                yield path.relative_to(root).as_posix(), path.read_bytes()


def _site_dirs(environ: dict[str, str]) -> list[str]:
    folders = [*site.getsitepackages(), *([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])]
    folders += [entry for entry in environ.get("PYTHONPATH", "").split(os.pathsep) if entry]
    return list(dict.fromkeys(os.path.abspath(folder) for folder in folders))


# --- the imported files ------------------------------------------------------------------------


class ImportedCode:
    """The files of the modules this process imported from outside the standard library, as they
    were when it finished importing (see the module's docstring)."""

    def __init__(self, imports_began: float):
        self._since_ns = int((imports_began - CLOCK_SLACK_S) * 1e9)
        self._seen_modules = 0
        self.files: dict[str, tuple | None] = {}
        self._touched: list[str] = []
        self._add_new_modules()

    def changed(self) -> list[str]:
        """The files changed since they were imported (empty: the server's code is current)."""
        if self._touched:
            return self._touched
        self._add_new_modules()
        return [path for path, identity in self.files.items() if _identity(path) != identity]

    def _add_new_modules(self) -> None:
        if len(sys.modules) == self._seen_modules:
            return
        self._seen_modules = len(sys.modules)
        for path in module_files():
            if path not in self.files:
                identity = self.files[path] = _identity(path)
                if identity is None or identity[-1] >= self._since_ns:
                    self._touched.append(path)


def module_files() -> list[str]:
    """The files of the imported modules that are not part of the standard library."""
    paths = sysconfig.get_paths()
    stdlib = tuple({os.path.join(paths[key], "") for key in ("stdlib", "platstdlib")})
    sites = tuple({os.path.join(folder, "") for folder in [paths["purelib"], paths["platlib"], *site.getsitepackages(),
                                                           site.getusersitepackages()]})
    found = set()
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if isinstance(path, str) and os.path.isabs(path) and (path.startswith(sites) or not path.startswith(stdlib)):
            found.add(path)
    return sorted(found)


def _identity(path: str) -> tuple | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns
