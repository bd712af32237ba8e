"""Weight interpolation between the pretrained and a fine-tuned classifier (WiSE-FT style).

For ``alpha`` in [0, 1] the image tower and visual projection are set to

    theta(alpha) = (1 - alpha) * theta_pretrained + alpha * theta_finetuned

while the head stays the run's own (fine-tuned) head and the text tower is not touched (it is
the frozen pretrained one in every method).

- **Full FT** (any model without adapters, whose image tower holds its own weights): every
  floating-point parameter and buffer of the image tower, the projection included, is
  interpolated. Integer/bool buffers keep the fine-tuned model's values.
- **LoRA** (peft adapters on the image tower): the base weights are the pretrained ones, so
  ``theta(alpha) = W + alpha * dW`` with ``dW = scaling * B @ A``. The adapters are scaled
  through peft's per-adapter ``scaling`` dict on each ``LoraLayer`` (``scaling[adapter] *=
  alpha``; peft's forward adds ``lora_B(lora_A(x)) * scaling[adapter]``), so the base is never
  copied. The projection, trained in LoRA too, is interpolated as in Full FT. Every other
  image-tower tensor must equal the pretrained one (it is the base the run was trained on).
- **Every other adapter** (DoRA, PiSSA / OLoRA starts, VeRA, (IA)³, LoHa, LoKr, OFT, BOFT, any
  peft tuner): in merged-weight space, ``theta(alpha) = W0 + alpha * (W_merged - W0)`` for each
  adapted linear's weight and bias, ``W_merged`` by peft's own ``merge`` (on a copy); inside the
  block the linear's base layer, holding ``theta(alpha)``, computes in the adapted layer's place.
  For plain LoRA this is what scaling does (a test keeps the two equal); for the others it is not
  their own scaling, which is why every method is interpolated in weight space.

API: :func:`interpolated` is a context manager that writes ``theta(alpha)`` **into the
fine-tuned model in place**, yields it, and on exit (normal or exception) restores every value it
changed, bit for bit::

    pretrained = build_classifier(run_backbone_spec, n_classes, seed=0)  # no apply_method
    for alpha in (0.0, 0.25, 0.5, 0.75, 1.0):
        with interpolated(finetuned, pretrained, alpha) as model:
            evaluate(model)

Memory: no model is copied. To restore, the values it overwrites are kept (on the fine-tuned
model's device): for Full FT that is one copy of the image tower's floating tensors (ViT-B/32:
~88M of the model's ~150M parameters; the text tower and head are never copied); for LoRA only
the projection (768 x 512) and the ``scaling`` floats. Beyond that, one tensor at a time is
moved/cast as a temporary. The pretrained model is only read and may live on another device
(e.g. the CPU while the fine-tuned model is on the GPU); its tensors are moved one at a time.
At ``alpha = 1`` nothing is written for Full FT.

Inside the block: evaluate only. Updates made there are discarded on exit, and for LoRA the
model's ``state_dict`` does not carry ``alpha`` (``scaling`` is not a tensor), so a checkpoint
written inside the block would not hold the interpolated model.

Dtypes are kept: the mix is computed in at least float32 and written back in the fine-tuned
tensor's dtype. The endpoints are exact: ``alpha = 1`` leaves the fine-tuned values, ``alpha =
0`` copies the pretrained values (LoRA: ``scaling`` 0, so the adapters add exact zeros).

No file I/O.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from clipdrift.core.errors import UserFacingError
from clipdrift.model.backbones import CLIPClassifier
from clipdrift.model.methods import is_adapter_parameter
from clipdrift.model.weights import merged_linear

PROJECTION = "proj"  # open_clip VisionTransformer's projection, relative to model.clip.visual
_BASE_LAYER = ".base_layer."  # peft wraps an adapted linear's own weights under this name

_PRETRAINED_FIX = (
    "Pass the plain pretrained classifier of the run's backbone: "
    "build_classifier(<the run's BackboneSpec: name, pretrained, init_seed>, n_classes, seed), "
    "without apply_method(..., MethodConfig('lora'))."
)


class InterpolationError(UserFacingError, ValueError):
    """An interpolation was asked for that cannot be made (alpha, or the pair of models)."""


def check_alpha(alpha) -> float:
    """``alpha`` as a float, refused unless it is a real number in [0, 1]."""
    if isinstance(alpha, bool):
        raise InterpolationError(f"alpha must be a number in [0, 1], got {alpha!r}: pass e.g. 0.5")
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        raise InterpolationError(f"alpha must be a number in [0, 1], got {alpha!r}: pass e.g. 0.5") from None
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise InterpolationError(
            f"alpha must lie in [0, 1] (0: the pretrained image tower, 1: the fine-tuned one), got {alpha!r}. "
            "Extrapolation is not supported: pick alpha in [0, 1]."
        )
    return value


@contextlib.contextmanager
def interpolated(finetuned: CLIPClassifier, pretrained: CLIPClassifier, alpha: float) -> Iterator[CLIPClassifier]:
    """Set ``finetuned``'s image tower and projection to ``theta(alpha)`` in place; yield it.

    ``pretrained`` is the plain classifier of the same backbone (no adapters; its head is
    ignored) and is only read. Everything is checked before anything is written; on exit the
    fine-tuned model is restored bit for bit. Raises :class:`InterpolationError` (a
    ``ValueError``) for ``alpha`` outside [0, 1] or a pair that does not fit.
    """
    value = check_alpha(alpha)
    plan = _plan(finetuned, pretrained)
    undo = _Undo()
    try:
        with torch.no_grad():
            _apply(plan, value, undo)
        yield finetuned
    finally:
        with torch.no_grad():
            undo.restore()


# ---------------------------------------------------------------------------------------------
# Checking the pair
# ---------------------------------------------------------------------------------------------

@dataclass
class _Plan:
    # (finetuned tensor, pretrained tensor) pairs to interpolate
    pairs: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    # peft LoraLayers whose scaling alpha multiplies
    lora_layers: list[nn.Module] = field(default_factory=list)
    # adapted linears interpolated in merged-weight space: (parent, attribute, adapter layer,
    # [(base tensor, pretrained tensor, merged tensor)]); the base layer computes in its place
    merged: list[tuple[nn.Module, str, nn.Module, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]] = field(
        default_factory=list)


def _plan(finetuned: CLIPClassifier, pretrained: CLIPClassifier) -> _Plan:
    for role, model in (("finetuned", finetuned), ("pretrained", pretrained)):
        if not isinstance(model, CLIPClassifier):
            raise TypeError(f"{role} must be a clipdrift CLIPClassifier, got {type(model).__name__}")
    if finetuned is pretrained:
        raise InterpolationError(f"finetuned and pretrained are the same model object. {_PRETRAINED_FIX}")
    adapters = [name for name, _ in pretrained.named_parameters() if is_adapter_parameter(name)]
    if adapters:
        raise InterpolationError(
            f"the pretrained model has adapters ({adapters[0]}, {len(adapters)} in all): it must be the "
            f"plain pretrained backbone. {_PRETRAINED_FIX}"
        )
    ft_tensors, pre_tensors = _image_tower_tensors(finetuned), _image_tower_tensors(pretrained)
    _check_geometry(ft_tensors, pre_tensors)
    layers = _adapter_layers(finetuned)
    if not layers:
        pairs = [(ft, pre_tensors[name]) for name, ft in ft_tensors.items() if ft.is_floating_point()]
        return _Plan(pairs=pairs)
    adapted = {f"{name}.{kind}" for name in layers for kind in ("weight", "bias")}
    for name, ft in ft_tensors.items():
        if name != PROJECTION and name not in adapted and not _same_values(ft, pre_tensors[name]):
            raise InterpolationError(
                f"the pretrained model is not the base this adapter run was trained on: image-tower tensor "
                f"{name!r} differs from the run's frozen copy. {_PRETRAINED_FIX}"
            )
    pairs = [(ft_tensors[PROJECTION], pre_tensors[PROJECTION])] if PROJECTION in ft_tensors else []
    scalable = all(_plain_lora(layer) for layer in layers.values()) and all(
        _same_values(ft_tensors[name], pre_tensors[name]) for name in adapted if name in ft_tensors)
    if scalable:
        return _Plan(pairs=pairs, lora_layers=list(layers.values()))
    return _Plan(pairs=pairs, merged=[_merged_entry(finetuned, name, layer, pre_tensors) for name, layer in layers.items()])


def _merged_entry(finetuned: CLIPClassifier, name: str, layer: nn.Module, pre_tensors: dict):
    """What writing ``W0 + alpha (W_merged - W0)`` into an adapted linear's base layer takes."""
    parent, _, attribute = name.rpartition(".")
    base = layer.get_base_layer()
    merged = merged_linear(layer)
    triples = [(getattr(base, kind), pre_tensors[f"{name}.{kind}"], merged[kind])
               for kind in ("weight", "bias") if getattr(base, kind, None) is not None]
    return finetuned.clip.visual.get_submodule(parent), attribute, layer, triples
