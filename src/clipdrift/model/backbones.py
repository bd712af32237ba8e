"""Building CLIP through open_clip, explicit attention, and attention capture.

open_clip's attention blocks use ``nn.MultiheadAttention`` with a fused ``in_proj`` and call it
with ``need_weights=False``: there is no way to read attention maps, and peft cannot put LoRA on
q and v alone. :func:`convert_image_tower_attention` swaps every image-tower attention for an
:class:`ExplicitAttention` holding separate ``q_proj``/``k_proj``/``v_proj``/``out_proj``
linears, numerically equivalent, which also exposes per-head attention probabilities.

This module does no file I/O of its own: weights are read by open_clip from the reference the
caller gives (a tag resolved through the Hugging Face cache, or a local file).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from clipdrift.core.device import seeded
from clipdrift.core.errors import UserFacingError
from clipdrift.core.io import verify_safetensors, written_by_clipdrift
from clipdrift.model.openclip import open_clip

PACKAGED_CONFIG_DIR = Path(str(resources.files("clipdrift").joinpath("model_configs")))
_HF_CACHE_VARIABLES = ("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE")


class BackboneUnavailableError(UserFacingError, RuntimeError):
    """Pretrained weights could not be found or fetched."""


class BackboneConfigError(UserFacingError, ValueError):
    """The backbone name or pretrained reference is not valid."""


def register_packaged_configs() -> None:
    """Make the small model configs shipped in this package known to open_clip (idempotent)."""
    if "clipdrift-tiny" not in open_clip.list_models():
        open_clip.add_model_config(PACKAGED_CONFIG_DIR)


register_packaged_configs()


@dataclass(frozen=True)
class BackboneSpec:
    """Which CLIP to build.

    ``pretrained`` is an open_clip tag (``"openai"``), the path of a local weights file
    (``.safetensors``, ``.pt``, ``.bin``), or ``None`` for random weights (tests). Random
    weights are drawn from ``init_seed``, so every job of a study rebuilds the same "pretrained"
    model and a LoRA checkpoint on a random base still restores exactly.
    """

    name: str
    pretrained: str | None = None
    cache_dir: str | None = None
    init_seed: int = 0

    @property
    def pretrained_is_file(self) -> bool:
        ref = self.pretrained or ""
        return os.sep in ref or ref.endswith((".safetensors", ".pt", ".pth", ".bin"))


def create_clip(spec: BackboneSpec) -> nn.Module:
    """Build an open_clip CLIP model in eval mode, with a clear error when weights are missing."""
    _check_spec(spec)
    try:
        with seeded(spec.init_seed), _random_weights_expected(spec.pretrained is None):
            # random weights (tests, the tiny world's start) are drawn from init_seed
            model = open_clip.create_model(spec.name, pretrained=spec.pretrained, cache_dir=spec.cache_dir)
    except RuntimeError as error:
        if spec.pretrained is None or spec.pretrained_is_file:
            raise
        raise BackboneUnavailableError(_unavailable_message(spec, error)) from error
    return model.eval()


class _DropRandomInitWarning(logging.Filter):
    """open_clip warns "No pretrained weights loaded ... initialized randomly" on every random
    build; where a random model is what was asked for, that warning is not a problem."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


@contextlib.contextmanager
def _random_weights_expected(expected: bool) -> Iterator[None]:
    if not expected:
        yield
        return
    root, dropper = logging.getLogger(), _DropRandomInitWarning()
    root.addFilter(dropper)  # open_clip logs through the root logger
    try:
        yield
    finally:
        root.removeFilter(dropper)


def _check_spec(spec: BackboneSpec) -> None:
    if spec.name not in open_clip.list_models():
        raise BackboneConfigError(
            f"backbone.name {spec.name!r} is not an open_clip model config. Use one of "
            f"open_clip.list_models(), e.g. 'ViT-B-32-quickgelu' (the paper) or 'clipdrift-tiny'."
        )
    if spec.pretrained is None:
        return
    if spec.pretrained_is_file:
        if not Path(spec.pretrained).is_file():
            raise BackboneUnavailableError(
                f"backbone.pretrained file {spec.pretrained!r} for {spec.name} does not exist. "
                "Point backbone.pretrained at an existing weights file or use an open_clip tag."
            )
        if written_by_clipdrift(spec.pretrained):  # e.g. the synthetic world's pretrained backbone
            verify_safetensors(spec.pretrained)  # open_clip would load a damaged file without a word
        return
    tags = open_clip.list_pretrained_tags_by_model(spec.name)
    if spec.pretrained not in tags:
        raise BackboneConfigError(
            f"backbone.pretrained {spec.pretrained!r} is not a known tag for {spec.name} "
            f"(known: {tags}) nor a file path."
        )
    _check_activation_matches(spec)


