"""Shared fixtures. Tests never touch the network: tiny random models, fabricated data."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The suite runs on the CPU even on a GPU machine (and so do the workflow jobs it starts): its
# expected numbers are CPU numbers. Tests marked `cuda` run on the GPU (benchmarks/bench_gpu.py).
os.environ["CLIPDRIFT_DEVICE"] = "cpu"

import pytest  # noqa: E402
import torch  # noqa: E402
from tiny_models import TINY  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def single_thread():
    # Tiny matrices: on a busy 2-core machine intra-op threads spin and make each op ~30x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def device_for_the_test(request, monkeypatch):
    """CPU for every test; a `cuda` test gets the GPU (and is skipped without one)."""
    if request.node.get_closest_marker("cuda") is not None:
        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA device (run on a GPU machine: benchmarks/bench_gpu.py)")
        monkeypatch.delenv("CLIPDRIFT_DEVICE")


@pytest.fixture(autouse=True, scope="session")
def private_runtime_folder(tmp_path_factory):
    """The warm job servers the tests start keep their folders under this session's temporary
    folder, not in the user's real runtime folder or /tmp (XDG_RUNTIME_DIR is where they look
    first)."""
    runtime = tmp_path_factory.mktemp("runtime")
    runtime.chmod(0o700)
    previous = os.environ.get("XDG_RUNTIME_DIR")
    os.environ["XDG_RUNTIME_DIR"] = str(runtime)
    yield runtime
    if previous is None:
        os.environ.pop("XDG_RUNTIME_DIR", None)
    else:
        os.environ["XDG_RUNTIME_DIR"] = previous


@pytest.fixture(autouse=True, scope="session")
def no_job_server_left_running(tmp_path_factory):
    """The suite leaves no warm job server behind: each exits once its workflow has ended or its
    test stops it; one still running a few seconds after the last test is an error (and is
    stopped)."""
    from workflow_helpers import server_pids, wait_until

    yield
    base = tmp_path_factory.getbasetemp()
    if not wait_until(lambda: not server_pids(base), 15):
        left = server_pids(base)
        for pid in left:
            os.kill(pid, 9)
        pytest.fail(f"warm job servers still running after the tests: {left}")


@pytest.fixture
def tiny_spec():
    return TINY


@pytest.fixture
def tiny_images():
    generator = torch.Generator().manual_seed(0)
    return torch.randn(4, 3, 32, 32, generator=generator)
