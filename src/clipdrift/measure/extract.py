"""One pass per checkpoint, against a pretrained reference computed once per probe.

A study measures every run's drift against the same pretrained model on the same probe images,
so the pretrained side is computed once per (backbone, dataset, settings): its attention
statistics, the hidden states CKA compares with, and its statistics on the probe subsets of the
sensitivity analysis — a :class:`ProbeReference`. Each checkpoint then needs one forward pass
over the probe that captures its attention maps and hidden states together (:func:`extract`),
plus one attention pass per sensitivity subset.

The tables (docs/artifacts.md) equal those of running the fine-tuned and the pretrained model
over the probe separately, up to float rounding (the test suite's two-pass reference,
tests/reference_drift.py, checks it).
No file I/O: :func:`reference_tensors` / :func:`reference_from_tensors` convert a reference to
and from tensors + metadata for :mod:`clipdrift.core.io`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch

from clipdrift.data.split import ImageSplit
from clipdrift.measure.cka import CKAAccumulator
from clipdrift.measure.drift import (
    CKA_COLUMNS,
    SENSITIVITY_COLUMNS,
    STATES,
    attention_rows,
    batch_attention_stats,
    model_attention_stats,
    summarise_attention,
    token_features,
)
from clipdrift.measure.runtime import evaluating, probe_batches, resolve_device
from clipdrift.measure.settings import AttentionConfig, CKAConfig
from clipdrift.measure.tables import typed
from clipdrift.model.backbones import CLIPClassifier, capture_attention, capture_hidden_states

if TYPE_CHECKING:  # pandas loads when a table is built: the probe reference job builds none (~0.9 s)
    import pandas as pd

REFERENCE_KIND = "clipdrift-probe-reference"


class ReferenceMismatchError(ValueError):
    """A reference computed with other settings, or on other images, than the extraction's."""


@dataclass
class ProbeReference:
    """The pretrained model's side of every drift comparison on one probe.

    ``attention``: its attention summary (:func:`summarise_attention`); ``features``:
    ``(layer, token)`` → ``(n_images, width)`` CKA features in probe order; ``sensitivity``:
    probe seed → statistic → value; ``settings``: what it was computed with (checked on use).
    """

    attention: dict[str, torch.Tensor]
    features: dict[tuple[int, str], torch.Tensor]
    sensitivity: dict[int, dict[str, float]]
    settings: dict


def reference_settings(attention: AttentionConfig, cka: CKAConfig, sensitivity_seeds=None) -> dict:
    """What a reference depends on, besides the backbone and the images (device left out)."""
    return {"attention": {k: v for k, v in asdict(attention).items() if k != "device"},
            "cka_tokens": list(cka.tokens), "cka_batch_size": cka.batch_size,
            "sensitivity_seeds": sorted(int(s) for s in sensitivity_seeds or ())}


def model_captures(model: CLIPClassifier, probe: ImageSplit, attention: AttentionConfig,
                   tokens: tuple[str, ...]) -> tuple[dict[str, torch.Tensor], dict[tuple[int, str], torch.Tensor]]:
    """One forward pass over the probe capturing both attention maps and hidden states:
    the attention summary and the ``(layer, token)`` features (CPU, probe order)."""
    device = resolve_device(attention.device)
    batches, counts = [], []
    features: dict[tuple[int, str], list[torch.Tensor]] = {}
    with evaluating(model, device), capture_attention(model.clip) as maps, capture_hidden_states(model.clip) as states:
        for inputs in probe_batches(model, probe, attention.batch_size, device):
            model.clip.encode_image(inputs)
            # consume this batch's captures now so memory holds only the features
            batches.append(batch_attention_stats([layer.pop() for layer in maps], attention))
            counts.append(inputs.shape[0])
            for layer, captured in enumerate(states):
                hidden = captured.pop()
                for token in tokens:
                    features.setdefault((layer, token), []).append(token_features(hidden, token).float().cpu())
    return summarise_attention(batches, counts, attention), {key: torch.cat(parts) for key, parts in features.items()}


def _sensitivity_values(model: CLIPClassifier, probes: dict[int, ImageSplit], config: AttentionConfig) -> dict[int, dict]:
    values = {}
    for seed, probe in sorted(probes.items()):
        summary = model_attention_stats(model, probe, config)
        values[int(seed)] = {"entropy": float(summary["entropy"].mean()),
                             "rollout_entropy": float(summary["rollout_entropy"])}
    return values


def probe_reference(pretrained: CLIPClassifier, probe: ImageSplit, attention: AttentionConfig, cka: CKAConfig,
                    sensitivity_probes: dict[int, ImageSplit] | None = None) -> ProbeReference:
    """The pretrained model's captures on ``probe`` (and its sensitivity subsets)."""
    summary, features = model_captures(pretrained, probe, attention, cka.tokens)
    sensitivity = _sensitivity_values(pretrained, sensitivity_probes or {}, attention)
    return ProbeReference(summary, features, sensitivity, reference_settings(attention, cka, sensitivity_probes or {}))