def _check_activation_matches(spec: BackboneSpec) -> None:
    # open_clip only warns here, and the features come out wrong (e.g. ViT-B-32 + openai).
    wants_quick_gelu = open_clip.get_pretrained_cfg(spec.name, spec.pretrained).get("quick_gelu", False)
    has_quick_gelu = open_clip.get_model_config(spec.name).get("quick_gelu", False)
    if wants_quick_gelu and not has_quick_gelu:
        raise BackboneConfigError(
            f"{spec.name} + {spec.pretrained!r}: these weights were trained with QuickGELU but the "
            f"model config uses GELU, which gives wrong features. Use backbone.name "
            f"'{spec.name}-quickgelu'."
        )


def _unavailable_message(spec: BackboneSpec, error: Exception) -> str:
    env = ", ".join(f"{var}={os.environ.get(var, '<unset>')}" for var in _HF_CACHE_VARIABLES)
    where = spec.cache_dir or "the Hugging Face cache (~/.cache/huggingface by default)"
    return (
        f"Pretrained weights {spec.name!r} / {spec.pretrained!r} are not available: looked in "
        f"{where} [{env}]. To fix: on a machine with network access run\n"
        f"    python -c \"import open_clip; open_clip.create_model('{spec.name}', "
        f"pretrained='{spec.pretrained}')\"\n"
        "and copy the Hugging Face cache here (or set HF_HOME to it), or download the weights "
        "file and set backbone.pretrained to its path. Underlying error: "
        f"{error}"
    )


def image_preprocess_config(model: nn.Module) -> dict:
    """Input size and normalisation the image tower expects (size, mean, std, interpolation)."""
    cfg = dict(model.visual.preprocess_cfg)
    cfg["size"] = tuple(model.visual.image_size)
    return cfg


