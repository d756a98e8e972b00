"""The scoreops noise stream, in plain torch: the reference every backend must match.

Counter-based Philox4x32-10 (Salmon et al., 2011), keyed by a 64-bit seed. One call maps the
counter ``(c0, c1, c2, c3)`` and key ``(seed_lo, seed_hi)`` to four 32-bit words. scoreops lays
the counter out as::

    c0 = j // 4            element group within one sample (j = flat element index in the sample)
    c1 = sample_offset + i global sample index
    c2 = step              sampler step k (low 32 bits)
    c3 = lane              0 = predictor / SDE noise, 1 + r = r-th corrector step,
                           PRIOR_LANE = the prior sample

and element ``j`` takes normal number ``j % 4`` of its group. So the noise of sample ``i`` at
step ``k`` depends only on ``(seed, i, k, lane, j)``: never on the batch size or the backend.

Words become uniforms exactly as Triton's ``uint_to_uniform_float`` does (bit-cast to int32,
``x < 0 ? ~x : x``, times ``4.6566127342e-10`` in float32), and uniforms become normals by
Box-Muller as Triton's ``pair_uniform_to_normal``: ``u1 = max(u1, 1e-7)``,
``r = sqrt(-2 log u1)``, ``n = (r cos 2 pi u2, r sin 2 pi u2)``, with words (0, 1) and (2, 3)
paired. The transform is our own code in every backend, so a Triton upgrade cannot move it.
"""
from __future__ import annotations

import torch

PHILOX_KEY_A = 0x9E3779B9
PHILOX_KEY_B = 0xBB67AE85
PHILOX_ROUND_A = 0xD2511F53
PHILOX_ROUND_B = 0xCD9E8D57
PHILOX_ROUNDS = 10
UNIFORM_SCALE = 4.6566127342e-10
TWO_PI = 6.283185307179586
U1_MIN = 1.0e-7
_M32 = 0xFFFFFFFF

LANE_PREDICTOR = 0
#: Lane of a sampler's prior sample x(1) = std(1) * z, at stream step 0; far from the predictor
#: and corrector lanes, so it never collides with them.
PRIOR_LANE = 0x7FFFFFFF


def corrector_lane(r: int) -> int:
    """Philox lane of the ``r``-th corrector step (r = 0, 1, ...) within one sampler step."""
    return 1 + r


def _mul_hi_lo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of ``a * b`` for a 32-bit constant ``a`` and int64 ``b < 2**32``.

    Split ``b`` into 16-bit halves so that no partial product overflows int64.
    """
    p_lo = a * (b & 0xFFFF)
    p_hi = a * (b >> 16)
    low_sum = p_lo + ((p_hi & 0xFFFF) << 16)
    return (p_hi >> 16) + (low_sum >> 32), low_sum & _M32


def philox4x32(seed: int, c0, c1, c2, c3) -> tuple[torch.Tensor, ...]:
    """Philox4x32-10 on int64 tensors holding uint32 values; returns four int64 word tensors.

    Args:
        seed: 64-bit key (Python int; negative values are taken modulo 2**64).
        c0..c3: counters, int64 tensors (or ints) with values in [0, 2**32); broadcast together.
    """
    seed &= (1 << 64) - 1
    k0, k1 = seed & _M32, seed >> 32
    c0, c1, c2, c3 = torch.broadcast_tensors(*(torch.as_tensor(c, dtype=torch.int64) for c in (c0, c1, c2, c3)))
    for _ in range(PHILOX_ROUNDS):
        hi_b, lo_b = _mul_hi_lo(PHILOX_ROUND_B, c2)
        hi_a, lo_a = _mul_hi_lo(PHILOX_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + PHILOX_KEY_A) & _M32
        k1 = (k1 + PHILOX_KEY_B) & _M32
    return c0, c1, c2, c3


def uniform_from_word(w: torch.Tensor) -> torch.Tensor:
    """Fold uint32 words (int64 tensor) to float32 uniforms in [0, 1] as Triton does."""
    x = torch.where(w >= 2**31, w - 2**32, w)
    x = torch.where(x < 0, -x - 1, x)
    return x.to(torch.float32) * torch.tensor(UNIFORM_SCALE, dtype=torch.float32)


def box_muller(u1: torch.Tensor, u2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two float32 standard normals from two float32 uniforms."""
    r = torch.sqrt(-2.0 * torch.log(torch.clamp_min(u1, U1_MIN)))
    th = torch.tensor(TWO_PI, dtype=torch.float32) * u2
    return r * torch.cos(th), r * torch.sin(th)


def philox_words(seed: int, step: int, lane: int, batch: int, numel: int, sample_offset: int = 0,
                 device=None) -> torch.Tensor:
    """The raw stream: int64 tensor of shape (batch, 4 * ceil(numel / 4)) holding uint32 words.

    Column ``4 * g + w`` is word ``w`` of group ``g``.
    """
    groups = (numel + 3) // 4
    g = torch.arange(groups, dtype=torch.int64, device=device).view(1, -1)
    i = (torch.arange(batch, dtype=torch.int64, device=device) + sample_offset).view(-1, 1) & _M32
    words = philox4x32(seed, g, i, step & _M32, lane & _M32)
    return torch.stack(words, dim=-1).reshape(batch, 4 * groups)


def normals_from_words(words: torch.Tensor) -> torch.Tensor:
    """Normals from words laid out as :func:`philox_words` returns them (same shape, float32)."""
    w = words.view(*words.shape[:-1], words.shape[-1] // 4, 4)
    u = uniform_from_word(w)
    n0, n1 = box_muller(u[..., 0], u[..., 1])
    n2, n3 = box_muller(u[..., 2], u[..., 3])
    return torch.stack((n0, n1, n2, n3), dim=-1).reshape(words.shape)


def philox_normal(seed: int, step: int, lane: int, batch: int, numel: int, sample_offset: int = 0,
                  device=None) -> torch.Tensor:
    """Standard normals of the scoreops stream: float32 tensor of shape (batch, numel)."""
    words = philox_words(seed, step, lane, batch, numel, sample_offset, device)
    return normals_from_words(words)[:, :numel]