def _image_tower_tensors(model: CLIPClassifier) -> dict[str, torch.Tensor]:
    """The image tower's parameters and buffers by name, adapters left out and peft's
    ``base_layer`` names mapped back to the plain module's (``q_proj.base_layer.weight`` ->
    ``q_proj.weight``)."""
    visual = model.clip.visual
    return {
        name.replace(_BASE_LAYER, "."): tensor
        for name, tensor in itertools.chain(visual.named_parameters(), visual.named_buffers())
        if not is_adapter_parameter(name)
    }


def _check_geometry(ft: dict[str, torch.Tensor], pre: dict[str, torch.Tensor]) -> None:
    missing, extra = sorted(set(pre) - set(ft)), sorted(set(ft) - set(pre))
    if missing or extra:
        raise InterpolationError(
            f"the image towers differ in structure: the fine-tuned one lacks {missing[:3]} ({len(missing)}) and "
            f"has {extra[:3]} ({len(extra)}) the pretrained one lacks. They are different backbones. "
            f"{_PRETRAINED_FIX}"
        )
    for name, tensor in ft.items():
        if tensor.shape != pre[name].shape:
            raise InterpolationError(
                f"the image towers differ in shape: {name} is {tuple(tensor.shape)} fine-tuned but "
                f"{tuple(pre[name].shape)} pretrained. They are different backbones. {_PRETRAINED_FIX}"
            )
        if tensor.is_floating_point() != pre[name].is_floating_point():
            raise InterpolationError(
                f"the image towers differ in kind: {name} is {tensor.dtype} fine-tuned but {pre[name].dtype} "
                f"pretrained. {_PRETRAINED_FIX}"
            )


