"""The one fused update of the sigma-space samplers (Euler, Heun, DPM-Solver++, iPNDM, UniPC).

Every update of those samplers is a linear combination of the state, earlier states and denoiser
outputs, plus fresh noise (docs/design.md, "Few-step samplers"); the per-step coefficients are
tabulated once in float64 on the host and read from a device tensor, so the loop has no host sync.
The noise is the stream's normal per step, or the normalised increment of a Brownian path over the
step (:mod:`scoreops.core.brownian`), whose tree coordinates are read from a device table too.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..core.brownian import MAX_DEPTH
from ..core.checks import MAX_TERMS, as_counter, check_batched, check_float, check_int, overlaps
from .backends import implementation, resolve_backend


def sigma_step(x: torch.Tensor, terms: Sequence[torch.Tensor], coefs: torch.Tensor, *, seed=0, step=0,
               lane: int = 0, sample_offset: int = 0, add_noise: bool = False, path: torch.Tensor | None = None,
               depth: int = 0, carry: torch.Tensor | None = None, backend: str = "auto") -> torch.Tensor:
    """``a*x + sum_k b_k*terms[k] + e*z`` in one pass, z ~ N(0, I) from the noise stream.

    Args:
        x: (B, ...) state, float32/float16/bfloat16; arithmetic is float32.
        terms: at most :data:`~scoreops.core.checks.MAX_TERMS` tensors of x's shape, dtype and
            device (denoiser outputs D_i, D_{i-1}, ..., earlier states).
        coefs: float32 tensor of shape (K + 2,) on x's device: ``(a, b_0, ..., b_{K-1}, e)``.
            It stays on the device: a kernel reads it there, so a CUDA graph replays new values.
        seed, step, lane, sample_offset: the stream key, as in :func:`scoreops.ops.sde_step`.
        add_noise: draw z and add ``e*z``; False ignores e (and path).
        path: None for the stream's i.i.d. normals; else the Brownian tree's int64 table of
            coordinates, one per grid point (:meth:`scoreops.core.brownian.BrownianTree.grid_table`),
            on x's device: z is then the normalised increment from ``q = path[step]`` to
            ``path[step + 1]`` (:func:`scoreops.core.brownian.brownian_increment`), made in the kernel
            from (seed, sample, element) alone, so ``lane`` is unused. The kernels read both
            coordinates on the device; the CPU kernel and the torch reference refuse a step
            outside the table or an invalid pair, the CUDA and Triton kernels give NaN.
        depth: the tree's depth L, 0 <= L <= 32 (with path).
        carry: with path and add_noise, None (stateless: up to 2L node normals per element) or a contiguous
            float32 buffer of x's numel that the steps 0, 1, 2, ... of one descending walk share
            (``path[k + 1] < path[k]``): step k reads what step k - 1 wrote (unless ``path[k]`` is
            the tree's top, ``2**L``, where a walk starts) and writes what step k + 1 reads, so a
            step draws at most L + 1 normals and gives the stateless z to the bit
            (:func:`scoreops.core.brownian.brownian_carried_increment`). Make it with
            ``torch.full((x.numel(),), float("nan"))``, so that a step reading a carry that no
            step wrote gives NaN, and pass it to every step of the walk, in order. It has no
            gradient. Without add_noise it is ignored.
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
    depth = check_path(path, depth, x.device)
    check_carry(carry, path, x, x, *terms, coefs)
    impl = resolve_backend(backend, x.device)
    if carry is not None and add_noise:
        return implementation("sigma_step_carried", impl)(x, list(terms), coefs, seed, step, sample_offset, path,
                                                          depth, carry)
    return implementation("sigma_step", impl)(x, list(terms), coefs, seed, step, lane, sample_offset, add_noise,
                                              path, depth)


def check_path(path, depth, device: torch.device) -> int:
    """path is None or a 1-D int64 table of at least 2 tree coordinates on ``device``; returns depth,
    an int in [0, MAX_DEPTH] (0 without a path)."""
    depth = check_int("depth", depth, 0)
    if path is None:
        return depth
    if not isinstance(path, torch.Tensor) or path.dtype != torch.int64:
        raise TypeError(f"path must be an int64 tensor, got {getattr(path, 'dtype', type(path).__name__)}")
    if path.dim() != 1 or path.shape[0] < 2:
        raise ValueError(f"path must be a 1-D table of at least 2 tree coordinates (one per grid point), "
                         f"got shape {tuple(path.shape)}")
    if path.device != device:
        raise ValueError(f"path is on {path.device} but x is on {device}")
    if depth > MAX_DEPTH:
        raise ValueError(f"depth must be in [0, {MAX_DEPTH}], got {depth}")
    return depth


def check_carry(carry, path, x: torch.Tensor, *inputs: torch.Tensor) -> None:
    """carry is None, or (with a path) a contiguous float32 tensor of x's numel on x's device that
    shares no memory with ``inputs`` (x and the tensors the step reads), and autograd records
    nothing on them (a carried step mutates its carry: no gradient)."""
    if carry is None:
        return
    if path is None:
        raise ValueError("a carry needs a path: it holds part of a Brownian increment")
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        raise ValueError("a carried step has no gradient: pass carry=None under autograd (the stateless step "
                         "gives the same z)")
    if not isinstance(carry, torch.Tensor) or carry.dtype != torch.float32:
        raise TypeError(f"carry must be a float32 tensor, got {getattr(carry, 'dtype', type(carry).__name__)}")
    if carry.device != x.device:
        raise ValueError(f"carry is on {carry.device} but x is on {x.device}")
    if carry.numel() != x.numel() or not carry.is_contiguous():
        raise ValueError(f"carry must be contiguous with x's {x.numel()} elements, got shape {tuple(carry.shape)}")
    if any(overlaps(carry, t) for t in inputs):
        raise ValueError("carry shares memory with x or another input of the step; pass a buffer of its own")
