"""codedigest: a workflow script's digest follows exactly the package code and data it runs.

Edits go to a temporary copy of the package; the real workflow scripts are read from the repo.
"""

import ast
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from clipdrift.pipeline import codedigest
from clipdrift.pipeline.codedigest import script_closure, script_digest, semantic_digest
from clipdrift.pipeline.reruns import main as digests_cli
from clipdrift.pipeline.reruns import package_file, rule_scripts

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "clipdrift"
SCRIPTS = sorted((REPO / "workflow" / "scripts").glob("*.py"))
HEAVY = ("torch", "open_clip", "pandas", "numpy", "torchvision", "peft")


def _package_files(suffix_is_py: bool) -> list[str]:
    files = (path.relative_to(PACKAGE) for path in PACKAGE.rglob("*") if path.is_file())
    return sorted(path.as_posix() for path in files
                  if "__pycache__" not in path.parts and not any(part.startswith(".") for part in path.parts)
                  and path.suffix not in (".pyc", ".pyo") and (path.suffix == ".py") == suffix_is_py)


MODULES = _package_files(suffix_is_py=True)
DATA_FILES = _package_files(suffix_is_py=False)


class PackageCopy:
    """A temporary copy of the package, the scripts' digests and closures on it, and edits that
    are undone at once."""

    def __init__(self, root: Path):
        self.root = root
        shutil.copytree(PACKAGE, root, ignore=shutil.ignore_patterns("__pycache__"))
        self.baseline = self.digests()
        self.closures = {script.name: set(script_closure(script, root)) for script in SCRIPTS}

    def digests(self) -> dict[str, str]:
        return {script.name: script_digest(script, self.root) for script in SCRIPTS}

    def scripts_changed_by(self, relative: str, edited: bytes) -> set[str]:
        path = self.root / relative
        original = path.read_bytes()
        assert edited != original, "the edit must change the file"
        path.write_bytes(edited)
        try:
            after = self.digests()
        finally:
            path.write_bytes(original)
        return {name for name, digest in after.items() if digest != self.baseline[name]}

    def scripts_reaching(self, relative: str) -> set[str]:
        return {name for name, closure in self.closures.items() if relative in closure}

    def source(self, relative: str) -> bytes:
        path = self.root / relative
        if not path.exists():
            pytest.skip(f"{relative} was removed from the package after collection")
        return path.read_bytes()


@pytest.fixture(scope="module")
def package_copy(tmp_path_factory) -> PackageCopy:
    return PackageCopy(tmp_path_factory.mktemp("codedigest") / "clipdrift")


# --- edits ----------------------------------------------------------------------------------

_DOCSTRING_OWNERS = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _docstrings(source: bytes) -> list[str | None]:
    tree = ast.parse(source)
    return [ast.get_docstring(node, clean=False) for node in ast.walk(tree) if isinstance(node, _DOCSTRING_OWNERS)]


def _docstring_nodes(tree: ast.Module) -> list[ast.Constant]:
    owners = [node for node in ast.walk(tree) if isinstance(node, _DOCSTRING_OWNERS)]
    return [owner.body[0].value for owner in owners if owner.body and isinstance(owner.body[0], ast.Expr)
            and isinstance(owner.body[0].value, ast.Constant) and isinstance(owner.body[0].value.value, str)]


def with_docstrings_edited(source: bytes) -> bytes:
    """Every module, class and function docstring reworded; a module docstring added if none."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    # Later positions first, so earlier offsets (UTF-8 bytes, as ast counts them) stay valid.
    for constant in sorted(_docstring_nodes(tree), key=lambda node: (node.lineno, node.col_offset), reverse=True):
        line = lines[constant.lineno - 1]
        start = constant.col_offset
        while line[start:start + 1] in (b"r", b"R", b"u", b"U"):
            start += 1
        start += 3 if line[start:start + 3] in (b'"""', b"'''") else 1
        lines[constant.lineno - 1] = line[:start] + b"Probe: reworded. " + line[start:]
    edited = b"".join(lines)
    return edited if ast.get_docstring(tree) is not None else b'"""Probe: a new module docstring."""\n' + edited


def with_comments_and_blank_lines(source: bytes) -> bytes:
    """Every line moves down (positions change), a comment on top and one at the end."""
    return b"# probe: a comment changes nothing\n\n\n" + source + b"\n\n# probe: nor does this one\n"


def with_semantic_change(source: bytes) -> bytes:
    return source + b"\n_digest_probe = 1\n"


# --- every module, every data file ----------------------------------------------------------