def _same_values(ft: torch.Tensor, pre: torch.Tensor) -> bool:
    return torch.equal(ft, pre.to(device=ft.device, dtype=ft.dtype))


def _adapter_layers(finetuned: CLIPClassifier) -> dict[str, nn.Module]:
    """The adapted linears of the image tower (peft's layers), by their name in it."""
    if not any(is_adapter_parameter(name) for name, _ in finetuned.named_parameters()):
        return {}  # no adapters: peft (seconds to import) is not needed
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = {}
    for name, module in finetuned.named_modules():
        if not isinstance(module, BaseTunerLayer):
            continue
        if not name.startswith("clip.visual."):
            raise InterpolationError(
                f"the fine-tuned model has an adapter outside the image tower ({name}); only image-tower "
                "adapters (clipdrift's adapter methods) can be interpolated."
            )
        if module.merged:
            raise InterpolationError(
                f"the adapter of {name} is merged into its base weights, so the pretrained base is gone: unmerge it "
                "first (layer.unmerge()) or interpolate an unmerged model."
            )
        layers[name.removeprefix("clip.visual.")] = module
    return layers


def _plain_lora(layer: nn.Module) -> bool:
    """Whether a layer is plain LoRA (its change is ``scaling * B @ A``, which scaling ``alpha`` scales)."""
    from peft.tuners.lora import LoraLayer

    return (type(layer).__module__.startswith("peft.tuners.lora.") and isinstance(layer, LoraLayer)
            and not getattr(layer, "lora_variant", {}) and not any(getattr(layer, "use_dora", {}).values()))


# ---------------------------------------------------------------------------------------------
# Writing and restoring
# ---------------------------------------------------------------------------------------------

class _Undo:
    """What was overwritten, to put back in reverse order."""

    def __init__(self):
        self._tensors: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._scalings: list[tuple[dict, dict]] = []
        self._modules: list[tuple[nn.Module, str, nn.Module]] = []

    def keep_module(self, parent: nn.Module, attribute: str, module: nn.Module) -> None:
        self._modules.append((parent, attribute, module))

    def keep_tensor(self, target: torch.Tensor) -> None:
        self._tensors.append((target, target.detach().clone()))

    def keep_scaling(self, scaling: dict) -> None:
        self._scalings.append((scaling, dict(scaling)))

    def restore(self) -> None:
        for scaling, saved in reversed(self._scalings):
            scaling.clear()
            scaling.update(saved)
        for target, saved in reversed(self._tensors):
            target.copy_(saved)
        for parent, attribute, module in reversed(self._modules):
            setattr(parent, attribute, module)
        self._modules.clear()
        self._tensors.clear()
        self._scalings.clear()


def _apply(plan: _Plan, alpha: float, undo: _Undo) -> None:
    if alpha != 1.0:  # alpha = 1 is the fine-tuned model as it is
        for target, source in plan.pairs:
            undo.keep_tensor(target)
            target.copy_(_mix(target, source, alpha))
    if alpha != 1.0:
        for parent, attribute, layer, triples in plan.merged:
            undo.keep_module(parent, attribute, layer)
            setattr(parent, attribute, layer.get_base_layer())
            for target, pretrained, merged in triples:
                undo.keep_tensor(target)
                target.copy_(_mix(merged, pretrained, alpha))
    for layer in plan.lora_layers:
        undo.keep_scaling(layer.scaling)
        for adapter in list(layer.scaling):
            layer.scaling[adapter] = layer.scaling[adapter] * alpha


def _mix(finetuned: torch.Tensor, pretrained: torch.Tensor, alpha: float) -> torch.Tensor:
    """``(1 - alpha) * pretrained + alpha * finetuned`` on ``finetuned``'s device, in at least fp32."""
    source = pretrained.to(device=finetuned.device)
    if alpha == 0.0:
        return source  # exactly the pretrained values (copy_ casts to the target's dtype)
    work = torch.promote_types(finetuned.dtype, torch.float32)
    return torch.lerp(source.to(work), finetuned.to(work), alpha)
