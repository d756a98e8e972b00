"""The sigma-space samplers' fused update in Triton: ``a*x + sum_k b_k*terms[k] + e*z``.

Euler, Heun, DPM-Solver++, iPNDM and UniPC all step by a linear combination of the state, earlier
states and denoiser outputs, plus fresh noise; one pass reads them and writes the result. The
terms are separate pointer arguments, up to :data:`scoreops.core.checks.MAX_TERMS` (8), as the
stages of :mod:`.rk`, so nothing is stacked or copied. The coefficients are read from a device
tensor, so a captured CUDA graph replays new values without a host sync. The noise is the
stream's normal, or with a path table the Brownian tree's increment over the step
(:mod:`.brownian`), whose coordinates are read on the device too; ``triton_sigma_step_carried``
takes it as one step of a carried walk, which shares a buffer with the walk's other steps.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from scoreops.core.checks import MAX_TERMS, check_batched, check_float

from ._common import (BLOCK_PAIRS, UINT32_MASK, block_size, check_counters, check_device, mul, round_to,
                      sample_groups, triton_op, wrap_triton)
from .brownian import check_carry, check_path, path_increment
from .philox import stream_normals


@triton.jit
def add_term(acc, t_ptr, coefs_ptr, offs, mask, K: tl.constexpr, USED: tl.constexpr):
    """``acc + coefs[1 + K] * t[offs]`` in float32 when the term is USED, else acc."""
    if USED:
        acc = acc + mul(tl.load(coefs_ptr + 1 + K), tl.load(t_ptr + offs, mask=mask).to(tl.float32))
    return acc


@triton.jit(do_not_specialize=["lane", "sample_offset", "points", "depth"])
def sigma_step_kernel(out_ptr, x_ptr, t0, t1, t2, t3, t4, t5, t6, t7, coefs_ptr, seed_ptr, step_ptr, lane,
                      sample_offset, path_ptr, points, depth, carry_ptr, numel, groups, pairs, N_TERMS: tl.constexpr,
                      ADD_NOISE: tl.constexpr, BROWNIAN: tl.constexpr, CARRIED: tl.constexpr, BLOCK: tl.constexpr):
    """``out = a*x + sum_{k < N_TERMS} b_k*t_k + e*z`` (no ``e*z`` without ADD_NOISE) in float32,
    accumulated in that order and stored in out's dtype; ``coefs = (a, b_0, ..., b_{N_TERMS-1}, e)``.

    x, the terms and out are contiguous (batch, numel); z is the stream's normal of each element,
    or with BROWNIAN the tree's increment from ``path[step]`` to ``path[step + 1]`` (a table of
    ``points`` int64 coordinates, tree depth ``depth``); with CARRIED (and BROWNIAN) that step of a
    carried walk, which reads and writes the contiguous float32 (batch, numel) ``carry``.
    Row r of the tile is pair ``p``: group ``g`` (elements 4g..4g+3) of sample ``i``,
    ``(i, g) = divmod(p, groups)``, as in ``sde_step_kernel``.
    """
    p = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    i = p // groups
    g = p - i * groups
    j = 4 * g[:, None] + tl.arange(0, 4)[None, :]
    mask = (p < pairs)[:, None] & (j < numel)
    offs = i[:, None].to(tl.int64) * numel + j
    acc = mul(tl.load(coefs_ptr), tl.load(x_ptr + offs, mask=mask).to(tl.float32))
    acc = add_term(acc, t0, coefs_ptr, offs, mask, 0, N_TERMS > 0)
    acc = add_term(acc, t1, coefs_ptr, offs, mask, 1, N_TERMS > 1)
    acc = add_term(acc, t2, coefs_ptr, offs, mask, 2, N_TERMS > 2)
    acc = add_term(acc, t3, coefs_ptr, offs, mask, 3, N_TERMS > 3)
    acc = add_term(acc, t4, coefs_ptr, offs, mask, 4, N_TERMS > 4)
    acc = add_term(acc, t5, coefs_ptr, offs, mask, 5, N_TERMS > 5)
    acc = add_term(acc, t6, coefs_ptr, offs, mask, 6, N_TERMS > 6)
    acc = add_term(acc, t7, coefs_ptr, offs, mask, 7, N_TERMS > 7)
    if ADD_NOISE:
        if BROWNIAN:
            z = path_increment(seed_ptr, sample_offset, i, g, step_ptr, path_ptr, points, depth, carry_ptr, offs,
                               mask, CARRIED)
        else:
            z = stream_normals(seed_ptr, step_ptr, lane, sample_offset, i, g)
        acc = acc + mul(tl.load(coefs_ptr + 1 + N_TERMS), z)
    tl.store(out_ptr + offs, round_to(acc, out_ptr.dtype.element_ty), mask=mask)


def _check_coefs(op: str, coefs: torch.Tensor, k: int, x: torch.Tensor) -> None:
    """coefs is a float32 (k + 2,) tensor on x's device, as the C++ op's check_sigma_step asks."""
    if not isinstance(coefs, torch.Tensor) or coefs.dtype != torch.float32:
        raise TypeError(f"{op}: coefs must be a float32 tensor, got "
                        f"{coefs.dtype if isinstance(coefs, torch.Tensor) else type(coefs).__name__}")
    if coefs.device != x.device:
        raise ValueError(f"{op}: coefs is on {coefs.device} but x is on {x.device}")
    if tuple(coefs.shape) != (k + 2,):
        raise ValueError(f"{op}: coefs must have shape ({k + 2},) = (a, one per term, e) for {k} terms, "
                         f"got shape {tuple(coefs.shape)}")


@triton_op("scoreops::triton_sigma_step", mutates_args=())
def sigma_step(x: torch.Tensor, terms: list[torch.Tensor], coefs: torch.Tensor, seed: torch.Tensor,
               step: torch.Tensor, lane: int, sample_offset: int, add_noise: bool,
               path: torch.Tensor | None = None, depth: int = 0) -> torch.Tensor:
    """The fused update ``a*x + sum_k b_k*terms[k] + e*z``, z the stream's normals (no ``e*z``
    without add_noise), with ``coefs = (a, b_0, ..., b_{K-1}, e)``.

    Args:
        x: (B, ...) state, float32/float16/bfloat16; any strides.
        terms: K <= ``MAX_TERMS`` tensors of x's shape, dtype and device.
        coefs: float32 (K + 2,) on x's device, read by the kernel (never on the host).
        seed, step: 1-element int64 tensors on x's device (the stream's key and step counter).
        lane, sample_offset: stream lane and global index of sample 0, both modulo 2**32.
        add_noise: False drops ``e*z`` (e is then ignored).
        path, depth: None for the stream's normals; else an int64 table of Brownian-tree
            coordinates on x's device and the tree's depth: z is the increment from
            ``path[step]`` to ``path[step + 1]``, read on the device (NaN where they are not two
            distinct points of the tree, or the table has no interval ``step``).
    Returns:
        A new contiguous tensor of x's shape and dtype, accumulated in float32 in the order
        ``a*x``, then each term, then the noise.
    """
    return _sigma_step("triton_sigma_step", x, terms, coefs, seed, step, lane, sample_offset, add_noise, path, depth,
                       None)


@triton_op("scoreops::triton_sigma_step_carried", mutates_args={"carry"})
def sigma_step_carried(x: torch.Tensor, terms: list[torch.Tensor], coefs: torch.Tensor, seed: torch.Tensor,
                       step: torch.Tensor, sample_offset: int, path: torch.Tensor, depth: int,
                       carry: torch.Tensor) -> torch.Tensor:
    """:func:`sigma_step` with noise, ``a*x + sum_k b_k*terms[k] + e*z``, as step ``k = step`` of a
    carried Brownian walk: z is the increment from ``path[k]`` down to ``path[k + 1]``, the
    stateless one to the bit, with its part on ``path[k]``'s side read from ``carry`` (unless
    ``path[k] = 2**L``) and, where ``0 <= path[k + 2] < path[k + 1]``, the next step's written there
    (:func:`scoreops.core.brownian.brownian_carried_increment`).

    Args:
        x, terms, coefs, seed, step, sample_offset, depth: as :func:`sigma_step` (no lane: the tree's
            normals have their own).
        path: the int64 table of tree coordinates on x's device.
        carry: contiguous float32 of x's numel on x's device, shared by the walk's steps in order
            (read and written by the kernel). A step that does not descend gives NaN and leaves it
            untouched.
    Returns:
        A new contiguous tensor of x's shape and dtype.
    """
    return _sigma_step("triton_sigma_step_carried", x, terms, coefs, seed, step, 0, sample_offset, True, path, depth,
                       carry)


def _sigma_step(op: str, x: torch.Tensor, terms: list[torch.Tensor], coefs: torch.Tensor, seed: torch.Tensor,
                step: torch.Tensor, lane: int, sample_offset: int, add_noise: bool, path: torch.Tensor | None,
                depth: int, carry: torch.Tensor | None) -> torch.Tensor:
    """Check the arguments and launch the kernel; carry (with path and add_noise) makes the step carried."""
    check_batched("x", x)
    if len(terms) > MAX_TERMS:
        raise ValueError(f"{op}: at most {MAX_TERMS} terms per call, got {len(terms)}")
    for k, t in enumerate(terms):
        check_float(f"terms[{k}]", t, like=x)
    _check_coefs(op, coefs, len(terms), x)
    check_path(op, path, depth, x)
    if carry is not None:
        check_carry(op, carry, x, *terms)
    check_device("x", x)
    check_counters(seed, step, x.device)
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    if x.numel() == 0:
        return out
    numel, groups, pairs = sample_groups(x)
    x = x.contiguous()
    # Unused slots point at x; the kernel never reads them.
    t_args = [t.contiguous() for t in terms] + [x] * (MAX_TERMS - len(terms))
    block = block_size(pairs, BLOCK_PAIRS)
    wrap_triton(sigma_step_kernel)[(triton.cdiv(pairs, block),)](
        out, x, *t_args, coefs.contiguous(), seed, step, lane & UINT32_MASK, sample_offset & UINT32_MASK,
        seed if path is None else path.contiguous(), 0 if path is None else path.shape[0], depth,
        seed if carry is None else carry, numel, groups, pairs, N_TERMS=len(terms), ADD_NOISE=add_noise,
        BROWNIAN=add_noise and path is not None, CARRIED=carry is not None,
        BLOCK=block)
    return out
