"""Shared test setup.

Triton runs in its CPU interpreter when no GPU is present; TRITON_INTERPRET must be set before
Triton is first imported, so it is set here, at collection.
"""
import os

import torch

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

# `make test` runs one pytest worker per core; more intra-op threads per worker only contend
# (small elementwise ops become ~100x slower when oversubscribed). Tests of the C++ kernels'
# parallel path set the thread count themselves.
torch.set_num_threads(1)

import pytest  # noqa: E402

from scoreops import ops  # noqa: E402

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
    if backend == "triton" and device == "cpu" and (defect := ops._interpreter_defect()):
        pytest.skip(defect)


@pytest.fixture
def seed() -> int:
    """A fresh 64-bit seed for each test (pytest shows it when a test fails)."""
    return int(torch.randint(-(2**63), 2**63 - 1, (1,), dtype=torch.int64).item())
