"""The offline synthetic world: procedural image–caption data, a tiny CLIP pretrained on it,
and stand-in tasks for EuroSAT, Oxford-IIIT Pets and CIFAR-100 (DESIGN.md §4).

Everything is determined by :class:`WorldConfig` (its seed) and, for the backbone,
:class:`PretrainConfig`; nothing is shipped in git or downloaded.
"""

from clipdrift.world.pretrain import PretrainConfig, pretrain_backbone, world_pairs, zeroshot_top1
from clipdrift.world.render import (
    COLOURS,
    PATTERNS,
    SHAPES,
    TERRAINS,
    Shift,
    WorldConfig,
    WorldConfigError,
    captions,
    render,
)
from clipdrift.world.tasks import FINETUNE_TASKS, TASK_SPECS, TASKS, ZEROSHOT_TASK, TaskSpec, task_spec, task_splits

__all__ = [
    "COLOURS",
    "FINETUNE_TASKS",
    "PATTERNS",
    "SHAPES",
    "TASKS",
    "TASK_SPECS",
    "TERRAINS",
    "ZEROSHOT_TASK",
    "PretrainConfig",
    "Shift",
    "TaskSpec",
    "WorldConfig",
    "WorldConfigError",
    "captions",
    "pretrain_backbone",
    "render",
    "task_spec",
    "task_splits",
    "world_pairs",
    "zeroshot_top1",
]
