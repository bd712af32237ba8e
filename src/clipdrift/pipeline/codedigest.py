"""Digests of the package code and data a workflow script really runs, derived, not hand-listed.

Snakemake reruns a rule when its script changes, not when a module that script imports does.
Each rule therefore carries ``script_digest(script)`` in ``params``: it changes exactly when the
meaning of a reached module, or the bytes of a reached data file, change.

**Closure.** The script and every reached module are read with :mod:`ast`, never imported
(this runs on every ``snakemake -n`` and every cluster job step, so it must stay stdlib-only
and fast). Every ``import``/``from ... import`` of a ``clipdrift`` module is followed, wherever
it sits: at top level, inside functions (lazy imports run too) or ``if`` blocks, absolute or
relative, plus ``importlib.import_module("clipdrift....")`` with a literal name. As in Python,
importing ``clipdrift.a.b`` runs ``clipdrift/__init__.py`` and ``clipdrift/a/__init__.py``
first, so they and everything they import are in the closure; ``from clipdrift.a import b``
reaches the submodule ``a/b.py`` when it exists; ``from clipdrift.a import *`` reaches the
submodules listed in ``a``'s literal ``__all__``. Imports outside ``clipdrift`` are ignored.

**Data files.** A data file is any file in the package folder other than Python source and
caches (``model_configs/*.json``, ``resources/*``, ...); a data folder is any folder below the
package root holding one. The string constants of the script and of every reached module,
docstrings excluded, say which data the code reads:

- a constant equal to a data file's package-relative path (``"resources/templates.json"``) or
  its base name (``"paper_cells.csv"``) reads that file;
- a constant equal to a data folder's package-relative path or base name (``"model_configs"``,
  ``"resources"``; surrounding ``/`` ignored, so the literal head of
  ``f"resources/classnames/{name}.txt"`` counts) reads every file below that folder, unless the
  same module also names files or folders inside it: then those names are what it reads
  (``files("clipdrift") / "resources" / "paper_cells.csv"`` reads one file, not the folder).

So code that reads a data file by a name computed at run time must keep that file's name, or
the name of a folder holding it (and nothing else inside that folder), as a literal in the
same module.

**Digest.** Modules count by meaning: the SHA-256 of their parsed AST with module, class and
function docstrings removed, written as ``ast.dump(tree, include_attributes=False)`` would
(node types, fields and values, no line or column positions), so comments, docstrings and
formatting never count. The AST format can change between Python versions, so a Python
upgrade changes every digest once. Data files count by their bytes. A script's digest is the
SHA-256 of its sorted (package-relative path, file digest) pairs, as 16 hex digits.

**How a job runs is not what it computes.** The modules of ``clipdrift.pipeline.jobs`` (the
runner every script calls, GPU slots, the warm job server) decide where and how a job runs:
its log, its GPU, its process. No closure follows an import into that package
(:data:`OUTSIDE_DIGESTS`), so editing them reruns nothing. They import nothing of the package
but each other and ``clipdrift.core``, which every script reaches on its own; the test suite
checks both, and that a job's results are the same however it runs (warm or cold).

**Cost.** Parsing is cached by the SHA-256 of each source text, in memory and in a JSON file in
the package's ``__pycache__``: a fresh process digests every workflow script in ~20 ms instead
of ~200 ms (see :class:`_FactsCache`).
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

PACKAGE = "clipdrift"
# How and where a job runs, not what it computes: outside every digest (see the module docstring).
OUTSIDE_DIGESTS = "clipdrift.pipeline.jobs"
# This module is part of the package it digests: the package folder is the one its parent
# package was imported from (nothing else is imported to find it).
PACKAGE_DIR = Path(sys.modules[PACKAGE].__file__).resolve().parent
_SOURCE_SUFFIXES = {".py", ".pyc", ".pyo"}  # everything else in the package is data
_DOCSTRING_OWNERS = {ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef}
_NOTED = {ast.Import, ast.ImportFrom, ast.Call, ast.Constant}  # what _note records
# Cached facts are valid for this very algorithm and ast format only.
_CACHE_NAME = (f"codedigest.{sys.implementation.cache_tag}."
               f"{hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]}.json")


@dataclass(frozen=True)
class _ImportFrom:
    """One import statement, unresolved: ``from <level dots><module> import <names>``.

    ``import a.b`` is recorded as level 0, module ``a.b``, no names."""

    level: int
    module: str
    names: tuple[str, ...]


@dataclass(frozen=True)
class _ModuleFacts:
    """What the closure and digest need from one source file, independent of where it lies."""

    digest: str
    imports: tuple[_ImportFrom, ...]
    constants: frozenset[str]
    dunder_all: tuple[str, ...]


def script_closure(script_path: str | Path, package_dir: str | Path | None = None) -> list[str]:
    """Package-relative paths (modules and data files) that ``script_path`` runs or reads, sorted."""
    package = _Package(package_dir)
    closure = sorted(_script_files(Path(script_path), package))
    package.cache.save()
    return closure


def script_digest(script_path: str | Path, package_dir: str | Path | None = None) -> str:
    """16 hex digits that change when the meaning of a module in the script's closure, or the
    bytes of a data file in it, change; comments, docstrings and formatting never count."""
    package = _Package(package_dir)
    combined = hashlib.sha256()
    for relative in sorted(_script_files(Path(script_path), package)):
        combined.update(f"{relative}\0{package.digest(relative)}\n".encode())
    package.cache.save()
    return combined.hexdigest()[:16]


def external_imports(script_path: str | Path, package_dir: str | Path | None = None) -> list[str]:
    """Modules outside the package that the script and its closure import (``import a.b`` and
    ``from a.b import c`` name ``a.b``), sorted: what a job running the script will import."""
    package = _Package(package_dir)
    script_facts = package.cache.facts(Path(script_path).read_bytes())
    facts = [script_facts, *(package.facts(module) for module in _module_closure(script_facts, package))]
    package.cache.save()
    return sorted({statement.module for module in facts for statement in module.imports
                   if statement.level == 0 and statement.module and not _in_package(statement.module)})


def file_digest(relative: str, package_dir: str | Path | None = None) -> str:
    """The digest one package file contributes: its meaning (a module) or its bytes (data)."""
    return _Package(package_dir).digest(relative)


def semantic_digest(source: str | bytes) -> str:
    """SHA-256 of the source's AST without docstrings or positions: its meaning, not its text."""
    return _parse_facts(source if isinstance(source, bytes) else source.encode()).digest


