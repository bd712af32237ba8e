"""Zero-shot classification that sees the fine-tuned image tower, adapters included.

Text side: class names × prompt templates through the frozen pretrained text tower
(open_clip's ``build_zero_shot_classifier``: per class, the normalised mean of the normalised
template embeddings). Image side: :meth:`CLIPClassifier.image_features`, i.e. the fine-tuned
image tower with its LoRA adapters active and its own fine-tuned visual projection. Prediction
is the argmax cosine similarity.

Which class names and templates a task uses is decided in :mod:`clipdrift.data.classnames`
(CLIP_benchmark's per-dataset sets, the published study's, or the study's own).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from clipdrift.core.errors import UserFacingError
from clipdrift.data.split import ImageSplit
from clipdrift.measure.runtime import check_images, evaluating, model_input, resolve_device
from clipdrift.model.backbones import CLIPClassifier
from clipdrift.model.openclip import open_clip

Template = str | Callable[[str], str]


def _as_callables(templates: Sequence[Template]) -> list[Callable[[str], str]]:
    # open_clip decides "format or call" from the first template only, and formats positionally:
    # check every string here and hand it callables, so mixed lists work too.
    if isinstance(templates, str) or len(templates) == 0:
        raise ValueError("zero-shot templates must be a non-empty list, e.g. ['a photo of a {}']")
    checked = []
    for template in templates:
        if callable(template):
            checked.append(template)
            continue
        try:
            filled = template.format("\0")
        except (KeyError, IndexError, ValueError) as error:
            raise ValueError(
                f"zero-shot template {template!r} cannot be filled positionally ({error!r}): write the "
                "class-name slot as '{}' (named fields like '{c}' are not supported)"
            ) from error
        if filled == template:
            raise ValueError(f"zero-shot template {template!r} has no '{{}}' slot for the class name")
        checked.append(template.format)
    return checked


def text_classifier(clip: torch.nn.Module, tokenizer, class_names: Sequence[str], templates: Sequence[Template],
                    amp: bool = False) -> torch.Tensor:
    """Zero-shot weights ``(embed_dim, n_classes)``, float32, unit columns, on the CLIP's device.

    ``tokenizer``: ``open_clip.get_tokenizer(<model name>)``. ``templates``: strings with one
    positional ``{}`` slot, or callables taking the class name. ``amp``: encode under mixed
    precision on CUDA (fp32 otherwise, and always on the CPU).
    """
    if len(class_names) == 0:
        raise ValueError("zero-shot needs at least one class name")
    device = next(clip.parameters()).device
    was_training = clip.training
    clip.eval()
    try:
        with _autocast(device, amp):
            weights = open_clip.build_zero_shot_classifier(
                clip, tokenizer, list(class_names), _as_callables(templates), device=device, use_tqdm=False
            )
    finally:
        clip.train(was_training)
    _require_finite(weights, "the zero-shot text classifier")
    return weights.float()


class NonFiniteFeaturesError(UserFacingError, ArithmeticError):
    """A model produced NaN or infinite features: scoring them would give a plausible-looking
    near-chance accuracy that is really an overflow."""


def evaluate(model: CLIPClassifier, classifier_weights: torch.Tensor, split: ImageSplit, batch_size: int = 256,
             device: str | torch.device | None = None, amp: bool = False, what: str = "the model") -> dict:
    """Top-1, top-5 and balanced accuracy (fractions) of zero-shot classification on ``split``.

    Runs on CUDA when available (or ``device``), in float32 unless ``amp`` (mixed precision on
    CUDA); eval mode, no gradients, images in order. The model's mode and device are restored.
    Non-finite image features are refused (:class:`NonFiniteFeaturesError` naming ``what``).
    """
    _check_weights(model, classifier_weights, split)
    device = resolve_device(device)
    check_images(model, split, what="zero-shot")
    weights = classifier_weights.to(device=device, dtype=torch.float32)
    k = min(5, weights.shape[1])
    ranked = []
    with evaluating(model, device):
        for start in range(0, len(split), batch_size):
            images = split.images[start:start + batch_size].to(device)
            with _autocast(device, amp):
                features = model.image_features(model_input(model, images))
            _require_finite(features, f"{what} (zero-shot images {start}..{start + len(images) - 1})")
            scores = F.normalize(features.float(), dim=-1) @ weights
            ranked.append(scores.topk(k, dim=-1).indices.cpu())
    return classification_scores(torch.cat(ranked), split.labels)


def _require_finite(features: torch.Tensor, what: str) -> None:
    if not bool(torch.isfinite(features).all()):
        raise NonFiniteFeaturesError(
            f"{what} gave non-finite features (NaN or inf): the weights overflowed or diverged, so a "
            "zero-shot score would be meaningless. Check the run's history (status, loss) and score in fp32 "
            "(zeroshot.amp: false)."
        )


def classification_scores(ranked: torch.Tensor, labels: torch.Tensor) -> dict:
    """Scores from the top-k predicted classes ``(n, k)`` (best first) and the true labels ``(n,)``.

    Balanced accuracy is the mean per-class recall over the classes present in ``labels``.
    """
    labels = labels.to(ranked.device)
    top1_hit = ranked[:, 0] == labels
    top5_hit = (ranked[:, :5] == labels[:, None]).any(dim=1)
    present = labels.unique()
    recalls = torch.stack([top1_hit[labels == c].double().mean() for c in present])
    return {
        "top1": float(top1_hit.double().mean()),
        "top5": float(top5_hit.double().mean()),
        "balanced_acc": float(recalls.mean()),
        "n_images": int(labels.numel()),
    }


def _check_weights(model: CLIPClassifier, weights: torch.Tensor, split: ImageSplit) -> None:
    embed = model.clip.visual.output_dim
    if weights.ndim != 2 or weights.shape[0] != embed:
        raise ValueError(
            f"zero-shot weights have shape {tuple(weights.shape)}, expected ({embed}, n_classes): "
            "build them with text_classifier from the same backbone"
        )
    if len(split) and int(split.labels.max()) >= weights.shape[1]:
        raise ValueError(
            f"the zero-shot split has label {int(split.labels.max())} but the classifier has "
            f"{weights.shape[1]} classes: build it from the split's class_names"
        )


def _autocast(device: torch.device, amp: bool):
    # mixed precision on request and on the GPU only: the CPU path stays float32, bitwise repeatable
    if amp and device.type == "cuda":
        return torch.autocast("cuda")
    return contextlib.nullcontext()


# ---------------------------------------------------------------------------------------------
# The text classifier, computed once per study and stored
# ---------------------------------------------------------------------------------------------

CLASSIFIER_KIND = "clipdrift-zeroshot-classifier"


class ClassifierMismatchError(UserFacingError, ValueError):
    """A stored text classifier was built for other class names or templates."""


@dataclass(frozen=True)
class TextClassifier:
    """Zero-shot weights ``(embed_dim, n_classes)`` and what they were built from.

    The text tower is frozen in every method (:func:`clipdrift.model.adapters.require_frozen_text_tower`),
    so one classifier per held-out task, built from the pretrained model, serves every run of a study.
    """

    weights: torch.Tensor
    task: str
    templates: tuple[str, ...]
    class_names: tuple[str, ...]
    style: str

    def tensors(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Tensors and metadata for :func:`clipdrift.core.io.write_safetensors`."""
        metadata = {"kind": CLASSIFIER_KIND, "task": self.task, "templates": list(self.templates),
                    "class_names": list(self.class_names), "style": self.style}
        return {"weights": self.weights.detach().float().cpu().contiguous()}, metadata

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], metadata: dict) -> TextClassifier:
        if metadata.get("kind") != CLASSIFIER_KIND or not isinstance(metadata.get("templates"), list):
            raise ClassifierMismatchError(f"not a zero-shot classifier of this version (kind {metadata.get('kind')!r}): "
                                          "rerun the zeroshot_classifier rule")
        return cls(tensors["weights"], metadata["task"], tuple(metadata["templates"]), tuple(metadata["class_names"]),
                   metadata["style"])

    def require(self, task: str, templates: Sequence[str], class_names: Sequence[str]) -> torch.Tensor:
        """The weights, after checking they were built for this task, these templates and names."""
        wanted = (task, tuple(templates), tuple(class_names))
        if (self.task, self.templates, self.class_names) != wanted:
            raise ClassifierMismatchError(
                f"the stored zero-shot classifier is for task {self.task!r}, {len(self.templates)} templates and "
                f"{len(self.class_names)} class names, but scoring asks for {task!r}, {len(templates)} templates and "
                f"{len(class_names)} names (or other words): rerun the zeroshot_classifier rule"
            )
        return self.weights


