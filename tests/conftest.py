"""Shared fixtures. Tests never touch the network: tiny random models, fabricated data."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from clipdrift.adapters import MethodConfig, apply_method  # noqa: E402
from clipdrift.backbones import BackboneSpec, build_classifier  # noqa: E402

TINY = BackboneSpec("clipdrift-tiny")


@pytest.fixture(autouse=True, scope="session")
def single_thread():
    # Tiny matrices: on a busy 2-core machine intra-op threads spin and make each op ~30x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_spec():
    return TINY


@pytest.fixture
def tiny_images():
    generator = torch.Generator().manual_seed(0)
    return torch.randn(4, 3, 32, 32, generator=generator)


def make_tiny(method: str = "full", n_classes: int = 5, seed: int = 0, **method_kwargs):
    """A tiny classifier set up for ``method``; same seed → same base and head weights."""
    model = build_classifier(TINY, n_classes, seed=seed)
    return apply_method(model, MethodConfig(method, **method_kwargs))
