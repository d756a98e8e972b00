"""The adaptive SDE solver's second stage in Triton: the stochastic improved-Euler proposal and each
sample's scaled error, in one pass.

``x_high = ((x + x_low) + (a*s + b*z)) / 2`` with z the stream's normals, made again with the key
of the first stage's ``sde_step`` (never stored), and
``err_i = sqrt(mean_j ((x_low - x_high)_j / max(atol, rtol * max(|x_low_j|, |x_prev_j|)))**2)``.
Each program covers chunks of one sample and writes a partial sum; ``torch.sum`` adds the
partials, which keeps the result deterministic.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from scoreops.core.checks import check_batched, check_float

from ._common import (BLOCK_PAIRS, UINT32_MASK, block_size, check_counters, check_device, check_index_range, mul,
                      round_to, triton_op, wrap_triton)
from .philox import stream_normals
from .sample_norms import MAX_CHUNK_PROGRAMS
from .sde_step import _coef_mode


@triton.jit
def sample_coef(ptr, sample, offs, mask, MODE: tl.constexpr):
    """A coefficient as float32 for one sample's tile: ``ptr[0]``, ``ptr[sample]`` or ``ptr[offs]``
    for MODE 0, 1 or 2 (the layouts of ``scoreops.core.checks.COEF_LAYOUTS``)."""
    if MODE == 0:
        coef = tl.load(ptr)
    elif MODE == 1:
        coef = tl.load(ptr + sample)
    else:
        coef = tl.load(ptr + offs, mask=mask)
    return coef.to(tl.float32)


@triton.jit(do_not_specialize=["lane", "sample_offset"])
def adaptive_sde_kernel(out_ptr, partial_ptr, x_ptr, low_ptr, prev_ptr, s_ptr, a_ptr, b_ptr, seed_ptr, step_ptr,
                        lane, sample_offset, atol, rtol, numel, groups, A_MODE: tl.constexpr,
                        B_MODE: tl.constexpr, BLOCK: tl.constexpr):
    """``out = ((x + x_low) + (a*s + b*z)) / 2`` in float32, stored in out's dtype, and
    ``partial[i, k] = sum_j ((x_low - out32) / max(atol, rtol * max(|x_low|, |x_prev|)))**2`` over
    this program's elements (NaNs propagate, as in the reference).

    Program ``(i, k)`` of a ``(batch, K)`` grid covers the element groups ``g`` of sample ``i`` with
    ``g // BLOCK = k (mod K)``; the data are contiguous (batch, numel), partial (batch, K).
    """
    i = tl.program_id(0)
    k = tl.program_id(1)
    n_programs = tl.num_programs(1)
    row = i.to(tl.int64) * numel
    acc = tl.zeros((BLOCK, 4), dtype=tl.float32)
    for start in range(k * BLOCK, groups, n_programs * BLOCK):
        g = start + tl.arange(0, BLOCK)
        j = 4 * g[:, None] + tl.arange(0, 4)[None, :]
        mask = j < numel
        offs = row + j
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        low = tl.load(low_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        prev = tl.load(prev_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        s = tl.load(s_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        z = stream_normals(seed_ptr, step_ptr, lane, sample_offset, i, g)
        noisy = mul(sample_coef(a_ptr, i, offs, mask, A_MODE), s) + mul(sample_coef(b_ptr, i, offs, mask, B_MODE), z)
        high = mul((x + low) + noisy, 0.5)
        tl.store(out_ptr + offs, round_to(high, out_ptr.dtype.element_ty), mask=mask)
        rel = mul(rtol, tl.maximum(tl.abs(low), tl.abs(prev), propagate_nan=tl.PropagateNan.ALL))
        delta = tl.where((rel > atol) | (rel != rel), rel, atol)
        ratio = tl.div_rn(low - high, delta)
        acc += tl.where(mask, mul(ratio, ratio), 0.0)
    tl.store(partial_ptr + i * n_programs + k, tl.sum(acc))


@triton_op("scoreops::triton_adaptive_sde_step", mutates_args=())
def adaptive_sde_step(x: torch.Tensor, x_low: torch.Tensor, x_prev: torch.Tensor, s: torch.Tensor, a: torch.Tensor,
                      b: torch.Tensor, seed: torch.Tensor, step: torch.Tensor, lane: int, sample_offset: int,
                      atol: float, rtol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The adaptive SDE solver's second stage: ``(x_high, err)``.

    Args:
        x: (B, ...) state at t, float32/float16/bfloat16; any strides.
        x_low: the first stage's (Euler-Maruyama) proposal; x_prev: the last accepted one; s: the
            score at (x_low, t - h); all of x's shape, dtype and device.
        a, b: float32 coefficients (``h g(t-h)**2`` and ``sqrt(h) g(t-h)``): one value, one per
            sample or one per element, as for ``sde_step``.
        seed, step, lane, sample_offset: the first stage's noise key (seed and step 1-element
            int64 tensors on x's device; lane and sample_offset modulo 2**32).
        atol, rtol: the error's tolerances, atol >= 0, rtol > 0.
    Returns:
        ``x_high = ((x + x_low) + (a*s + b*z)) / 2``, a new contiguous tensor of x's shape and dtype,
        and float32 (B,) ``err = sqrt(mean_j ((x_low - x_high) / max(atol, rtol max(|x_low|, |x_prev|)))**2)``.
    """
    check_batched("x", x)
    for name, t in (("x_low", x_low), ("x_prev", x_prev), ("s", s)):
        check_float(name, t, like=x)
    check_device("x", x)
    check_counters(seed, step, x.device)
    modes = [_coef_mode(name, coef, x) for name, coef in (("a", a), ("b", b))]
    if not (atol >= 0 and atol != float("inf")):
        raise ValueError(f"atol must be a finite float >= 0, got {atol!r}")
    if not (rtol > 0 and rtol != float("inf")):
        raise ValueError(f"rtol must be a positive finite float, got {rtol!r}")
    batch = x.shape[0]
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    if x.numel() == 0:
        return out, torch.zeros(batch, dtype=torch.float32, device=x.device)
    numel = x.numel() // batch
    groups = triton.cdiv(numel, 4)
    check_index_range("elements per sample", numel)
    block = block_size(groups, BLOCK_PAIRS)
    n_programs = min(triton.cdiv(groups, block), MAX_CHUNK_PROGRAMS)
    partial = torch.empty(batch, n_programs, dtype=torch.float32, device=x.device)
    wrap_triton(adaptive_sde_kernel)[(batch, n_programs)](
        out, partial, x.contiguous(), x_low.contiguous(), x_prev.contiguous(), s.contiguous(), a.contiguous(),
        b.contiguous(), seed, step, lane & UINT32_MASK, sample_offset & UINT32_MASK, atol, rtol, numel, groups,
        A_MODE=modes[0], B_MODE=modes[1], BLOCK=block)
    return out, (partial.sum(dim=1) / numel).sqrt()
