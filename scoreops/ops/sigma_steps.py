"""The one fused update of the sigma-space samplers (Euler, Heun, DPM-Solver++, iPNDM, UniPC).

Every update of those samplers is a linear combination of the state, earlier states and denoiser
outputs, plus fresh noise (docs/design.md, "Few-step samplers"); the per-step coefficients are
tabulated once in float64 on the host and read from a device tensor, so the loop has no host sync.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..core.checks import MAX_TERMS, as_counter, check_batched, check_float
from .backends import implementation, resolve_backend


def sigma_step(x: torch.Tensor, terms: Sequence[torch.Tensor], coefs: torch.Tensor, *, seed=0, step=0,
               lane: int = 0, sample_offset: int = 0, add_noise: bool = False,
               backend: str = "auto") -> torch.Tensor:
    """``a*x + sum_k b_k*terms[k] + e*z`` in one pass, z ~ N(0, I) from the noise stream.

    Args:
        x: (B, ...) state, float32/float16/bfloat16; arithmetic is float32.
        terms: at most :data:`~scoreops.core.checks.MAX_TERMS` tensors of x's shape, dtype and
            device (denoiser outputs D_i, D_{i-1}, ..., earlier states).
        coefs: float32 tensor of shape (K + 2,) on x's device: ``(a, b_0, ..., b_{K-1}, e)``.
            It stays on the device: a kernel reads it there, so a CUDA graph replays new values.
        seed, step, lane, sample_offset: the stream key, as in :func:`scoreops.ops.sde_step`.
        add_noise: draw z and add ``e*z``; False ignores e.
        backend: see :mod:`scoreops.ops`.
    Returns:
        A new contiguous tensor of x's shape and dtype.
    """
    check_batched("x", x)
    if len(terms) > MAX_TERMS:
        raise ValueError(f"at most {MAX_TERMS} terms per sigma_step call, got {len(terms)}")
    for k, t in enumerate(terms):
        check_float(f"terms[{k}]", t, like=x)
    if not isinstance(coefs, torch.Tensor) or coefs.dtype != torch.float32:
        raise TypeError(f"coefs must be a float32 tensor, got {getattr(coefs, 'dtype', type(coefs).__name__)}")
    if coefs.shape != (len(terms) + 2,):
        raise ValueError(f"coefs must have shape ({len(terms) + 2},) = (a, one per term, e) for {len(terms)} terms, "
                         f"got {tuple(coefs.shape)}")
    if coefs.device != x.device:
        raise ValueError(f"coefs is on {coefs.device} but x is on {x.device}")
    seed, step = as_counter("seed", seed, x.device), as_counter("step", step, x.device)
    impl = resolve_backend(backend, x.device)
    return implementation("sigma_step", impl)(x, list(terms), coefs, seed, step, lane, sample_offset, add_noise)