@pytest.mark.parametrize("module", MODULES)
def test_semantic_edit_changes_exactly_the_scripts_reaching_the_module(package_copy, module):
    source = package_copy.source(module)
    edited = with_semantic_change(source)
    assert semantic_digest(edited) != semantic_digest(source)
    assert package_copy.scripts_changed_by(module, edited) == package_copy.scripts_reaching(module)


@pytest.mark.parametrize("module", MODULES)
def test_comment_and_layout_edit_changes_no_digest(package_copy, module):
    source = package_copy.source(module)
    edited = with_comments_and_blank_lines(source)
    assert semantic_digest(edited) == semantic_digest(source)
    assert package_copy.scripts_changed_by(module, edited) == set()


@pytest.mark.parametrize("module", MODULES)
def test_docstring_edit_changes_no_digest(package_copy, module):
    source = package_copy.source(module)
    edited = with_docstrings_edited(source)
    assert _docstrings(edited) != _docstrings(source)  # the edit did reach the docstrings
    assert semantic_digest(edited) == semantic_digest(source)
    assert package_copy.scripts_changed_by(module, edited) == set()


@pytest.mark.parametrize("data_file", DATA_FILES)
def test_data_edit_changes_exactly_the_scripts_reading_the_file(package_copy, data_file):
    edited = package_copy.source(data_file) + b"\n"
    assert package_copy.scripts_changed_by(data_file, edited) == package_copy.scripts_reaching(data_file)


def test_closures_name_existing_package_files(package_copy):
    for script, closure in package_copy.closures.items():
        assert "__init__.py" in closure, script
        assert all((package_copy.root / relative).is_file() for relative in closure), script


# --- the closure is not too small: what Python really imports ------------------------------

_RUNTIME_IMPORTS = textwrap.dedent("""
    import ast, json, sys

    def ours(name):
        return name == "clipdrift" or name.startswith("clipdrift.")

    loaded = {}
    for script in json.loads(sys.argv[1]):
        for name in [name for name in sys.modules if ours(name)]:
            del sys.modules[name]  # each script starts from no clipdrift module at all
        tree = ast.parse(open(script, "rb").read())
        top_level = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
        exec(compile(ast.Module(top_level, type_ignores=[]), script, "exec"), {"__name__": "__main__"})
        loaded[script] = sorted(module.__file__ for name, module in sys.modules.items()
                                if ours(name) and getattr(module, "__file__", None))
    print(json.dumps(loaded))
""")


def test_static_closure_contains_every_module_the_scripts_import_at_run_time():
    # One fresh interpreter for all scripts (torch loads once, ~8 s); clipdrift modules are
    # dropped from sys.modules before each script, so each one imports them afresh.
    result = subprocess.run([sys.executable, "-c", _RUNTIME_IMPORTS, json.dumps([str(s) for s in SCRIPTS])],
                            capture_output=True, text=True, check=True, cwd=REPO)
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    for script in SCRIPTS:
        imported = {Path(path).resolve().relative_to(PACKAGE).as_posix() for path in loaded[str(script)]}
        assert "__init__.py" in imported
        computing = {path for path in imported if not path.startswith(PLUMBING)}  # how the job runs: see below
        assert computing <= set(script_closure(script)), (script.name, computing - set(script_closure(script)))


# --- how a job runs is outside every digest, by one rule -------------------------------------

PLUMBING = codedigest.OUTSIDE_DIGESTS.removeprefix("clipdrift.").replace(".", "/") + "/"
RULES = rule_scripts(REPO / "workflow")


def _package_imports(relative: str) -> set[str]:
    """Every clipdrift module a package file imports (lazy imports included), as dotted names."""
    tree = ast.parse((PACKAGE / relative).read_text())
    found = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    found |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 0}
    return {name for name in found if name and name.startswith("clipdrift")}


def test_the_plumbing_imports_nothing_that_computes():
    plumbing = [module for module in MODULES if module.startswith(PLUMBING)]
    assert "pipeline/jobs/runner.py" in plumbing and "pipeline/jobs/gpuslots.py" in plumbing
    for module in plumbing:
        # the ground floor, and the digest code the job server derives its imports with
        foreign = {name for name in _package_imports(module) if not codedigest.outside_digests(name)
                   and not name.startswith("clipdrift.core") and name != "clipdrift.pipeline.codedigest"}
        assert not foreign, (module, foreign)


def _only_names(relative: str) -> bool:
    """Whether a module holds nothing but a docstring and string constants."""
    body = codedigest._without_docstring(ast.parse((PACKAGE / relative).read_text()).body)
    return all(isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) for node in body)