class _Package:
    """One look at the package folder: its modules by dotted name, its data files, their bytes.

    Built afresh for every call, so files added or edited since are seen; parsing, the costly
    part, is cached by source text (:class:`_FactsCache`)."""

    def __init__(self, package_dir: str | Path | None):
        self.root = PACKAGE_DIR if package_dir is None else Path(package_dir).resolve()
        self.cache = _facts_cache(self.root)
        self.modules: dict[str, str] = {}  # dotted name -> package-relative path
        self.data_files: list[str] = []
        for folder, subfolders, files in os.walk(self.root):
            subfolders[:] = sorted(name for name in subfolders if not _ignored(name))
            relative_folder = Path(folder).relative_to(self.root).as_posix()
            for name in sorted(files):
                if not _ignored(name):
                    self._add(name if relative_folder == "." else f"{relative_folder}/{name}")

    def _add(self, relative: str) -> None:
        path = PurePosixPath(relative)
        if path.suffix not in _SOURCE_SUFFIXES:
            self.data_files.append(relative)
        elif path.suffix == ".py":
            parts = path.parent.parts if path.name == "__init__.py" else path.with_suffix("").parts
            # A package folder wins over a module file of the same name, as in Python.
            name = ".".join((PACKAGE, *parts))
            if path.name == "__init__.py" or name not in self.modules:
                self.modules[name] = relative

    def facts(self, module: str) -> _ModuleFacts:
        return self.cache.facts((self.root / self.modules[module]).read_bytes())

    def digest(self, relative: str) -> str:
        source = (self.root / relative).read_bytes()
        return self.cache.facts(source).digest if relative.endswith(".py") else hashlib.sha256(source).hexdigest()


def _ignored(name: str) -> bool:
    return name.startswith(".") or name == "__pycache__"


def _script_files(script: Path, package: _Package) -> set[str]:
    script_facts = package.cache.facts(script.read_bytes())
    modules = _module_closure(script_facts, package)
    code_facts = [script_facts, *(package.facts(module) for module in modules)]
    return {package.modules[module] for module in modules} | _data_read(package.data_files, code_facts)


# --- per-file facts, cached by source text ---------------------------------------------------


