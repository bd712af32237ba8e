"""Running a fine-tuned model and its pretrained baseline over a probe set into tidy tables.

The tables follow ``docs/artifacts.md``: attention statistics in long format (one row per
layer × head × metric × model state), CKA per layer × token × variant, and the drift summary
the report reads. Models run in eval mode, in float32 and without gradients; their mode and
device are restored afterwards.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from clipdrift.data.split import ImageSplit
from clipdrift.measure.attention import (
    aggregate_batches,
    cls_patch_distribution,
    distribution_stats,
    entropy,
    head_diversity,
    rollout,
)
from clipdrift.measure.runtime import evaluating, probe_batches, resolve_device
from clipdrift.measure.settings import CKA_TOKENS, AttentionConfig
from clipdrift.model.backbones import CLIPClassifier, capture_attention

if TYPE_CHECKING:  # pandas loads when a table is built: the probe reference job builds none (~0.9 s)
    import pandas as pd

STATES = ("baseline", "final")
ATTENTION_COLUMNS = ["layer", "head", "metric", "state", "value"]
CKA_COLUMNS = ["layer", "token", "variant", "value", "defined"]
WHOLE = -1  # the layer / head index of whole-network and head-mean rows


# ---------------------------------------------------------------- attention


def batch_attention_stats(layer_probs: list[torch.Tensor], config: AttentionConfig) -> dict[str, torch.Tensor]:
    """Per-batch means of every attention statistic, from ``(batch, heads, T, T)`` per layer.

    Returns ``entropy``/``erf``/``gini``/``p2p_entropy`` as ``(layers, heads)``, ``head_map``
    (the batch-mean CLS→patch map of every head) as ``(layers, heads, patches)`` and the
    rollout statistics as scalars.
    """
    per_layer = {"entropy": [], "erf": [], "gini": [], "p2p_entropy": [], "head_map": []}
    for probs in layer_probs:
        cls_rows = cls_patch_distribution(probs)  # (B, H, P)
        for name, values in distribution_stats(cls_rows, config.entropy_unit, config.erf_mass).items():
            per_layer[name].append(values.mean(dim=0))
        # patch×patch block, rows renormalised inside entropy(); mean over the patch rows
        p2p = entropy(probs[..., 1:, 1:], config.entropy_unit).mean(dim=-1)
        per_layer["p2p_entropy"].append(p2p.mean(dim=0))
        per_layer["head_map"].append(cls_rows.mean(dim=0))
    stats = {name: torch.stack(values) for name, values in per_layer.items()}
    rolled = cls_patch_distribution(rollout(layer_probs, config.rollout_alpha))  # (B, P)
    for name, values in distribution_stats(rolled, config.entropy_unit, config.erf_mass).items():
        stats[f"rollout_{name}"] = values.mean(dim=0)
    return stats


def summarise_attention(batches: list[dict[str, torch.Tensor]], counts: list[int],
                        config: AttentionConfig) -> dict[str, torch.Tensor]:
    """Combine per-batch statistics over the probe with the configured aggregation."""
    weights = torch.tensor(counts)
    summary = {
        name: aggregate_batches(torch.stack([b[name] for b in batches]).cpu(), weights, config.aggregation)
        for name in batches[0]
        if name != "head_map"
    }
    maps = torch.stack([b["head_map"] for b in batches]).cpu()  # (batches, L, H, P)
    if config.aggregation == "paper":
        summary["head_diversity"] = head_diversity(maps).mean(dim=0)  # diversity of each batch's maps
    else:
        summary["head_diversity"] = head_diversity(aggregate_batches(maps, weights, "exact"))
    return summary


def model_attention_stats(model: CLIPClassifier, probe: ImageSplit, config: AttentionConfig) -> dict[str, torch.Tensor]:
    """Attention statistics of one model on the probe (see :func:`batch_attention_stats`)."""
    batches, counts = [], []
    device = resolve_device(config.device)
    with evaluating(model, device), capture_attention(model.clip) as maps:
        for inputs in probe_batches(model, probe, config.batch_size, device):
            model.clip.encode_image(inputs)
            # consume this batch's maps now so memory does not grow with the probe
            batches.append(batch_attention_stats([layer.pop() for layer in maps], config))
            counts.append(inputs.shape[0])
    return summarise_attention(batches, counts, config)


def attention_rows(summary: dict[str, torch.Tensor], state: str, config: AttentionConfig) -> pd.DataFrame:
    """Long-format rows of one model state; head -1 is the mean over heads."""
    import pandas as pd

    rows = []
    per_head = {"entropy": "entropy", "erf": config.erf_name, "gini": "gini", "p2p_entropy": "p2p_entropy"}
    for key, metric in per_head.items():
        values = summary[key]  # (L, H)
        for layer, layer_values in enumerate(values.tolist()):
            rows += [(layer, head, metric, state, value) for head, value in enumerate(layer_values)]
            rows.append((layer, WHOLE, metric, state, sum(layer_values) / len(layer_values)))
    diversity = summary["head_diversity"].tolist()
    rows += [(layer, WHOLE, "head_diversity", state, value) for layer, value in enumerate(diversity)]
    rollouts = (("rollout_entropy", "rollout_entropy"), ("rollout_erf", f"rollout_{config.erf_name}"),
                ("rollout_gini", "rollout_gini"))
    for key, metric in rollouts:
        rows.append((WHOLE, WHOLE, metric, state, float(summary[key])))
    return pd.DataFrame(rows, columns=ATTENTION_COLUMNS)


SENSITIVITY_COLUMNS = ["probe_seed", "state", "metric", "value"]
SENSITIVITY_METRICS = ("entropy", "rollout_entropy")


# ---------------------------------------------------------------- CKA


def token_features(states: torch.Tensor, token: str) -> torch.Tensor:
    """``(batch, tokens, width)`` hidden states → ``(batch, width)``: the CLS token or the patch mean."""
    if token == "cls":
        return states[:, 0]
    if token == "patch_mean":
        return states[:, 1:].mean(dim=1)
    raise ValueError(f"cka token {token!r} is unknown: use one of {CKA_TOKENS}")
