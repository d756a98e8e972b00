"""The fused ops and the one layer of scoreops that knows about backends.

Backends:
    ``torch``   plain torch (:mod:`scoreops.ops.torch_ops`), the reference; runs everywhere.
    ``cpu``     C++ kernels of ``scoreops._C`` (at::parallel_for, vectorised noise).
    ``cuda``    CUDA kernels of ``scoreops._C`` (current stream, CUDA-graph safe).
    ``triton``  Triton kernels of ``scoreops.kernels``; on CPU tensors only under ``TRITON_INTERPRET=1``.
    ``auto``    the fastest built backend for the tensor's device: cuda > triton > torch on a GPU,
                cpu > torch on the CPU (interpreted Triton is never picked).

All ops use the noise stream of :mod:`scoreops.core.noise`, so the same ``seed``/``step``/``lane``
give the same noise on every backend. ``seed`` and ``step`` may be Python ints or 1-element
int64 tensors on the data's device; tensors let a captured CUDA graph draw new noise per replay.
Every backend differentiates ``sde_step``, ``langevin_correct``, ``sample_sq_norms``,
``rk_combine`` and ``sigma_step`` (:mod:`scoreops.ops.autograd`).

Files: :mod:`.backends` (loading and choosing backends), :mod:`.steps` (the SDE-step and noise
ops), :mod:`.rk` (the ODE solver's stage ops), :mod:`.adaptive_sde` (the adaptive SDE solver's
second stage), :mod:`.sigma_steps` (the few-step samplers' update), :mod:`.torch_ops` (the
reference backend), :mod:`._fake` (shapes for ``torch.compile``), :mod:`.autograd` (the kernels'
gradients).
"""
from .adaptive_sde import adaptive_sde_step
from .backends import BACKENDS, GRAPH_SAFE_BACKENDS, available_backends, implementation, resolve_backend
from .rk import rk_combine, rk_error_norm
from .sigma_steps import sigma_step
from .steps import (NOISE_NORMS, as_coef, langevin_correct, langevin_step_size, philox_bits, philox_normal,
                    sample_sq_norms, sde_step)

__all__ = ["BACKENDS", "GRAPH_SAFE_BACKENDS", "NOISE_NORMS", "adaptive_sde_step", "as_coef", "available_backends",
           "implementation", "langevin_correct", "langevin_step_size", "philox_bits", "philox_normal", "resolve_backend",
           "rk_combine", "rk_error_norm", "sample_sq_norms", "sde_step", "sigma_step"]
