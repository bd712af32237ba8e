"""open_clip, as every clipdrift module imports it: without timm.

open_clip imports ``timm`` (0.35 s a process, measured) when it is installed, and uses it only
for towers built from timm models, which clipdrift does not support (its attention surgery is for
open_clip's own ViT). Importing open_clip here, with ``timm`` kept absent for the duration,
leaves open_clip's timm towers unavailable and every job 0.35 s faster to start; a later
``import timm`` elsewhere still works.

    from clipdrift.model.openclip import open_clip
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

KEPT_ABSENT = ("timm",)


@contextmanager
def absent(names: tuple[str, ...] = KEPT_ABSENT) -> Iterator[None]:
    """Inside the block, importing any of ``names`` not yet imported raises ImportError."""
    blocked = [name for name in names if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # the import system's own "known missing" marker
    try:
        yield
    finally:
        for name in blocked:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


with absent():
    import open_clip  # noqa: E402

__all__ = ["open_clip"]
