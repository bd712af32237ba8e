"""The tiny CLIP the unit tests build (``clipdrift-tiny``, random weights, no download)."""

from clipdrift.model.adapters import MethodConfig, apply_method
from clipdrift.model.backbones import BackboneSpec, build_classifier

TINY = BackboneSpec("clipdrift-tiny")


def make_tiny(method: str = "full", n_classes: int = 5, seed: int = 0, **method_kwargs):
    """A tiny classifier set up for ``method``; same seed → same base and head weights."""
    model = build_classifier(TINY, n_classes, seed=seed)
    return apply_method(model, MethodConfig(method, **method_kwargs))


# The settings a registry method cannot do without (the rest are MethodConfig's defaults).
REQUIRED_SETTINGS = {"lp-ft": {"lp_epochs": 1}, "peft": {"peft_type": "HRA"}}


def registry_config(method: str) -> MethodConfig:
    """Method ``method`` of the registry with its defaults (and what it requires)."""
    return MethodConfig(method, **REQUIRED_SETTINGS.get(method, {}))
