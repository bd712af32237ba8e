"""Reference drift tables computed the plain way: the fine-tuned and the pretrained model each
run over the probe on their own (two passes, no stored reference). The workflow's one-pass
extraction (clipdrift.measure.extract) is tested equal to these; benchmarks use them as the
straightforward baseline."""

from __future__ import annotations

import pandas as pd
import torch

from clipdrift.data.split import ImageSplit
from clipdrift.measure.cka import CKAAccumulator
from clipdrift.measure.drift import (
    ATTENTION_COLUMNS,
    CKA_COLUMNS,
    SENSITIVITY_COLUMNS,
    STATES,
    WHOLE,
    attention_rows,
    model_attention_stats,
    token_features,
)
from clipdrift.measure.runtime import check_images, evaluating, model_input, resolve_device
from clipdrift.measure.settings import AttentionConfig, CKAConfig
from clipdrift.measure.tables import typed
from clipdrift.model.backbones import CLIPClassifier, capture_hidden_states


def attention_table(finetuned: CLIPClassifier, pretrained: CLIPClassifier, probe: ImageSplit,
                    config: AttentionConfig | None = None) -> pd.DataFrame:
    """Attention statistics of the fine-tuned model (``final``) and its pretrained ``baseline``.

    Columns ``layer, head, metric, state, value`` as in ``docs/artifacts.md``.
    """
    config = config or AttentionConfig()
    frames = [attention_rows(model_attention_stats(model, probe, config), state, config)
              for state, model in zip(STATES, (pretrained, finetuned))]
    return typed(pd.concat(frames, ignore_index=True), {"layer": "int64", "head": "int64", "value": "float64"})


def probe_sensitivity_table(finetuned: CLIPClassifier, pretrained: CLIPClassifier, probes: dict[int, ImageSplit],
                            config: AttentionConfig | None = None) -> pd.DataFrame:
    """The statistics the drift rests on, measured on several probe subsets instead of one.

    ``probes``: probe seed → probe subset (same size, same source split). Per seed and model
    state (``baseline`` = pretrained, ``final`` = fine-tuned): the all-layer mean of the
    head-mean CLS-attention entropy (the quantity ``drift_entropy_pct`` is the drift of) and the
    rollout entropy. Columns ``probe_seed, state, metric, value``.
    """
    config = config or AttentionConfig()
    rows = []
    for seed, probe in sorted(probes.items()):
        for state, model in zip(STATES, (pretrained, finetuned)):
            summary = model_attention_stats(model, probe, config)
            # (layers, heads): the mean over heads then layers is the mean of the whole matrix
            rows.append((seed, state, "entropy", float(summary["entropy"].mean())))
            rows.append((seed, state, "rollout_entropy", float(summary["rollout_entropy"])))
    return typed(pd.DataFrame(rows, columns=SENSITIVITY_COLUMNS), {"probe_seed": "int64", "value": "float64"})


def drift_summary(attention_df: pd.DataFrame) -> pd.DataFrame:
    """Drift in % of baseline: ``100·(final − baseline)/baseline`` of the head-mean rows.

    One row per metric and layer; ``layer = -1`` is the all-layer mean (mean over layers first,
    then drift) for per-layer metrics and the whole-network value for rollout metrics. Columns
    beyond the attention table's (``dataset``, ``method``, … added by the workflow) are kept as
    grouping keys, so the summary of many runs is one call. Drift is NaN where the baseline is 0.
    """
    keys = [c for c in attention_df.columns if c not in ATTENTION_COLUMNS]
    head_mean = attention_df[attention_df["head"] == WHOLE]
    index = keys + ["metric", "layer", "state"]
    if head_mean.duplicated(index).any():
        raise ValueError(f"the attention table has duplicate rows for {index}: concatenate runs with their keys")
    # unstack keeps NaN values (one head: no diversity) and adds no combinations that never existed
    wide = head_mean.set_index(index)["value"].unstack("state")
    missing = set(STATES) - set(wide.columns)
    if missing:
        raise ValueError(f"drift needs both model states, the table lacks {sorted(missing)}")
    wide = wide[list(STATES)].reset_index()
    layered = wide[wide["layer"] != WHOLE]
    all_layers = layered.groupby(keys + ["metric"], as_index=False)[list(STATES)].mean().assign(layer=WHOLE)
    out = pd.concat([wide, all_layers], ignore_index=True)
    out["drift_pct"] = 100.0 * (out["final"] - out["baseline"]) / out["baseline"].where(out["baseline"] != 0)
    out = out.sort_values(keys + ["metric", "layer"], kind="stable").reset_index(drop=True)
    out.columns.name = None
    return out[keys + ["metric", "layer", "baseline", "final", "drift_pct"]]


def hidden_states(model: CLIPClassifier, inputs: torch.Tensor) -> list[torch.Tensor]:
    """Token states ``(batch, tokens, width)`` of the embedding output and of every block."""
    # hooks live for one forward only, so the same model may serve as both sides of a comparison
    with capture_hidden_states(model.clip) as states:
        model.clip.encode_image(inputs)
    return [layer[0] for layer in states]


def cka_table(finetuned: CLIPClassifier, pretrained: CLIPClassifier, probe: ImageSplit,
              config: CKAConfig | None = None) -> pd.DataFrame:
    """CKA per layer between pretrained and fine-tuned hidden states on the probe.

    Layer 0 is the embedding output (after ``ln_pre``), then one row per block. Columns
    ``layer, token, variant, value, defined``; ``value`` is NaN where ``defined`` is False (a
    representation constant over the images, e.g. the embedding layer's CLS token), so a mean
    over layers with pandas skips it instead of averaging in a meaningless number.
    """
    config = config or CKAConfig()
    check_images(pretrained, probe)
    device = resolve_device(config.device)
    accumulators: dict[tuple[int, str], CKAAccumulator] = {}
    with evaluating(pretrained, device), evaluating(finetuned, device):
        for start in range(0, len(probe), config.batch_size):
            images = probe.images[start:start + config.batch_size].to(device)
            base_states = hidden_states(pretrained, model_input(pretrained, images))
            tuned_states = hidden_states(finetuned, model_input(finetuned, images))
            if len(base_states) != len(tuned_states):
                raise ValueError(
                    f"the pretrained image tower has {len(base_states) - 1} blocks and the fine-tuned one "
                    f"{len(tuned_states) - 1}: compare a fine-tuned model with its own backbone"
                )
            for layer, (base, tuned) in enumerate(zip(base_states, tuned_states)):
                for token in config.tokens:
                    accumulator = accumulators.setdefault((layer, token), CKAAccumulator())
                    accumulator.update(token_features(base, token), token_features(tuned, token))
    rows = [(layer, token, variant, acc.value(variant), acc.defined)
            for (layer, token), acc in sorted(accumulators.items()) for variant in config.variants]
    return typed(pd.DataFrame(rows, columns=CKA_COLUMNS), {"layer": "int64", "value": "float64", "defined": "bool"})


def cka_layer_mean(cka_df: pd.DataFrame) -> pd.DataFrame:
    """Mean CKA over the layers where it is defined, per token and variant (and extra keys)."""
    keys = [c for c in cka_df.columns if c not in CKA_COLUMNS] + ["token", "variant"]
    defined = cka_df[cka_df["defined"]]
    return defined.groupby(keys, as_index=False).agg(value=("value", "mean"), n_layers=("layer", "size"))
