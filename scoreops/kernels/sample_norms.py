"""Per-sample squared norms in Triton: the reduction pass of the fused Langevin corrector.

``sum_j s_ij**2`` and, optionally, ``sum_j z_ij**2`` of the stream noise that the update pass
(``sde_step`` with the same seed/step/lane/sample_offset) will draw again, so z is never stored.
Each program reduces chunks of one sample into a partial sum; ``torch.sum`` adds the partials,
which keeps the result deterministic.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from scoreops.core.checks import check_batched

from ._common import (BLOCK_PAIRS, UINT32_MASK, block_size, check_counters, check_device, check_index_range,
                      triton_op, wrap_triton)
from .philox import stream_normals

# CUDA limits the second grid dimension; programs loop over chunks beyond it.
MAX_CHUNK_PROGRAMS = 65535


@triton.jit(do_not_specialize=["lane", "sample_offset"])
def sample_sq_norms_kernel(partial_ptr, s_ptr, seed_ptr, step_ptr, lane, sample_offset, numel, groups,
                           WITH_NOISE: tl.constexpr, BLOCK: tl.constexpr):
    """``partial[i, k] = (sum_j s_ij**2, sum_j z_ij**2)`` (second 0 without WITH_NOISE), float32.

    Program ``(i, k)`` of a ``(batch, K)`` grid sums the element groups ``g`` of sample ``i`` with
    ``g // BLOCK = k (mod K)``; s is contiguous (batch, numel), partial (batch, K, 2).
    """
    i = tl.program_id(0)
    k = tl.program_id(1)
    n_programs = tl.num_programs(1)
    row = i.to(tl.int64) * numel
    acc_s = tl.zeros((BLOCK, 4), dtype=tl.float32)
    acc_z = tl.zeros((BLOCK, 4), dtype=tl.float32)
    for start in range(k * BLOCK, groups, n_programs * BLOCK):
        g = start + tl.arange(0, BLOCK)
        j = 4 * g[:, None] + tl.arange(0, 4)[None, :]
        mask = j < numel
        s = tl.load(s_ptr + row + j, mask=mask, other=0.0).to(tl.float32)
        acc_s += s * s
        if WITH_NOISE:
            z = stream_normals(seed_ptr, step_ptr, lane, sample_offset, i, g)
            acc_z += tl.where(mask, z * z, 0.0)
    out = partial_ptr + 2 * (i * n_programs + k)
    tl.store(out, tl.sum(acc_s))
    tl.store(out + 1, tl.sum(acc_z))


@triton_op("scoreops::triton_sample_sq_norms", mutates_args=())
def sample_sq_norms(s: torch.Tensor, seed: torch.Tensor, step: torch.Tensor, lane: int, sample_offset: int,
                    with_noise: bool) -> torch.Tensor:
    """Per-sample squared L2 norms: float32 (B, 2).

    Args:
        s: (B, ...) float32/float16/bfloat16 tensor (the score); any strides.
        seed, step, lane, sample_offset: the stream position of the noise, as for ``sde_step``.
        with_noise: also sum the squares of that noise (column 1; zeros otherwise).
    Returns:
        ``[:, 0] = sum_j s_ij**2`` and ``[:, 1] = sum_j z_ij**2``, accumulated in float32.
    """
    check_batched("s", s)
    check_device("s", s)
    check_counters(seed, step, s.device)
    batch = s.shape[0]
    if s.numel() == 0:
        return torch.zeros(batch, 2, dtype=torch.float32, device=s.device)
    numel = s.numel() // batch
    groups = triton.cdiv(numel, 4)
    check_index_range("elements per sample", numel)
    block = block_size(groups, BLOCK_PAIRS)
    n_programs = min(triton.cdiv(groups, block), MAX_CHUNK_PROGRAMS)
    partial = torch.empty(batch, n_programs, 2, dtype=torch.float32, device=s.device)
    wrap_triton(sample_sq_norms_kernel)[(batch, n_programs)](
        partial, s.contiguous(), seed, step, lane & UINT32_MASK, sample_offset & UINT32_MASK, numel, groups,
        WITH_NOISE=with_noise, BLOCK=block)
    return partial.sum(dim=1)
