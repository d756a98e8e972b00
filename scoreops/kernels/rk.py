"""Runge-Kutta stage combination and error norm in Triton (the probability-flow ODE solver's passes).

A kernel takes the stages as separate pointer arguments, up to
:data:`scoreops.core.checks.MAX_RK_STAGES` (8; stages with a zero coefficient are dropped): enough
for any explicit tableau scoreops uses (Dormand-Prince 5(4) has 7 stages), and no copy of the
stages into one tensor.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from scoreops.core.checks import MAX_RK_STAGES, check_float, check_stages

from ._common import BLOCK_ELEMENTS, block_size, check_device, check_index_range, mul, round_to, triton_op, wrap_triton


@triton.jit
def add_stage(acc, k_ptr, coef, offs, mask, USED: tl.constexpr):
    """``acc + coef * k[offs]`` in float32 when the stage is USED, else acc."""
    if USED:
        acc = acc + mul(coef, tl.load(k_ptr + offs, mask=mask).to(tl.float32))
    return acc


@triton.jit
def stage_sum(offs, mask, k0, k1, k2, k3, k4, k5, k6, k7, c0, c1, c2, c3, c4, c5, c6, c7,
              N_STAGES: tl.constexpr):
    """``sum_{j < N_STAGES} c_j * k_j[offs]`` in float32, accumulated in stage order."""
    acc = tl.zeros(offs.shape, dtype=tl.float32)
    acc = add_stage(acc, k0, c0, offs, mask, N_STAGES > 0)
    acc = add_stage(acc, k1, c1, offs, mask, N_STAGES > 1)
    acc = add_stage(acc, k2, c2, offs, mask, N_STAGES > 2)
    acc = add_stage(acc, k3, c3, offs, mask, N_STAGES > 3)
    acc = add_stage(acc, k4, c4, offs, mask, N_STAGES > 4)
    acc = add_stage(acc, k5, c5, offs, mask, N_STAGES > 5)
    acc = add_stage(acc, k6, c6, offs, mask, N_STAGES > 6)
    acc = add_stage(acc, k7, c7, offs, mask, N_STAGES > 7)
    return acc


@triton.jit
def rk_combine_kernel(out_ptr, y_ptr, k0, k1, k2, k3, k4, k5, k6, k7, c0, c1, c2, c3, c4, c5, c6, c7, h, n,
                      N_STAGES: tl.constexpr, BLOCK: tl.constexpr):
    """``out = y + h * sum_{j < N_STAGES} c_j k_j`` over n contiguous elements, float32, stored in out's dtype."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    y = tl.load(y_ptr + offs, mask=mask).to(tl.float32)
    acc = stage_sum(offs, mask, k0, k1, k2, k3, k4, k5, k6, k7, c0, c1, c2, c3, c4, c5, c6, c7, N_STAGES)
    tl.store(out_ptr + offs, round_to(y + mul(h, acc), out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def rk_error_sq_kernel(partial_ptr, y_ptr, y_new_ptr, k0, k1, k2, k3, k4, k5, k6, k7,
                       e0, e1, e2, e3, e4, e5, e6, e7, h, atol, rtol, n,
                       N_STAGES: tl.constexpr, BLOCK: tl.constexpr):
    """``partial[pid] = sum (h * sum_j e_j k_j / (atol + rtol * max(|y|, |y_new|)))**2`` over this
    program's block of the n contiguous elements, in float32 (NaNs propagate, as in the reference).
    """
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    err = h * stage_sum(offs, mask, k0, k1, k2, k3, k4, k5, k6, k7, e0, e1, e2, e3, e4, e5, e6, e7, N_STAGES)
    y = tl.load(y_ptr + offs, mask=mask).to(tl.float32)
    y_new = tl.load(y_new_ptr + offs, mask=mask).to(tl.float32)
    scale = atol + mul(rtol, tl.maximum(tl.abs(y), tl.abs(y_new), propagate_nan=tl.PropagateNan.ALL))
    ratio = tl.div_rn(err, scale)
    tl.store(partial_ptr + tl.program_id(0), tl.sum(tl.where(mask, mul(ratio, ratio), 0.0)))


def _stage_args(y: torch.Tensor, ks: list[torch.Tensor], coeffs: list[float]) -> tuple[list, list[float], int]:
    """Check the stages; returns (pointers, coefficients) of the nonzero-coefficient stages padded to
    MAX_RK_STAGES (padding never read), and their count."""
    check_stages(y, ks, coeffs)
    used = [(k.contiguous(), float(c)) for k, c in zip(ks, coeffs) if c != 0.0]
    pad = MAX_RK_STAGES - len(used)
    return [k for k, _ in used] + [y] * pad, [c for _, c in used] + [0.0] * pad, len(used)


def _check_state(y: torch.Tensor) -> None:
    check_float("y", y)
    check_device("y", y)
    check_index_range("numel(y)", y.numel())


@triton_op("scoreops::triton_rk_combine", mutates_args=())
def rk_combine(y: torch.Tensor, ks: list[torch.Tensor], coeffs: list[float], h: float) -> torch.Tensor:
    """Runge-Kutta stage combination ``y + h * sum_j coeffs[j] * ks[j]``.

    Args:
        y: state, float32/float16/bfloat16, any shape and strides.
        ks: stage derivatives, each of y's shape, dtype and device.
        coeffs: one float per stage; at most ``MAX_RK_STAGES``.
        h: step size.
    Returns:
        A new contiguous tensor of y's shape and dtype, accumulated in float32.
    """
    _check_state(y)
    k_args, c_args, n_stages = _stage_args(y, ks, coeffs)
    out = torch.empty_like(y, memory_format=torch.contiguous_format)
    n = y.numel()
    if n == 0:
        return out
    block = block_size(n, BLOCK_ELEMENTS)
    wrap_triton(rk_combine_kernel)[(triton.cdiv(n, block),)](
        out, y.contiguous(), *k_args, *c_args, h, n, N_STAGES=n_stages, BLOCK=block)
    return out


@triton_op("scoreops::triton_rk_error_sq", mutates_args=())
def rk_error_sq(y: torch.Tensor, y_new: torch.Tensor, ks: list[torch.Tensor], e: list[float], h: float,
                atol: float, rtol: float) -> torch.Tensor:
    """Squared RK error sum ``sum_n (h * sum_j e[j] ks[j]_n / (atol + rtol * max(|y_n|, |y_new_n|)))**2``.

    scipy's RK45 error norm is ``sqrt(rk_error_sq / numel)``.

    Args:
        y, y_new: state before and after the step, same shape, dtype (float32/float16/bfloat16), device.
        ks: stage derivatives of y's shape, dtype and device; e: their error weights (at most
            ``MAX_RK_STAGES``).
        h, atol, rtol: step size and tolerances.
    Returns:
        A float32 0-d tensor on y's device.
    """
    _check_state(y)
    check_float("y_new", y_new, like=y)
    k_args, e_args, n_stages = _stage_args(y, ks, e)
    n = y.numel()
    if n == 0:
        return torch.zeros((), dtype=torch.float32, device=y.device)
    block = block_size(n, BLOCK_ELEMENTS)
    partial = torch.empty(triton.cdiv(n, block), dtype=torch.float32, device=y.device)
    wrap_triton(rk_error_sq_kernel)[(partial.numel(),)](
        partial, y.contiguous(), y_new.contiguous(), *k_args, *e_args, h, atol, rtol, n,
        N_STAGES=n_stages, BLOCK=block)
    return partial.sum()
