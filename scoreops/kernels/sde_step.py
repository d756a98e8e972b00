"""The fused SDE step in Triton: ``x + a*s + b*z + c*(z*z - 1)`` with z drawn from the stream in-kernel.

One pass reads x and s and writes the result; EM, Milstein, the reverse-diffusion predictor and
the Langevin corrector are all this update with different coefficients (see ``scoreops.ops``).
z is the stream's normal, or with a path table the Brownian tree's increment over the step
(:mod:`.brownian`), whose coordinates are read on the device too; ``triton_sde_step_carried_``
takes it as one step of a carried walk, which shares a buffer with the walk's other steps.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from scoreops.core.checks import COEF_LAYOUTS, check_batched, check_float, coef_layout

from ._common import (BLOCK_PAIRS, UINT32_MASK, block_size, check_counters, check_device,
                      check_no_partial_overlap, mul, round_to, sample_groups, triton_op, wrap_triton)
from .brownian import check_carry, check_path, path_increment
from .philox import stream_normals


@triton.jit
def load_coef(ptr, sample, offs, row_mask, mask, MODE: tl.constexpr):
    """A step coefficient as float32: ``ptr[0]``, ``ptr[sample]`` or ``ptr[offs]`` for MODE 0, 1
    or 2, the index of its layout in ``scoreops.core.checks.COEF_LAYOUTS``; ``sample``/``row_mask`` are
    ``[BLOCK, 1]``, ``offs``/``mask`` ``[BLOCK, 4]``.
    """
    if MODE == 0:
        coef = tl.load(ptr)
    elif MODE == 1:
        coef = tl.load(ptr + sample, mask=row_mask)
    else:
        coef = tl.load(ptr + offs, mask=mask)
    return coef.to(tl.float32)


@triton.jit(do_not_specialize=["lane", "sample_offset", "points", "depth"])
def sde_step_kernel(out_ptr, x_ptr, s_ptr, a_ptr, b_ptr, c_ptr, seed_ptr, step_ptr, lane, sample_offset,
                    path_ptr, points, depth, carry_ptr, numel, groups, pairs, A_MODE: tl.constexpr,
                    B_MODE: tl.constexpr, C_MODE: tl.constexpr, ADD_NOISE: tl.constexpr, BROWNIAN: tl.constexpr,
                    CARRIED: tl.constexpr, BLOCK: tl.constexpr):
    """``out = x + a*s + b*z + c*(z*z - 1)`` (``x + a*s`` without ADD_NOISE) in float32, stored in out's dtype.

    x, s, out are contiguous (batch, numel); z is the stream's normal of each element, or with
    BROWNIAN the tree's increment from ``path[step]`` to ``path[step + 1]`` (a table of ``points``
    int64 coordinates, tree depth ``depth``); with CARRIED (and BROWNIAN) that step of a carried
    walk, which reads and writes the contiguous float32 (batch, numel) ``carry``. Row r of the tile
    is pair ``p``: group ``g`` (elements 4g..4g+3) of sample ``i``, ``(i, g) = divmod(p, groups)``.
    """
    p = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    i = p // groups
    g = p - i * groups
    sample = i[:, None]
    row_mask = (p < pairs)[:, None]
    j = 4 * g[:, None] + tl.arange(0, 4)[None, :]
    mask = row_mask & (j < numel)
    offs = sample.to(tl.int64) * numel + j
    x = tl.load(x_ptr + offs, mask=mask).to(tl.float32)
    s = tl.load(s_ptr + offs, mask=mask).to(tl.float32)
    out = x + mul(load_coef(a_ptr, sample, offs, row_mask, mask, A_MODE), s)
    if ADD_NOISE:
        if BROWNIAN:
            z = path_increment(seed_ptr, sample_offset, i, g, step_ptr, path_ptr, points, depth, carry_ptr, offs,
                               mask, CARRIED)
        else:
            z = stream_normals(seed_ptr, step_ptr, lane, sample_offset, i, g)
        b = load_coef(b_ptr, sample, offs, row_mask, mask, B_MODE)
        c = load_coef(c_ptr, sample, offs, row_mask, mask, C_MODE)
        out = out + mul(b, z) + mul(c, mul(z, z) - 1.0)
    tl.store(out_ptr + offs, round_to(out, out_ptr.dtype.element_ty), mask=mask)


def _coef_mode(name: str, coef: torch.Tensor, x: torch.Tensor) -> int:
    """Check a coefficient tensor; returns its layout (COEF_*)."""
    if not isinstance(coef, torch.Tensor) or coef.dtype != torch.float32:
        raise TypeError(f"{name} must be a float32 tensor, got "
                        f"{coef.dtype if isinstance(coef, torch.Tensor) else type(coef).__name__}")
    if coef.device != x.device:
        raise ValueError(f"{name} is on {coef.device}, expected {x.device}")
    return COEF_LAYOUTS.index(coef_layout(name, coef.shape, x.shape))


def _sde_step_into(op, out, x, s, a, b, c, seed, step, lane, sample_offset, add_noise, path, depth,
                   carry=None) -> None:
    """Check the arguments and launch the step kernel, writing into the contiguous ``out`` (may be
    x); carry (with path and add_noise) makes the step carried."""
    check_batched("x", x)
    check_float("s", s, like=x)
    check_device("x", x)
    check_counters(seed, step, x.device)
    check_path(op, path, depth, x)
    if carry is not None:
        check_carry(op, carry, x, s)
    modes = [_coef_mode(name, coef, x) for name, coef in (("a", a), ("b", b), ("c", c))]
    if x.numel() == 0:
        return
    numel, groups, pairs = sample_groups(x)
    block = block_size(pairs, BLOCK_PAIRS)
    # Without a path the seed stands in for its pointer, which the kernel then never reads.
    wrap_triton(sde_step_kernel)[(triton.cdiv(pairs, block),)](
        out, x.contiguous(), s.contiguous(), a.contiguous(), b.contiguous(), c.contiguous(), seed, step,
        lane & UINT32_MASK, sample_offset & UINT32_MASK, seed if path is None else path.contiguous(),
        0 if path is None else path.shape[0], depth, seed if carry is None else carry, numel, groups, pairs,
        A_MODE=modes[0], B_MODE=modes[1], C_MODE=modes[2], ADD_NOISE=add_noise,
        BROWNIAN=add_noise and path is not None, CARRIED=carry is not None, BLOCK=block)


@triton_op("scoreops::triton_sde_step", mutates_args=())
def sde_step(x: torch.Tensor, s: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor,
             seed: torch.Tensor, step: torch.Tensor, lane: int, sample_offset: int, add_noise: bool,
             path: torch.Tensor | None = None, depth: int = 0) -> torch.Tensor:
    """One fused step ``x + a*s + b*z + c*(z*z - 1)``, z the stream's normals (``x + a*s`` without add_noise).

    Args:
        x: (B, ...) state, float32/float16/bfloat16; any strides.
        s: score (or drift), x's shape, dtype and device.
        a, b, c: float32 coefficients: one value, one per sample ((B,) or (B, 1, ..., 1)) or one
            per element (x's shape); see :func:`scoreops.core.checks.coef_layout`.
        seed, step: 1-element int64 tensors on x's device (the stream's key and step counter).
        lane, sample_offset: stream lane and global index of sample 0, both modulo 2**32.
        add_noise: False gives the mean ``x + a*s``.
        path, depth: None for the stream's normals; else an int64 table of Brownian-tree
            coordinates on x's device and the tree's depth: z (in both ``b*z`` and ``c*(z*z - 1)``)
            is the increment from ``path[step]`` to ``path[step + 1]``, read on the device (NaN
            where they are not two distinct points of the tree, or the table has no interval ``step``).
    Returns:
        A new contiguous tensor of x's shape and dtype (arithmetic in float32).
    """
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    _sde_step_into("triton_sde_step", out, x, s, a, b, c, seed, step, lane, sample_offset, add_noise, path, depth)
    return out


@triton_op("scoreops::triton_sde_step_", mutates_args={"x"})
def sde_step_(x: torch.Tensor, s: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor,
              seed: torch.Tensor, step: torch.Tensor, lane: int, sample_offset: int, add_noise: bool,
              path: torch.Tensor | None = None, depth: int = 0) -> None:
    """:func:`sde_step` written into the contiguous x (``scoreops.ops.sde_step(..., inplace=True)``
    writes a strided x through a copy, the one fallback for every backend)."""
    if not x.is_contiguous():
        raise ValueError("triton_sde_step_: x must be contiguous; scoreops.ops.sde_step(..., inplace=True) writes a "
                         "strided x through a copy")
    check_no_partial_overlap("s", x, s)
    _sde_step_into("triton_sde_step_", x, x, s, a, b, c, seed, step, lane, sample_offset, add_noise, path, depth)


@triton_op("scoreops::triton_sde_step_carried_", mutates_args={"x", "carry"})
def sde_step_carried_(x: torch.Tensor, s: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor,
                      seed: torch.Tensor, step: torch.Tensor, sample_offset: int, path: torch.Tensor, depth: int,
                      carry: torch.Tensor) -> None:
    """``x <- x + a*s + b*z + c*(z*z - 1)`` in place, as step ``k = step`` of a carried Brownian
    walk: z is the increment from ``path[k]`` down to ``path[k + 1]``, the stateless one to the
    bit, with its part on ``path[k]``'s side read from ``carry`` (unless ``path[k] = 2**L``) and,
    where ``0 <= path[k + 2] < path[k + 1]``, the next step's written there
    (:func:`scoreops.core.brownian.brownian_carried_increment`).

    Args:
        x: contiguous (B, ...) state, float32/float16/bfloat16, written in place.
        s, a, b, c, seed, step, sample_offset, depth: as :func:`sde_step` (no lane: the tree's
            normals have their own).
        path: the int64 table of tree coordinates on x's device.
        carry: contiguous float32 of x's numel on x's device, apart from x, shared by the walk's
            steps in order (read and written by the kernel). A step that does not descend gives
            NaN and leaves it untouched.
    """
    if not x.is_contiguous():
        raise ValueError("triton_sde_step_carried_: x must be contiguous; scoreops.ops.sde_step(..., inplace=True) "
                         "writes a strided x through a copy")
    check_no_partial_overlap("s", x, s)
    _sde_step_into("triton_sde_step_carried_", x, x, s, a, b, c, seed, step, 0, sample_offset, True, path, depth,
                   carry)