def normalisation(clip: nn.Module, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-channel mean and std the image tower expects, float32 tensors on ``device``."""
    cfg = image_preprocess_config(clip)
    return (torch.tensor(cfg["mean"], dtype=torch.float32, device=device),
            torch.tensor(cfg["std"], dtype=torch.float32, device=device))


def check_image_size(clip: nn.Module, images: torch.Tensor, what: str, error: type[Exception] = ValueError) -> None:
    """Refuse ``images`` (``(N, 3, H, W)``) of another size than the tower's, naming the fix."""
    expected = tuple(image_preprocess_config(clip)["size"])
    found = tuple(images.shape[-2:])
    if found != expected:
        raise error(f"the {what} images are {found} but the model expects {expected}: "
                    f"prepare the data with image_size={expected[0]}")


def image_tower_blocks(model: nn.Module) -> nn.ModuleList:
    """The residual attention blocks of a CLIP image tower (open_clip VisionTransformer)."""
    transformer = getattr(model.visual, "transformer", None)
    if transformer is None or not hasattr(transformer, "resblocks"):
        raise BackboneConfigError(
            f"{type(model.visual).__name__} image towers are not supported: clipdrift needs an "
            "open_clip VisionTransformer (transformer.resblocks)."
        )
    return transformer.resblocks


class ExplicitAttention(nn.Module):
    """Multi-head self-attention with separate q/k/v/out linears.

    A drop-in for open_clip's ``nn.MultiheadAttention`` call ``attn(q, k, v,
    need_weights=False, attn_mask=mask)[0]``. The normal path uses
    ``scaled_dot_product_attention``; with ``capture = True`` the forward computes the softmax
    explicitly and returns the probabilities ``(batch, heads, tokens, tokens)`` as the second
    element of its output tuple.
    """

    def __init__(self, embed_dim: int, num_heads: int, bias: bool = True, batch_first: bool = True):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim, self.num_heads, self.batch_first = embed_dim, num_heads, batch_first
        self.head_dim = embed_dim // num_heads
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.capture = False

    @classmethod
    def from_multihead(cls, mha: nn.MultiheadAttention) -> ExplicitAttention:
        if not mha._qkv_same_embed_dim:
            raise ValueError("only self-attention with equal q/k/v dimensions can be converted")
        has_bias = mha.in_proj_bias is not None
        module = cls(mha.embed_dim, mha.num_heads, bias=has_bias, batch_first=mha.batch_first)
        module.to(device=mha.in_proj_weight.device, dtype=mha.in_proj_weight.dtype)
        with torch.no_grad():
            weights = mha.in_proj_weight.chunk(3, dim=0)
            biases = mha.in_proj_bias.chunk(3, dim=0) if has_bias else (None,) * 3
            for proj, weight, bias in zip((module.q_proj, module.k_proj, module.v_proj), weights, biases):
                proj.weight.copy_(weight)
                if has_bias:
                    proj.bias.copy_(bias)
            module.out_proj.weight.copy_(mha.out_proj.weight)
            if has_bias:
                module.out_proj.bias.copy_(mha.out_proj.bias)
        return module

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        return x.view(batch, tokens, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, query, key=None, value=None, need_weights=False, attn_mask=None, **_ignored):
        key = query if key is None else key
        value = query if value is None else value
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        q = self._split_heads(self.q_proj(query))
        k = self._split_heads(self.k_proj(key))
        v = self._split_heads(self.v_proj(value))
        mask = _additive_mask(attn_mask, q.dtype)
        probs = None
        if self.capture:
            scores = (q @ k.transpose(-2, -1)) * self.head_dim**-0.5
            probs = (scores if mask is None else scores + mask).softmax(dim=-1)
            out = probs @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = self.out_proj(out.transpose(1, 2).reshape(query.shape[0], query.shape[1], self.embed_dim))
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, probs


def _additive_mask(attn_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    # nn.MultiheadAttention: bool True means "masked out"; float masks are added to the scores.
    if attn_mask is None or attn_mask.dtype != torch.bool:
        return None if attn_mask is None else attn_mask.to(dtype)
    return torch.zeros(attn_mask.shape, dtype=dtype, device=attn_mask.device).masked_fill(
        attn_mask, float("-inf")
    )


def convert_image_tower_attention(model: nn.Module) -> int:
    """Replace each image-tower ``nn.MultiheadAttention`` with :class:`ExplicitAttention`.

    Weights are copied exactly; returns the number of blocks converted (0 if already done).
    """
    converted = 0
    with torch.random.fork_rng(devices=[]):  # the new linears' throw-away init must not consume the caller's RNG
        for block in image_tower_blocks(model):
            if isinstance(block.attn, nn.MultiheadAttention):
                block.attn = ExplicitAttention.from_multihead(block.attn)
                converted += 1
    return converted


def explicit_attention_modules(model: nn.Module) -> list[ExplicitAttention]:
    """The image tower's explicit attention modules, in layer order."""
    modules = [block.attn for block in image_tower_blocks(model)]
    if not all(isinstance(m, ExplicitAttention) for m in modules):
        raise BackboneConfigError("the image tower has not been converted: call convert_image_tower_attention")
    return modules


@contextlib.contextmanager
def capture_attention(model: nn.Module) -> Iterator[list[list[torch.Tensor]]]:
    """Record per-head attention probabilities of every image-tower layer.

    Yields ``maps``: ``maps[layer]`` is a list with one ``(batch, heads, tokens, tokens)``
    tensor per forward pass made inside the ``with`` block (detached).
    """
    maps: list[list[torch.Tensor]] = [[] for _ in explicit_attention_modules(model)]
    with attention_hooks(model, lambda layer, probs: maps[layer].append(probs.detach())):
        yield maps


@contextlib.contextmanager
def attention_hooks(model: nn.Module, on_attention: Callable[[int, torch.Tensor], None]) -> Iterator[None]:
    """While inside, every image-tower layer computes its softmax explicitly and hands each
    forward's ``(batch, heads, tokens, tokens)`` probabilities to ``on_attention(layer, probs)``."""
    modules = explicit_attention_modules(model)
    handles = []
    for layer, module in enumerate(modules):
        module.capture = True
        handles.append(module.register_forward_hook(lambda _m, _i, out, layer=layer: on_attention(layer, out[1])))
    try:
        yield
    finally:
        for module, handle in zip(modules, handles):
            module.capture = False
            handle.remove()


class CLIPClassifier(nn.Module):
    """CLIP image tower → visual projection → new linear head (no normalisation, no logit scale).

    The whole CLIP model is kept (the frozen text tower serves zero-shot scoring), but only the
    image tower, projection and head are ever trained.
    """

    def __init__(self, clip: nn.Module, n_classes: int):
        super().__init__()
        self.clip = clip
        self.head = nn.Linear(clip.visual.output_dim, n_classes)

    @property
    def n_classes(self) -> int:
        return self.head.out_features

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_image(images, normalize=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.image_features(images))


def build_classifier(spec: BackboneSpec, n_classes: int, seed: int) -> CLIPClassifier:
    """The study's classifier: CLIP with explicit image-tower attention and a seeded new head."""
    clip = create_clip(spec)
    convert_image_tower_attention(clip)
    with seeded(seed):
        classifier = CLIPClassifier(clip, n_classes)
    return classifier.eval()


@contextlib.contextmanager
def capture_hidden_states(model: nn.Module) -> Iterator[list[list[torch.Tensor]]]:
    """Record the image tower's token states, for representation similarity (CKA).

    Yields ``states``: ``states[0]`` holds the embedding output (after ``ln_pre``) and
    ``states[i]`` the output of block ``i - 1``; each is a list with one ``(batch, tokens,
    width)`` tensor per forward pass made inside the ``with`` block (detached).
    """
    blocks = image_tower_blocks(model)
    # ln_pre runs before the transformer's NLD -> LND transpose; the blocks see its layout.
    blocks_batch_first = getattr(model.visual.transformer, "batch_first", True)
    states: list[list[torch.Tensor]] = [[] for _ in range(len(blocks) + 1)]

    def recorder(index: int, batch_first: bool):
        def hook(_module, _inputs, output):
            states[index].append((output if batch_first else output.transpose(0, 1)).detach())
        return hook

    handles = [model.visual.ln_pre.register_forward_hook(recorder(0, True))]
    handles += [block.register_forward_hook(recorder(i + 1, blocks_batch_first)) for i, block in enumerate(blocks)]
    try:
        yield states
    finally:
        for handle in handles:
            handle.remove()