class _FactsCache:
    """Facts by SHA-256 of the source text: in memory, and between processes in a JSON file in
    the package's ``__pycache__`` folder, beside Python's own bytecode cache.

    Parsing every reached module costs 0.15-0.3 s, paid on every Snakefile parse (every
    ``snakemake -n``, every cluster job step); reading facts back costs milliseconds. Keys are
    source hashes and the file name carries this module's own hash and the Python version, so
    an entry is never stale. Writes are atomic (concurrent job steps), and only after a miss;
    a cache that cannot be read or written costs time, never correctness.
    """

    def __init__(self, path: Path):
        self.path = path
        self.stored = self._load()
        self.used: dict[str, _ModuleFacts] = {}
        self.missed = False

    def facts(self, source: bytes) -> _ModuleFacts:
        key = hashlib.sha256(source).hexdigest()
        if key not in self.used:
            found = self.stored.get(key)
            self.missed |= found is None
            self.used[key] = found or _parse_facts(source)
        return self.used[key]

    def save(self) -> None:
        """Write the entries this process used (the working set: old texts drop out)."""
        if not self.missed:
            return
        self.missed = False
        self.stored = dict(self.used)
        scratch = self.path.with_name(f"{self.path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
        try:
            self.path.parent.mkdir(exist_ok=True)
            scratch.write_text(json.dumps({key: _to_json(facts) for key, facts in self.used.items()}))
            os.replace(scratch, self.path)
        except OSError:
            scratch.unlink(missing_ok=True)  # read-only install: recompute next time

    def _load(self) -> dict[str, _ModuleFacts]:
        try:
            return {key: _from_json(entry) for key, entry in json.loads(self.path.read_bytes()).items()}
        except Exception:  # noqa: BLE001 - missing, or damaged in any way: start afresh
            return {}


_CACHES: dict[Path, _FactsCache] = {}


def _facts_cache(root: Path) -> _FactsCache:
    if root not in _CACHES:
        _CACHES[root] = _FactsCache(root / "__pycache__" / _CACHE_NAME)
    return _CACHES[root]


def _to_json(facts: _ModuleFacts) -> dict:
    return {"digest": facts.digest, "imports": [[i.level, i.module, list(i.names)] for i in facts.imports],
            "constants": sorted(facts.constants), "all": list(facts.dunder_all)}


def _from_json(entry: dict) -> _ModuleFacts:
    imports = tuple(_ImportFrom(level, module, tuple(names)) for level, module, names in entry["imports"])
    return _ModuleFacts(entry["digest"], imports, frozenset(entry["constants"]), tuple(entry["all"]))


def _parse_facts(source: bytes) -> _ModuleFacts:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        # The job importing it will fail anyway; until then any byte change counts, and the
        # rest of the workflow still parses.
        return _ModuleFacts(hashlib.sha256(source).hexdigest(), (), frozenset(), ())
    canonical, imports, constants = _read_tree(tree)
    return _ModuleFacts(hashlib.sha256(canonical.encode()).hexdigest(), tuple(imports),
                        frozenset(constants), _dunder_all(tree))


def _read_tree(tree: ast.Module) -> tuple[str, list[_ImportFrom], set[str]]:
    """One pass over the tree: its canonical text, its imports and its string constants.

    The canonical text says what ``ast.dump(tree, include_attributes=False)`` says once
    docstrings are removed (node types, every field in order, reprs of values; no positions),
    without ``ast.dump``'s formatting work: one pass instead of a dump and three walks costs a
    third, on every Snakefile parse.
    """
    text: list[str] = []
    imports: list[_ImportFrom] = []
    constants: set[str] = set()
    write = text.append

    def visit(node: ast.AST) -> None:
        kind = type(node)
        write(kind.__name__ + "(")
        for field in node._fields:
            child = getattr(node, field, None)
            if isinstance(child, list):
                write("[")
                for item in _without_docstring(child) if field == "body" and kind in _DOCSTRING_OWNERS else child:
                    visit_value(item)
                write("]")
            else:
                visit_value(child)
        write(")")
        if kind in _NOTED:
            _note(node, imports, constants)

    def visit_value(value) -> None:
        if not isinstance(value, ast.AST):
            write(repr(value) + ",")
        elif value._fields:
            visit(value)
            write(",")
        else:  # Load, Store, Add...: a name is all there is; no call for a third of the nodes
            write(type(value).__name__ + ",")

    visit(tree)
    return "".join(text), imports, constants


def _without_docstring(body: list[ast.stmt]) -> list[ast.stmt]:
    first = body[0] if body else None
    is_docstring = (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                    and isinstance(first.value.value, str))
    return body[1:] if is_docstring else body


def _note(node: ast.AST, imports: list[_ImportFrom], constants: set[str]) -> None:
    """Record an import (at any depth: lazy imports inside functions run too) or a string."""
    if isinstance(node, ast.Import):
        imports.extend(_ImportFrom(0, alias.name, ()) for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
        imports.append(_ImportFrom(node.level, node.module or "", tuple(alias.name for alias in node.names)))
    elif isinstance(node, ast.Call):
        if _is_import_module_call(node):
            imports.append(_ImportFrom(0, node.args[0].value, ()))
    elif isinstance(node.value, str):
        constants.add(node.value)  # docstrings never get here: visit skips them


def _is_import_module_call(node: ast.Call) -> bool:
    """``importlib.import_module("literal")``, ``import_module("literal")``, ``__import__(...)``."""
    if not (node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
        return False
    function = node.func
    name = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", None)
    return name in ("import_module", "__import__")


def _dunder_all(tree: ast.Module) -> tuple[str, ...]:
    for statement in tree.body:
        if (isinstance(statement, ast.Assign)
                and any(isinstance(target, ast.Name) and target.id == "__all__" for target in statement.targets)
                and isinstance(statement.value, (ast.List, ast.Tuple))):
            return tuple(item.value for item in statement.value.elts
                         if isinstance(item, ast.Constant) and isinstance(item.value, str))
    return ()


# --- module closure -------------------------------------------------------------------------


def _module_closure(script_facts: _ModuleFacts, package: _Package) -> set[str]:
    """Dotted names of every clipdrift module the script's imports execute."""
    reached: set[str] = set()
    pending = [name for statement in script_facts.imports for name in _imported_names(statement, None, package)]
    while pending:
        name = pending.pop()
        if name in reached or name not in package.modules:
            continue  # already reached, or a namespace folder or missing module: nothing to run
        reached.add(name)
        for statement in package.facts(name).imports:
            pending.extend(_imported_names(statement, name, package))
    return reached


def _imported_names(statement: _ImportFrom, importer: str | None, package: _Package) -> list[str]:
    """Every clipdrift module ``statement`` executes, parents first, as Python imports them."""
    base = _absolute_module(statement, importer, package)
    if base is None or not _in_package(base):
        return []
    names = _with_parents(base)
    # `from a import b` runs the submodule a.b when there is one; `from a import *` runs those
    # listed in a's __all__.
    imported = statement.names
    if imported == ("*",) and base in package.modules:
        imported = package.facts(base).dunder_all
    names.extend(f"{base}.{name}" for name in imported if f"{base}.{name}" in package.modules)
    return [name for name in names if not outside_digests(name)]


def _absolute_module(statement: _ImportFrom, importer: str | None, package: _Package) -> str | None:
    if statement.level == 0:
        return statement.module
    if importer is None:
        return None  # a relative import in a script (run as __main__) names no package
    is_package = package.modules[importer].endswith("__init__.py")
    parts = importer.split(".") if is_package else importer.split(".")[:-1]
    keep = len(parts) - (statement.level - 1)
    if keep <= 0:
        return None
    return ".".join(parts[:keep] + ([statement.module] if statement.module else []))


def _in_package(name: str) -> bool:
    return name == PACKAGE or name.startswith(PACKAGE + ".")


def outside_digests(name: str) -> bool:
    """Whether module ``name`` only decides how a job runs (never in a closure)."""
    return name == OUTSIDE_DIGESTS or name.startswith(OUTSIDE_DIGESTS + ".")


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


# --- data files -----------------------------------------------------------------------------


def _data_read(data_files: list[str], code: list[_ModuleFacts]) -> set[str]:
    """Package-relative data files the given code names (rule: see the module docstring)."""
    folders = {str(parent) for path in data_files for parent in PurePosixPath(path).parents if str(parent) != "."}
    read: set[str] = set()
    for module in code:
        read |= _data_named_by(module.constants, data_files, folders)
    return read


def _data_named_by(constants: frozenset[str], data_files: list[str], folders: set[str]) -> set[str]:
    names = {constant.strip("/").removeprefix("./") for constant in constants}
    named_files = {path for path in data_files if path in names or PurePosixPath(path).name in names}
    named_folders = {folder for folder in folders if folder in names or PurePosixPath(folder).name in names}
    named = named_files | named_folders
    read = set(named_files)
    for folder in named_folders:
        # Names inside the folder say which of its files the module reads; else it reads them all.
        if not any(entry.startswith(folder + "/") for entry in named):
            read.update(path for path in data_files if path.startswith(folder + "/"))
    return read
