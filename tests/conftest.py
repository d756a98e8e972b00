"""Shared test setup.

Triton runs in its CPU interpreter when no GPU is present; TRITON_INTERPRET must be set before
Triton is first imported, so it is set here, at collection.
"""
import importlib
import os

import torch

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

# `make test` runs one pytest worker per core; more intra-op threads per worker only contend
# (small elementwise ops become ~100x slower when oversubscribed). Tests of the C++ kernels'
# parallel path set the thread count themselves.
torch.set_num_threads(1)

import pytest  # noqa: E402

from scoreops.ops import backends  # noqa: E402

#: A 2-level net on 8x8 digits trained for two steps: the smallest run the CLI makes.
TINY_TRAINING = ["--image-size", "8", "--channels", "8,16", "--embed-dim", "16", "--batch-size", "16",
                 "--steps", "2", "--device", "cpu"]


def benchmark_module(name: str):
    """``benchmarks/<name>.py``: installed as ``scoreops.benchmarks.<name>`` (setup.py maps the
    folder there), or from a source checkout's root."""
    try:
        return importlib.import_module(f"scoreops.benchmarks.{name}")
    except ModuleNotFoundError as e:
        if e.name != "scoreops.benchmarks":
            raise
        return importlib.import_module(f"benchmarks.{name}")


# (backend, device) pairs under test. The cpu backend is always built and interpreted Triton
# always runs on the CPU here, so for them a missing backend fails the test instead of skipping.
KERNEL_BACKENDS = [
    pytest.param("cpu", "cpu", id="cpu"),
    pytest.param("triton", "cpu", id="triton-interp"),
    pytest.param("cuda", "cuda", id="cuda", marks=pytest.mark.cuda),
    pytest.param("triton", "cuda", id="triton-cuda", marks=pytest.mark.cuda),
]

# The plain-torch backend is itself checked against formulas written out in the tests.
ALL_BACKENDS = [pytest.param("torch", "cpu", id="torch")] + KERNEL_BACKENDS


def skip_unless_runnable(backend: str, device: str) -> None:
    """Skip CUDA cases without a GPU, and interpreted Triton where the interpreter is off."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if backend == "triton" and device == "cpu" and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        pytest.skip("Triton on CPU tensors needs TRITON_INTERPRET=1")
    if backend == "triton" and device == "cpu" and (defect := backends._interpreter_defect()):
        pytest.skip(defect)


@pytest.fixture
def seed(request) -> int:
    """A fresh 64-bit seed for each test, or SCOREOPS_TEST_SEED's to reproduce a failure.

    Every test's random inputs follow it (torch's global generator is seeded with it, below),
    and a failing test's report shows it.
    """
    fixed = os.environ.get("SCOREOPS_TEST_SEED")
    value = int(fixed) if fixed else int.from_bytes(os.urandom(8), "little", signed=True)
    request.node.user_properties.append(("seed", str(value)))  # xdist serialises ints in 32 bits
    return value


@pytest.fixture(autouse=True)
def _seed_torch(seed):
    torch.manual_seed(seed)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    if report.failed:
        for name, value in item.user_properties:
            if name == "seed":
                report.sections.append(("seed", f"seed = {value}; rerun with SCOREOPS_TEST_SEED={value}"))