def test_the_core_modules_the_plumbing_uses_are_in_every_rules_digest_or_only_names():
    used = {name for module in MODULES if module.startswith(PLUMBING) for name in _package_imports(module)
            if name.startswith("clipdrift.core")}
    files = {name.removeprefix("clipdrift.").replace(".", "/") + ".py" for name in used}
    names_only = {path for path in files if _only_names(path)}
    assert names_only == {"core/environment.py"}
    for script in SCRIPTS:
        assert files - names_only <= set(script_closure(script)), script.name


@pytest.mark.parametrize("module", [module for module in MODULES if module.startswith(PLUMBING)])
def test_an_edit_of_how_jobs_run_reruns_no_rule(package_copy, module):
    assert package_copy.scripts_changed_by(module, with_semantic_change(package_copy.source(module))) == set()


def _rules_changed_by(package_copy, relative: str) -> set[str]:
    scripts = package_copy.scripts_changed_by(relative, with_semantic_change(package_copy.source(relative)))
    return {rule for rule, script in RULES.items() if script in scripts}


@pytest.mark.parametrize(("module", "reruns", "never"), [
    ("report/figures.py", {"report"}, set()),
    ("pipeline/jobs/gpuslots.py", set(), set()),
    ("pipeline/jobs/runner.py", set(), set()),
    ("measure/zeroshot.py", None, {"finetune", "extract", "pretrain_backbone"}),
    ("measure/attention.py", None, {"finetune", "zeroshot", "zeroshot_classifier", "pretrain_backbone"}),
    ("measure/cka.py", None, {"finetune", "zeroshot", "zeroshot_classifier", "pretrain_backbone"}),
])
def test_an_edit_reruns_what_it_can_change_and_nothing_else(package_copy, module, reruns, never):
    changed = _rules_changed_by(package_copy, module)
    if reruns is not None:
        assert changed == reruns, module
    assert changed and not changed & never or reruns == set(), (module, changed)


# --- what the study relies on ---------------------------------------------------------------


def _closure(script: str) -> set[str]:
    return set(script_closure(REPO / "workflow" / "scripts" / script))


def test_zeroshot_reaches_the_runtime_helpers_and_data_loading():
    reached = {"measure/runtime.py", "data/split.py", "measure/zeroshot.py", "resources/zeroshot_templates.json"}
    assert reached <= _closure("zeroshot.py")


def test_a_metric_or_zeroshot_edit_never_reruns_a_finetune():
    finetune = _closure("finetune.py")
    assert not {path for path in finetune if path.startswith(("measure/", "analysis/", "report/"))}
    assert "measure/zeroshot.py" not in finetune
    assert "resources/zeroshot_templates.json" not in finetune


def test_data_preparation_reaches_the_data_and_the_world_but_not_pretraining():
    world = {module for module in MODULES if module.startswith("data/world/")}
    assert world and {"data/build.py", "data/real.py", "data/sampling.py", *world} <= _closure("prepare_data.py")
    assert "train/pretrain.py" not in _closure("prepare_data.py")  # a pretraining edit reruns no data job


def test_model_configs_reach_every_model_loading_script():
    configs = {path for path in DATA_FILES if path.startswith("model_configs/")}
    for script in ("check_backbone.py", "finetune.py", "extract.py", "probe_reference.py", "zeroshot.py",
                   "zeroshot_classifier.py", "pretrain_backbone.py"):
        assert configs <= _closure(script), script


def test_template_edit_reruns_zeroshot_not_finetune(package_copy):
    templates = "resources/zeroshot_templates.json"
    changed = package_copy.scripts_changed_by(templates, package_copy.source(templates) + b"\n")
    assert "zeroshot.py" in changed
    assert "finetune.py" not in changed


REPORT_TEMPLATES = [path for path in DATA_FILES if path.startswith("report/jinja/")]


def test_the_report_templates_are_package_data():
    assert {"report/jinja/report.html.j2", "report/jinja/report.css"} <= set(REPORT_TEMPLATES)


@pytest.mark.parametrize("template", REPORT_TEMPLATES)
def test_a_report_template_edit_reruns_the_report_and_nothing_else(package_copy, template):
    changed = package_copy.scripts_changed_by(template, package_copy.source(template) + b"\n")
    assert changed == {"report.py"}


def test_digest_is_short_hex_and_stable():
    digest = script_digest(SCRIPTS[0])
    assert len(digest) == 16 and int(digest, 16) >= 0
    assert script_digest(SCRIPTS[0]) == digest


# --- cheap to import: the Snakefile parses it on every start --------------------------------

