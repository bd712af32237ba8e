"""What docs/artifacts.md says the workflow writes, read from its marked blocks.

``<!-- keys: NAME -->`` precedes a JSON example whose keys are the artifact's keys;
``<!-- columns: NAME -->``, ``<!-- tables -->`` and ``<!-- figures -->`` precede Markdown tables
whose first column lists the names (in backticks; several per cell allowed).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "artifacts.md"


def _after(marker: str) -> str:
    text = DOC.read_text()
    if marker not in text:
        raise AssertionError(f"docs/artifacts.md has no {marker}")
    return text.split(marker, 1)[1]


def documented_json(name: str) -> dict:
    block = _after(f"<!-- keys: {name} -->").split("```json", 1)[1].split("```", 1)[0]
    return json.loads(block)


def documented_names(marker: str) -> list[str]:
    """The backticked names in the first column of the Markdown table after ``marker``."""
    names = []
    for line in _after(marker).lstrip().splitlines():
        if not line.startswith("|"):
            break
        first = line.split("|")[1]
        names += re.findall(r"`([^`]+)`", first)
    return names


def key_paths(value, prefix: str = "") -> set[str]:
    """Every key of a JSON object, nested ones as ``outer.inner`` (a list by its first item)."""
    paths = set()
    if isinstance(value, dict):
        for key, child in value.items():
            if key == "_integrity":  # the digest bookkeeping of clipdrift.core.io, not content
                continue
            path = f"{prefix}{key}"
            paths.add(path)
            paths |= key_paths(child, f"{path}.")
    elif isinstance(value, list) and value and isinstance(value[0], dict):
        paths |= key_paths(value[0], prefix)
    return paths