def _check(reference: ProbeReference, probe: ImageSplit, attention: AttentionConfig, cka: CKAConfig, seeds) -> None:
    expected = reference_settings(attention, cka, seeds)
    if reference.settings != expected:
        raise ReferenceMismatchError(
            f"the pretrained reference was computed with {reference.settings}, the extraction asks for {expected}: "
            "recompute the reference with the extraction's settings"
        )
    n = next(iter(reference.features.values())).shape[0] if reference.features else len(probe)
    if n != len(probe):
        raise ReferenceMismatchError(f"the pretrained reference holds {n} probe images, the probe has {len(probe)}: "
                                     "recompute the reference from this probe")


def _cka_rows(reference: ProbeReference, tuned: dict[tuple[int, str], torch.Tensor], cka: CKAConfig,
              batch_size: int) -> pd.DataFrame:
    import pandas as pd

    if len(reference.features) != len(tuned):
        raise ReferenceMismatchError(
            f"the pretrained image tower has {len(reference.features) // len(cka.tokens) - 1} blocks and the "
            f"fine-tuned one {len(tuned) // len(cka.tokens) - 1}: compare a fine-tuned model with its own backbone"
        )
    rows = []
    for (layer, token), base in sorted(reference.features.items()):
        accumulator = CKAAccumulator()
        for start in range(0, base.shape[0], batch_size):  # the batches cka_table streams
            accumulator.update(base[start:start + batch_size], tuned[(layer, token)][start:start + batch_size])
        rows += [(layer, token, variant, accumulator.value(variant), accumulator.defined) for variant in cka.variants]
    return typed(pd.DataFrame(rows, columns=CKA_COLUMNS), {"layer": "int64", "value": "float64", "defined": "bool"})


def extract(finetuned: CLIPClassifier, reference: ProbeReference, probe: ImageSplit, attention: AttentionConfig,
            cka: CKAConfig, sensitivity_probes: dict[int, ImageSplit] | None = None) -> dict[str, pd.DataFrame]:
    """The drift tables of one checkpoint: ``attention``, ``cka`` and (with sensitivity probes)
    ``sensitivity``, each against ``reference`` (the pretrained model on the same images)."""
    import pandas as pd

    _check(reference, probe, attention, cka, sensitivity_probes or {})
    summary, features = model_captures(finetuned, probe, attention, cka.tokens)
    frames = [attention_rows(s, state, attention) for s, state in zip((reference.attention, summary), STATES)]
    tables = {
        "attention": typed(pd.concat(frames, ignore_index=True), {"layer": "int64", "head": "int64", "value": "float64"}),
        "cka": _cka_rows(reference, features, cka, cka.batch_size),
    }
    if sensitivity_probes:
        tuned = _sensitivity_values(finetuned, sensitivity_probes, attention)
        rows = [(seed, state, metric, value)
                for seed in sorted(tuned)
                for state, values in zip(STATES, (reference.sensitivity[seed], tuned[seed]))
                for metric, value in values.items()]
        tables["sensitivity"] = typed(pd.DataFrame(rows, columns=SENSITIVITY_COLUMNS),
                                       {"probe_seed": "int64", "value": "float64"})
    return tables


# ------------------------------------------------------------------------- to and from tensors


def reference_tensors(reference: ProbeReference) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and JSON metadata holding ``reference`` (for :func:`clipdrift.core.io.write_safetensors`)."""
    tensors = {f"attention/{name}": value.contiguous() for name, value in reference.attention.items()}
    tensors.update({f"features/{layer}/{token}": value.contiguous() for (layer, token), value in reference.features.items()})
    tensors.update({f"sensitivity/{seed}/{metric}": torch.tensor(value, dtype=torch.float64)
                    for seed, values in reference.sensitivity.items() for metric, value in values.items()})
    return tensors, {"kind": REFERENCE_KIND, "settings": reference.settings}


def reference_from_tensors(tensors: dict[str, torch.Tensor], metadata: dict) -> ProbeReference:
    """The :class:`ProbeReference` that :func:`reference_tensors` wrote."""
    if metadata.get("kind") != REFERENCE_KIND:
        raise ReferenceMismatchError(f"not a probe reference (kind {metadata.get('kind')!r}): rerun the reference rule")
    attention, features, sensitivity = {}, {}, {}
    for key, value in tensors.items():
        group, _, rest = key.partition("/")
        if group == "attention":
            attention[rest] = value
        elif group == "features":
            layer, token = rest.split("/")
            features[(int(layer), token)] = value
        elif group == "sensitivity":
            seed, metric = rest.split("/")
            sensitivity.setdefault(int(seed), {})[metric] = float(value)
    return ProbeReference(attention, features, sensitivity, metadata["settings"])