def build_text_classifier(clip: torch.nn.Module, tokenizer, task: str, settings: dict,
                          names: Sequence[str]) -> TextClassifier:
    """The :class:`TextClassifier` of ``names`` with the templates of ``settings`` (a task's zero-shot settings)."""
    templates = tuple(settings["template_texts"])
    weights = text_classifier(clip, tokenizer, names, templates, amp=settings["amp"])
    return TextClassifier(weights, task, templates, tuple(names), settings["class_names"])


def score_record(run: dict, task: str, settings: dict, checkpoint: str | None, scores: dict) -> dict:
    """One task's scores in ``zeroshot/<run>.json`` (docs/artifacts.md)."""
    return {**run, "task": task, "templates": settings["templates"], "n_templates": len(settings["template_texts"]),
            "class_names": settings["class_names"], "checkpoint": checkpoint, **scores}


def pretrained_score(record: dict, task: str, settings: dict) -> float:
    """The pretrained model's top-1 from its score record (``zeroshot/pretrained/<task>.json``),
    checked to be a score of ``task`` with these templates and class names."""
    expected = {"task": task, "templates": settings["templates"], "n_templates": len(settings["template_texts"]),
                "class_names": settings["class_names"]}
    found = {key: record.get(key) for key in expected}
    if found != expected or record.get("method") != "pretrained":
        raise UserFacingError(f"the pretrained zero-shot score is of {found}, not of {expected}: "
                              "rerun the zeroshot_classifier job (snakemake --forcerun zeroshot_classifier)")
    return float(record["top1"])
