"""The scoreops noise stream in Triton: device functions every noisy kernel shares, and the raw ops.

The stream is that of :mod:`scoreops.core.noise` (see ``docs/kernels.md``): Philox4x32-10 keyed by the
64-bit seed, counter ``(j // 4, sample_offset + i, step, lane)`` for element ``j`` of sample ``i``.
Words come from ``tl.philox``; the word-to-uniform fold and Box-Muller are our own code, so a
Triton upgrade cannot move the stream. One Philox call makes the four normals of one group of
four elements, so kernels tile over (sample, group) pairs.

``seed`` and ``step`` are read from device tensors inside the kernels, so a captured CUDA graph
draws new noise at every replay.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from scoreops.core import noise

from ._common import (BLOCK_PAIRS, INTERPRETED, UINT32_MASK, block_size, check_counters, check_device,
                      check_index_range, triton_op, wrap_triton)

# libdevice's log/sin/cos are accurate like the CUDA kernels' logf/sinf/cosf; on GPUs tl.log/sin/cos
# are hardware approximations, far off the reference where log(u1) is near 0. The interpreter has
# no libdevice, and its numpy functions are accurate.
ACCURATE_MATH = tl.constexpr(not INTERPRETED)
UNIFORM_SCALE = tl.constexpr(noise.UNIFORM_SCALE)
U1_MIN = tl.constexpr(noise.U1_MIN)
TWO_PI = tl.constexpr(noise.TWO_PI)


@triton.jit
def stream_words(seed_ptr, step_ptr, lane, sample_offset, sample, group):
    """The four uint32 Philox4x32-10 words of counter ``(group, sample_offset + sample, step, lane)``.

    ``seed = *seed_ptr`` is the 64-bit key and ``step = *step_ptr`` (int64, low 32 bits used);
    ``sample`` (a scalar or a tensor) and ``group`` (a tensor) are integer indices, and every
    counter is taken modulo 2**32.
    """
    c0 = group.to(tl.uint32)
    c1 = tl.broadcast_to(tl.cast(sample_offset, tl.uint32) + sample.to(tl.uint32), c0.shape)
    c2 = tl.broadcast_to(tl.load(step_ptr).to(tl.uint32), c0.shape)
    c3 = tl.broadcast_to(tl.cast(lane, tl.uint32), c0.shape)
    return tl.philox(tl.load(seed_ptr), c0, c1, c2, c3)


@triton.jit
def uniform(word):
    """uint32 word -> float32 uniform in [0, 1]: ``x = int32(word)``, ``(x < 0 ? ~x : x) * 4.6566127342e-10``."""
    x = word.to(tl.int32, bitcast=True)
    x = tl.where(x < 0, ~x, x)
    return x.to(tl.float32) * UNIFORM_SCALE


@triton.jit
def box_muller(u1, u2):
    """Two float32 normals ``(r cos th, r sin th)``, ``r = sqrt(-2 log max(u1, 1e-7))``, ``th = 2 pi u2``."""
    u1 = tl.maximum(u1, U1_MIN)
    theta = TWO_PI * u2
    if ACCURATE_MATH:
        r = tl.sqrt_rn(-2.0 * libdevice.log(u1))
        n_cos = r * libdevice.cos(theta)
        n_sin = r * libdevice.sin(theta)
    else:
        r = tl.sqrt_rn(-2.0 * tl.log(u1))
        n_cos = r * tl.cos(theta)
        n_sin = r * tl.sin(theta)
    return n_cos, n_sin


@triton.jit
def stream_normals(seed_ptr, step_ptr, lane, sample_offset, sample, group):
    """float32 normals ``[G, 4]`` of the 1-d ``group`` tensor (length G): row r holds elements
    ``4 * group[r] + 0..3`` of sample ``sample_offset + sample`` (``sample``: scalar or length G).

    Words (w0, w1) make normals 0 and 1, words (w2, w3) normals 2 and 3.
    """
    w0, w1, w2, w3 = stream_words(seed_ptr, step_ptr, lane, sample_offset, sample, group)
    return words_to_normals(w0, w1, w2, w3, group)


@triton.jit
def counter_normals(seed, sample_word, step_word, lane_word, group):
    """float32 normals ``[G, 4]`` of counters ``(group, sample_word, step_word, lane_word)`` under the
    64-bit key ``seed`` (a value, not a pointer): the stream's normals with any step and lane words,
    which may be runtime values (the Brownian tree's node numbers). ``sample_word``: uint32,
    scalar or length G; ``step_word``, ``lane_word``: uint32 scalars."""
    c0 = group.to(tl.uint32)
    c1 = tl.broadcast_to(sample_word.to(tl.uint32), c0.shape)
    c2 = tl.broadcast_to(step_word.to(tl.uint32), c0.shape)
    c3 = tl.broadcast_to(tl.cast(lane_word, tl.uint32), c0.shape)
    w0, w1, w2, w3 = tl.philox(seed, c0, c1, c2, c3)
    return words_to_normals(w0, w1, w2, w3, group)


@triton.jit
def words_to_normals(w0, w1, w2, w3, group):
    """The ``[G, 4]`` normals of the four words of each group (rows as :func:`stream_normals`)."""
    # Side by side, pairs (w0, w1) and (w2, w3) go through one Box-Muller call on [G, 2] tiles.
    n_cos, n_sin = box_muller(tl.join(uniform(w0), uniform(w2)), tl.join(uniform(w1), uniform(w3)))
    # join -> [G, 2, 2] with [r, m, 0] = n_cos[r, m] and [r, m, 1] = n_sin[r, m]: rows read n0 n1 n2 n3.
    return tl.reshape(tl.join(n_cos, n_sin), (group.shape[0], 4))


@triton.jit(do_not_specialize=["lane", "sample_offset"])
def philox_bits_kernel(out_ptr, seed_ptr, step_ptr, lane, sample_offset, groups, pairs, BLOCK: tl.constexpr):
    """``out[i, 4 g + w] = int32(word w of (g, sample_offset + i, step, lane))`` for the pairs
    ``p = i * groups + g`` of this program; out is contiguous (batch, 4 * groups).
    """
    p = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    i = p // groups
    g = p - i * groups
    w0, w1, w2, w3 = stream_words(seed_ptr, step_ptr, lane, sample_offset, i, g)
    # [BLOCK, 2, 2] with [r, m, n] = word 2m + n: rows read w0 w1 w2 w3.
    words = tl.reshape(tl.join(tl.join(w0, w2), tl.join(w1, w3)), (BLOCK, 4))
    offs = 4 * p[:, None].to(tl.int64) + tl.arange(0, 4)[None, :]
    tl.store(out_ptr + offs, words.to(tl.int32, bitcast=True), mask=(p < pairs)[:, None])


@triton.jit(do_not_specialize=["lane", "sample_offset"])
def philox_normal_kernel(out_ptr, seed_ptr, step_ptr, lane, sample_offset, numel, groups, pairs,
                         BLOCK: tl.constexpr):
    """``out[i, j] = normal j % 4 of group j // 4 of sample sample_offset + i``; out is contiguous (batch, numel)."""
    p = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    i = p // groups
    g = p - i * groups
    z = stream_normals(seed_ptr, step_ptr, lane, sample_offset, i, g)
    j = 4 * g[:, None] + tl.arange(0, 4)[None, :]
    offs = i[:, None].to(tl.int64) * numel + j
    tl.store(out_ptr + offs, z, mask=(p < pairs)[:, None] & (j < numel))


def _check_stream_args(seed: torch.Tensor, step: torch.Tensor, batch: int, numel: int) -> int:
    """Check the arguments of the raw stream ops; returns the number of (sample, group) pairs."""
    check_counters(seed, step, seed.device)
    check_device("seed", seed)
    for name, v in (("batch", batch), ("numel", numel)):
        if v < 0:
            raise ValueError(f"{name} must be non-negative, got {v}")
    pairs = batch * triton.cdiv(numel, 4)
    check_index_range("elements per sample", numel)
    check_index_range("batch * ceil(numel / 4)", pairs)
    return pairs


@triton_op("scoreops::triton_philox_bits", mutates_args=())
def philox_bits(seed: torch.Tensor, step: torch.Tensor, lane: int, sample_offset: int, batch: int,
                numel: int) -> torch.Tensor:
    """The stream's raw words: int32 ``(batch, 4 * ceil(numel / 4))``, uint32 words bit-cast.

    Args:
        seed, step: 1-element int64 tensors on the output device (the key and the step counter).
        lane: stream lane (0 predictor, 1 + r corrector step r); taken modulo 2**32.
        sample_offset: global index of sample 0; taken modulo 2**32.
        batch, numel: number of samples and elements per sample.
    """
    pairs = _check_stream_args(seed, step, batch, numel)
    groups = triton.cdiv(numel, 4)
    out = torch.empty(batch, 4 * groups, dtype=torch.int32, device=seed.device)
    if pairs == 0:
        return out
    block = block_size(pairs, BLOCK_PAIRS)
    wrap_triton(philox_bits_kernel)[(triton.cdiv(pairs, block),)](
        out, seed, step, lane & UINT32_MASK, sample_offset & UINT32_MASK, groups, pairs, BLOCK=block)
    return out


@triton_op("scoreops::triton_philox_normal", mutates_args=())
def philox_normal(seed: torch.Tensor, step: torch.Tensor, lane: int, sample_offset: int, batch: int,
                  numel: int) -> torch.Tensor:
    """Standard normals of the stream: float32 ``(batch, numel)``; arguments as :func:`philox_bits`."""
    pairs = _check_stream_args(seed, step, batch, numel)
    out = torch.empty(batch, numel, dtype=torch.float32, device=seed.device)
    if pairs == 0:
        return out
    block = block_size(pairs, BLOCK_PAIRS)
    wrap_triton(philox_normal_kernel)[(triton.cdiv(pairs, block),)](
        out, seed, step, lane & UINT32_MASK, sample_offset & UINT32_MASK, numel, triton.cdiv(numel, 4), pairs,
        BLOCK=block)
    return out
