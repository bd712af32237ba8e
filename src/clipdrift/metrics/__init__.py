"""Drift metrics: attention statistics, rollout, patch-to-patch entropy and CKA.

- :mod:`clipdrift.metrics.attention`: pure functions on attention probabilities (entropy, ERF,
  Gini, head diversity, rollout) and the ``exact`` / ``paper`` aggregation over batches.
- :mod:`clipdrift.metrics.cka`: streamed linear and debiased CKA in float64.
- :mod:`clipdrift.metrics.tables`: one call per artifact, running a fine-tuned model and its
  pretrained baseline over a probe set into the tidy tables of ``docs/artifacts.md``.
- :mod:`clipdrift.metrics.runtime`: running a classifier over uint8 image splits (device, eval
  mode, fp32, CLIP normalisation), shared with zero-shot scoring.

No file I/O here: the workflow's scripts write the returned tables. This package module
imports none of them, so a job that needs one (zero-shot scoring needs ``runtime`` only) does
not load, or depend on the code of, the others: import from the submodules.
"""