_IMPORT_COST = textwrap.dedent("""
    import json, sys
    import clipdrift.pipeline.codedigest as codedigest
    digests = [codedigest.script_digest(script) for script in json.loads(sys.argv[1])]
    print(json.dumps(sorted(name for name in sys.modules if name.split(".")[0] in {heavy} or name.startswith("clipdrift"))))
""")


def test_module_imports_no_heavy_library():
    code = _IMPORT_COST.format(heavy=set(HEAVY))
    result = subprocess.run([sys.executable, "-c", code, json.dumps([str(s) for s in SCRIPTS])],
                            capture_output=True, text=True, check=True, cwd=REPO)
    assert json.loads(result.stdout) == ["clipdrift", "clipdrift.pipeline", "clipdrift.pipeline.codedigest"]


# --- import semantics and the data rule, on a small made-up package --------------------------


def make_package(root: Path, files: dict[str, str]) -> Path:
    package = root / "clipdrift"
    for relative, text in {"__init__.py": "", **files}.items():
        path = package / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return package


def closure_of(tmp_path: Path, script: str, files: dict[str, str]) -> set[str]:
    package = make_package(tmp_path, files)
    script_path = tmp_path / "script.py"
    script_path.write_text(textwrap.dedent(script))
    return set(script_closure(script_path, package))


def test_importing_a_submodule_runs_its_parent_packages(tmp_path):
    closure = closure_of(tmp_path, "import clipdrift.a.b\n", {
        "__init__.py": "from clipdrift import root_helper\n",
        "root_helper.py": "",
        "a/__init__.py": "from .sibling import name\n",
        "a/sibling.py": "name = 1\n",
        "a/b.py": "",
        "unrelated.py": "",
    })
    assert closure == {"__init__.py", "root_helper.py", "a/__init__.py", "a/sibling.py", "a/b.py"}


def test_from_import_reaches_submodules_not_names(tmp_path):
    closure = closure_of(tmp_path, "from clipdrift.a import b, CONSTANT\nfrom clipdrift import c\n", {
        "a/__init__.py": "CONSTANT = 1\n",
        "a/b.py": "",
        "c/__init__.py": "",
        "c/d.py": "",
    })
    assert closure == {"__init__.py", "a/__init__.py", "a/b.py", "c/__init__.py"}


def test_relative_lazy_and_literal_dynamic_imports_are_followed(tmp_path):
    closure = closure_of(tmp_path, "from clipdrift.pkg import entry\n", {
        "pkg/__init__.py": "from . import first\n",
        "pkg/first.py": "from .second import thing\n",
        "pkg/second.py": "def later():\n    from ..lazy import f\n    if True:\n        import clipdrift.deep.inner\n",
        "pkg/entry.py": "import importlib\nimportlib.import_module('clipdrift.dynamic')\n",
        "lazy.py": "",
        "deep/__init__.py": "",
        "deep/inner.py": "",
        "dynamic.py": "",
        "never.py": "",
    })
    assert closure == {"__init__.py", "pkg/__init__.py", "pkg/first.py", "pkg/second.py", "pkg/entry.py",
                       "lazy.py", "deep/__init__.py", "deep/inner.py", "dynamic.py"}


def test_star_import_runs_the_submodules_in_dunder_all(tmp_path):
    closure = closure_of(tmp_path, "from clipdrift.a import *\nimport json, os.path\n", {
        "a/__init__.py": "__all__ = ['b', 'VALUE']\nVALUE = 1\n",
        "a/b.py": "",
        "a/c.py": "",
    })
    assert closure == {"__init__.py", "a/__init__.py", "a/b.py"}


def test_data_files_are_derived_from_the_names_the_code_uses(tmp_path):
    data = {
        "resources/templates.json": "{}", "resources/cells.csv": "x", "resources/protocol.yaml": "a: 1",
        "resources/classnames/cifar.txt": "cat", "model_configs/tiny.json": "{}", "model_configs/base.json": "{}",
    }
    modules = {
        "by_path.py": "PATH = 'resources/templates.json'\n",
        "by_name.py": "from importlib import resources\nSOURCE = resources.files('clipdrift') / 'resources' / 'cells.csv'\n",
        "by_folder.py": "FOLDER = 'model_configs'\n",
        "by_fstring.py": "def names(dataset):\n    return f'resources/classnames/{dataset}.txt'\n",
        "whole_folder.py": "from pathlib import Path\nFILES = sorted((Path(__file__).parent / 'resources').glob('*'))\n",
        "docstring_only.py": '"""Reads resources/protocol.yaml, says the docstring."""\n',
    }
    expected = {
        "by_path.py": {"resources/templates.json"},
        "by_name.py": {"resources/cells.csv"},
        "by_folder.py": {"model_configs/tiny.json", "model_configs/base.json"},
        "by_fstring.py": {"resources/classnames/cifar.txt"},
        "whole_folder.py": {path for path in data if path.startswith("resources/")},
        "docstring_only.py": set(),
    }
    package = make_package(tmp_path, {**data, **modules})
    for module, files in expected.items():
        script = tmp_path / f"uses_{module}"
        script.write_text(f"import clipdrift.{module.removesuffix('.py')}\n")
        assert set(script_closure(script, package)) == {"__init__.py", module, *files}, module


