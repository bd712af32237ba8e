"""Drift metrics: attention statistics, rollout, patch-to-patch entropy and CKA.

- :mod:`clipdrift.metrics.attention`: pure functions on attention probabilities (entropy, ERF,
  Gini, head diversity, rollout) and the ``exact`` / ``paper`` aggregation over batches.
- :mod:`clipdrift.metrics.cka`: streamed linear and debiased CKA in float64.
- :mod:`clipdrift.metrics.tables`: one call per artifact, running a fine-tuned model and its
  pretrained baseline over a probe set into the tidy tables of ``docs/artifacts.md``.

No file I/O here: the workflow's scripts write the returned tables.
"""

from clipdrift.metrics.attention import (
    AGGREGATIONS,
    aggregate_batches,
    cls_patch_distribution,
    effective_receptive_field,
    entropy,
    gini,
    head_diversity,
    patch_patch_distribution,
    rollout,
)
from clipdrift.metrics.cka import CKA_VARIANTS, CKAAccumulator, debiased_cka, linear_cka
from clipdrift.metrics.tables import (
    CKA_TOKENS,
    AttentionConfig,
    CKAConfig,
    attention_table,
    cka_layer_mean,
    cka_table,
    drift_summary,
    model_attention_stats,
    probe_sensitivity_table,
)

__all__ = [
    "AGGREGATIONS",
    "CKA_TOKENS",
    "CKA_VARIANTS",
    "AttentionConfig",
    "CKAAccumulator",
    "CKAConfig",
    "aggregate_batches",
    "attention_table",
    "cka_layer_mean",
    "cka_table",
    "cls_patch_distribution",
    "debiased_cka",
    "drift_summary",
    "effective_receptive_field",
    "entropy",
    "gini",
    "head_diversity",
    "linear_cka",
    "model_attention_stats",
    "patch_patch_distribution",
    "probe_sensitivity_table",
    "rollout",
]
