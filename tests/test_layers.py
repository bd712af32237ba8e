"""The house's layers point one way: read from the code's imports (lazy ones included), no module
imports from a layer above its own, no import cycle, no private name taken from another module,
and no module grows past what a reader holds in their head."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "clipdrift"
# The layers, bottom to top: a module may import from its own layer and the ones below.
LAYERS = ("core", "data", "model", "train", "measure", "analysis", "report", "pipeline")
MAX_LINES = 450


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(("clipdrift", *(parts[:-1] if parts[-1] == "__init__" else parts)))


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py")) if "__pycache__" not in path.parts}


def layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return 0  # the package face imports nothing
    return LAYERS.index(parts[1])


def imports(module: str) -> list[tuple[str, tuple[str, ...]]]:
    """(imported module, names) for every import of a clipdrift module, anywhere in the file."""
    found = []
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, ()) for alias in node.names if alias.name.startswith("clipdrift")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("clipdrift"):
            found.append((node.module, tuple(alias.name for alias in node.names)))
    return found


def edges(module: str) -> set[str]:
    """The modules ``module`` imports (a ``from a import b`` of a submodule ``a.b`` counts as ``a.b``)."""
    targets = set()
    for imported, names in imports(module):
        submodules = [f"{imported}.{name}" for name in names if f"{imported}.{name}" in MODULES]
        targets.update(submodules or [imported])
    return {target for target in targets if target in MODULES and target != module}


def test_every_module_belongs_to_a_layer():
    assert {module.split(".")[1] for module in MODULES if "." in module} <= set(LAYERS)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_from_a_layer_above_its_own(module):
    upward = sorted(target for target in edges(module) if layer(target) > layer(module))
    assert not upward, f"{module} (layer {LAYERS[layer(module)]}) imports from above: {upward}"


def test_no_import_cycle():
    graph = {module: edges(module) for module in MODULES}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module, path):
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                pytest.fail("import cycle: " + " -> ".join([*path[path.index(target):], target]))
            if target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_private_name_is_taken_from_another_module(module):
    taken = [f"{imported}.{name}" for imported, names in imports(module) for name in names
             if name.startswith("_") and f"{imported}.{name}" not in MODULES and imported != module]
    assert not taken, f"{module} imports private names: {taken}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_is_longer_than_a_reader_holds(module):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines: split it where it holds two concerns"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_says_what_it_is_for(module):
    docstring = ast.get_docstring(ast.parse(MODULES[module].read_text()))
    assert docstring and docstring.strip(), f"{module} has no docstring: say in a line or two what it is for"


def test_a_layer_violation_would_be_found():
    # the reader of imports sees a lazy import inside a function, and the layer order ranks it
    assert "clipdrift.data.world.render" in edges("clipdrift.data.build")  # imported inside build_dataset
    assert layer("clipdrift.report.html") > layer("clipdrift.analysis.study") > layer("clipdrift.core.io")
    assert layer("clipdrift.train.pretrain") > layer("clipdrift.data.world.render") == layer("clipdrift.data.split")
