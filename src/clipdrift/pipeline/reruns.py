"""Each rule's code digest, for people: which package modules and data files a rule's script
reaches (and so which edits rerun it), and which rules reach a module.

    python -m clipdrift.pipeline.reruns finetune extract      # what these rules' digests cover
    python -m clipdrift.pipeline.reruns --reaching clipdrift.measure.zeroshot   # which rules it reruns
    python -m clipdrift.pipeline.reruns                        # every rule and its digest

Parse time, stdlib only (the Snakefile reads the rules' scripts through :func:`rule_scripts`).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from clipdrift.pipeline.codedigest import PACKAGE_DIR, file_digest, script_closure, script_digest


def rule_scripts(workflow_dir: str | Path) -> dict[str, str]:
    """Rule name → the file name of its ``script:`` (e.g. ``{"finetune": "finetune.py"}``), read
    from ``workflow_dir/rules/*.smk`` (rules defined inside an ``if`` block included)."""
    rules = {}
    for path in sorted(Path(workflow_dir, "rules").glob("*.smk")):
        for name, body in re.findall(r"^\s*rule (\w+):\n(.*?)(?=^\s*rule \w+:|\Z)", path.read_text(), re.M | re.S):
            script = re.search(r'script:\s*\n\s*"(?:\.\./scripts/)?([\w.]+)"', body)
            if script:
                rules[name] = script.group(1)
    return rules


def workflow_dir() -> Path:
    """The workflow beside this package's source tree (``<repo>/workflow``), else ``./workflow``."""
    beside = PACKAGE_DIR.parents[1] / "workflow"
    return beside if (beside / "rules").is_dir() else Path("workflow")


def describe(rule: str, workflow: Path) -> str:
    scripts = rule_scripts(workflow)
    if rule not in scripts:
        raise SystemExit(f"no rule {rule!r} with a script in {workflow}/rules: one of {', '.join(sorted(scripts))}")
    script = workflow / "scripts" / scripts[rule]
    closure = script_closure(script)
    lines = [f"rule {rule}: {script} -> digest {script_digest(script)}",
             "  reruns when the meaning of one of these modules, or the bytes of one of these data files, change:"]
    lines += [f"    {path:40s} {file_digest(path)[:16]}" for path in closure]
    return "\n".join(lines)


def package_file(module: str) -> str:
    """The package-relative path of ``module``, named as a dotted module (``clipdrift.core.io``,
    ``core.io``) or a path (``core/io.py``, ``src/clipdrift/core/io.py``, a data file)."""
    name = module.replace("\\", "/")
    if not name.endswith(".py") and "/" not in name and not (PACKAGE_DIR / name).is_file():
        name = name.removeprefix(f"{PACKAGE_DIR.name}.").replace(".", "/")
        name = f"{name}/__init__.py" if (PACKAGE_DIR / name).is_dir() else f"{name}.py"
    name = name.split(f"{PACKAGE_DIR.name}/", 1)[-1] if f"{PACKAGE_DIR.name}/" in name else name
    if not (PACKAGE_DIR / name).is_file():
        raise SystemExit(f"{module!r} is not a file of the package in {PACKAGE_DIR}: name a module "
                         "as clipdrift.measure.zeroshot or measure/zeroshot.py")
    return name


def reaching(module: str, workflow: Path) -> list[str]:
    """The rules whose digest covers ``module`` (see :func:`package_file` for the names it takes)."""
    path = package_file(module)
    scripts = rule_scripts(workflow)
    return sorted(rule for rule, script in scripts.items() if path in script_closure(workflow / "scripts" / script))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rules", nargs="*", help="rules to describe (default: list every rule and its digest)")
    parser.add_argument("--reaching", metavar="MODULE", help="list the rules whose digest covers MODULE")
    parser.add_argument("--workflow", type=Path, default=None, help="the workflow folder (default: beside the package)")
    args = parser.parse_args(argv)
    workflow = args.workflow or workflow_dir()
    if args.reaching:
        rules = reaching(args.reaching, workflow)
        print("\n".join(rules) if rules else f"no rule reaches {args.reaching}: editing it reruns nothing")
        return
    if args.rules:
        print("\n\n".join(describe(rule, workflow) for rule in args.rules))
        return
    for rule, script in sorted(rule_scripts(workflow).items()):
        print(f"{rule:30s} {script:24s} {script_digest(workflow / 'scripts' / script)}")


if __name__ == "__main__":
    sys.exit(main())