def test_new_data_file_in_a_read_folder_is_picked_up_without_edits(tmp_path):
    package = make_package(tmp_path, {"configs.py": "FOLDER = 'model_configs'\n", "model_configs/a.json": "{}"})
    script = tmp_path / "script.py"
    script.write_text("from clipdrift import configs\n")
    before = script_digest(script, package)
    (package / "model_configs" / "b.json").write_text("{}")
    assert "model_configs/b.json" in script_closure(script, package)
    assert script_digest(script, package) != before


# --- digest of meaning ----------------------------------------------------------------------


def test_semantic_digest_ignores_docstrings_comments_and_layout():
    plain = "def f(x):\n    return x + 1\n\nclass C:\n    y = 2\n"
    dressed = ('"""Module."""\n# comment\n\n\ndef f(x):  # why\n    """Doc."""\n    return (x +\n            1)\n\n'
               "class C:\n    '''Doc.'''\n    y = 2\n")
    assert semantic_digest(plain) == semantic_digest(dressed)


@pytest.mark.parametrize("changed", ["def f(x):\n    return x + 2\n", "def f(x):\n    return x + 1.0\n",
                                     "def f(y):\n    return y + 1\n", "def f(x):\n    return x + 1\nf.__doc__ = 'doc'\n"])
def test_semantic_digest_sees_changes_of_meaning(changed):
    assert semantic_digest(changed) != semantic_digest("def f(x):\n    return x + 1\n")


def test_a_string_that_is_not_first_is_not_a_docstring():
    assert semantic_digest("x = 1\n'note'\n") != semantic_digest("x = 1\n")


# --- the on-disk facts cache ----------------------------------------------------------------


def test_cache_reused_by_a_fresh_process_gives_the_same_digests(package_copy, monkeypatch):
    monkeypatch.setattr(codedigest, "_CACHES", {})  # as a fresh process: read back from disk
    assert list((package_copy.root / "__pycache__").glob("codedigest.*.json"))
    assert package_copy.digests() == package_copy.baseline


def test_damaged_cache_costs_time_not_correctness(package_copy, monkeypatch):
    for cache in (package_copy.root / "__pycache__").glob("codedigest.*.json"):
        cache.write_text('{"0": [1, 2]')
    monkeypatch.setattr(codedigest, "_CACHES", {})
    assert package_copy.digests() == package_copy.baseline


# --- the digests command: why a job would rerun ------------------------------------------------


@pytest.mark.parametrize("name", ["clipdrift.measure.zeroshot", "measure.zeroshot", "measure/zeroshot.py",
                                  "src/clipdrift/measure/zeroshot.py"])
def test_a_module_is_named_dotted_or_as_a_path(name):
    assert package_file(name) == "measure/zeroshot.py"


def test_a_package_is_its_init_and_a_data_file_its_path():
    assert package_file("clipdrift.data.world") == "data/world/__init__.py"
    assert package_file("resources/zeroshot_templates.json") == "resources/zeroshot_templates.json"


def test_a_name_that_is_no_package_file_is_refused_not_reported_as_rerunning_nothing():
    with pytest.raises(SystemExit, match="'clipdrift.measure.zeroshots' is not a file of the package"):
        digests_cli(["--reaching", "clipdrift.measure.zeroshots"])


def test_the_command_lists_the_rules_reaching_a_module_and_what_a_rules_digest_covers(capsys):
    digests_cli(["--reaching", "clipdrift.measure.zeroshot"])
    reached = capsys.readouterr().out.split()
    assert reached == sorted(rule for rule, script in rule_scripts(REPO / "workflow").items()
                             if "measure/zeroshot.py" in _closure(script))
    assert "zeroshot" in reached and "finetune" not in reached
    digests_cli(["--reaching", "clipdrift.pipeline.jobs.gpuslots"])
    assert "editing it reruns nothing" in capsys.readouterr().out
    digests_cli(["report"])
    listed = capsys.readouterr().out
    assert f"-> digest {script_digest(REPO / 'workflow/scripts/report.py')}" in listed
    assert all(f"    {path}" in listed for path in _closure("report.py"))
