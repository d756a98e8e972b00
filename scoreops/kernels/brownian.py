"""The virtual Brownian tree's increment in Triton: :mod:`scoreops.core.brownian` (and
``csrc/brownian.h``) as a device function of the fused steps.

The walk through the tree depends only on the step's two coordinates and the depth, which every
program loads alike, so its loops have uniform bounds and its branches uniform conditions; only
the node normals and the running sums are per element. The reference's early returns become loop
bounds: a descent towards point q stops at the first level where q is the left end of its node,
``max(level, L - tz(q))`` (tz: trailing zero bits). Products are rounded on their own
(:func:`~._common.mul`) and the weights formed in float64 and rounded once, as the reference
rounds them, so given the same node normals the increment is the reference's to the bit.

A carried walk (``CARRIED``) reads the part of its increment on b's side of the parting node from a
float32 buffer of one value per element, which the previous step wrote, and writes the next step's
while it walks to a: at most L + 1 node normals per element instead of up to 2L, the same z.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from scoreops.core import brownian
from scoreops.core.checks import overlaps

from ._common import mul
from .philox import counter_normals

BROWNIAN_LANE = tl.constexpr(brownian.BROWNIAN_LANE)
SQRT_HALF = tl.constexpr(math.sqrt(0.5))


@triton.jit
def _node_normals(seed, sample_word, node, group):
    """``[G, 4]`` normals of tree node ``node`` (int64 scalar) for each group's elements."""
    return counter_normals(seed, sample_word, node.to(tl.uint32), BROWNIAN_LANE, group)


@triton.jit
def _halves(delta, z):
    """The normalised increments of a node's left and right halves."""
    return (delta + z) * SQRT_HALF, (delta - z) * SQRT_HALF


@triton.jit
def _weight(depth_left, weight):
    """float32 ``sqrt(2**depth_left) * weight``, formed in float64 (a piece 2**depth_left leaves wide)."""
    width = tl.full((), 1, tl.int64) << depth_left
    return (tl.sqrt(width.to(tl.float64)) * weight).to(tl.float32)


@triton.jit
def _trailing_zeros(q, depth):
    """Trailing zero bits of the L-bit code q (int64 scalar); L for q = 0."""
    tz = depth + tl.zeros((), tl.int32)
    for d in range(0, depth):
        if ((q >> (depth - 1 - d)) & 1) != 0:
            tz = depth - 1 - d
    return tz


@triton.jit
def _shared_bits(a, b, depth):
    """How many leading bits the L-bit codes of a and b (int64 scalars in [0, 2**L)) share."""
    shared = tl.zeros((), tl.int32)
    for d in range(0, depth):
        if (a >> (depth - 1 - d)) == (b >> (depth - 1 - d)):
            shared = d + 1
    return shared


@triton.jit
def _carry_next(acc, lo, d, bit, depth, write_carry, next_shared, next_weight):
    """acc plus the next step's piece at level d of a's path: lo, the left half, where a goes right
    below the level where a and q_next part (as ``carry_next`` in ``csrc/brownian.h``)."""
    if write_carry & (bit != 0) & (d > next_shared):
        acc = acc + mul(_weight(depth - d - 1, next_weight), lo)
    return acc


@triton.jit
def brownian_increment(seed_ptr, sample_offset, sample, group, q_from, q_to, depth, valid, q_next, carry_ptr, offs,
                       mask, CARRIED: tl.constexpr):
    """float32 ``[G, 4]``: the normalised increments ``(W(t_to) - W(t_from)) / sqrt|t_to - t_from|``
    of the elements ``4 * group + 0..3`` of samples ``sample_offset + sample``.

    ``q_from``, ``q_to``: int64 scalars, the step's tree coordinates; ``depth``: L in [0, 32];
    ``valid``: False (or coordinates that are not two distinct points of the tree) gives NaN.
    Node n's normal of element j is the stream's with counter ``(j // 4, sample, n, BROWNIAN_LANE)``.

    CARRIED: one step of a carried walk (:func:`scoreops.core.brownian.brownian_carried_increment`),
    valid only if it descends (``q_to < q_from``). Its part on b's side of the parting node is
    ``carry[offs]`` (0 where ``q_from = 2**L``) instead of a descent towards b, and where
    ``0 <= q_next < q_to`` it writes ``carry[offs]`` (after reading it) with the next step's:
    ``sum_d float32(sqrt(2**(L - d - 1)) / sqrt(q_to - q_next)) * lo_d`` over the levels d of
    q_to's path where q_to goes right below the level where q_to and q_next part, in increasing d,
    lo_d the left half there. ``carry_ptr + offs`` (float32, masked by ``mask``) is the elements'
    carry; an invalid step leaves it untouched. Without CARRIED, q_next, carry_ptr, offs and mask
    are not read.
    """
    seed = tl.load(seed_ptr)
    sample_word = tl.cast(sample_offset, tl.uint32) + sample.to(tl.uint32)
    top = tl.full((), 1, tl.int64) << depth
    valid = valid & (q_from >= 0) & (q_to >= 0) & (q_from <= top) & (q_to <= top) & (q_from != q_to)
    negate = q_to < q_from
    if CARRIED:
        valid = valid & negate
    # An invalid pair walks a harmless dummy interval, then reads NaN.
    a = tl.where(valid, tl.minimum(q_from, q_to), 0)
    b = tl.where(valid, tl.maximum(q_from, q_to), top)
    weight = 1.0 / tl.sqrt((b - a).to(tl.float64))  # float64: sqrt.rn, div.rn
    if CARRIED:
        # The next step's parting level and weight are read only where it writes the carry.
        write_carry = valid & (q_next >= 0) & (q_next < a)
        next_shared = _shared_bits(a, q_next, depth)
        next_weight = 1.0 / tl.sqrt(tl.where(write_carry, a - q_next, 1).to(tl.float64))

    delta = _node_normals(seed, sample_word, tl.full((), 0, tl.int64), group)  # node 1's increment
    node = tl.full((), 1, tl.int64)
    level = tl.zeros((), tl.int32)
    # The part from the parting node's midpoint to b; for a carried walk, the next carry.
    acc = tl.zeros_like(delta)
    if b != top:
        # The levels both descents share.
        shared = _shared_bits(a, b, depth)
        for d in range(0, shared):
            bit = (a >> (depth - 1 - d)) & 1
            lo, hi = _halves(delta, _node_normals(seed, sample_word, node, group))
            if CARRIED:
                acc = _carry_next(acc, lo, d, bit, depth, write_carry, next_shared, next_weight)
            delta = tl.where(bit != 0, hi, lo)
            node = 2 * node + bit
        # The parting node: a walks its left half, b its right half (a carried walk has b's part).
        lo, hi = _halves(delta, _node_normals(seed, sample_word, node, group))
        delta = lo
        level = shared + 1
        if not CARRIED:
            right = 2 * node + 1
            stop_b = tl.maximum(level, depth - _trailing_zeros(b, depth))
            for d in range(level, stop_b):
                bit = (b >> (depth - 1 - d)) & 1
                lo, hi = _halves(hi, _node_normals(seed, sample_word, right, group))
                if bit != 0:
                    acc = acc + mul(_weight(depth - d - 1, weight), lo)
                hi = tl.where(bit != 0, hi, lo)
                right = 2 * right + bit
        node = 2 * node
    # From a to the right end of the current node: the right halves where a goes left, then the
    # node a is the left end of.
    out = tl.zeros_like(delta)
    stop_a = tl.maximum(level, depth - _trailing_zeros(a, depth))
    for d in range(level, stop_a):
        bit = (a >> (depth - 1 - d)) & 1
        lo, hi = _halves(delta, _node_normals(seed, sample_word, node, group))
        if bit == 0:
            out = out + mul(_weight(depth - d - 1, weight), hi)
        if CARRIED:
            acc = _carry_next(acc, lo, d, bit, depth, write_carry, next_shared, next_weight)
        delta = tl.where(bit != 0, hi, lo)
        node = 2 * node + bit
    out = out + mul(_weight(depth - stop_a, weight), delta)
    if CARRIED:
        # The previous step left b's part here; a walk from the top has none.
        part_b = tl.zeros_like(delta)
        if b != top:
            part_b = tl.load(carry_ptr + offs, mask=mask, other=0.0)
        if write_carry:
            tl.store(carry_ptr + offs, acc, mask=mask)
        out = out + part_b
    else:
        out = out + acc
    out = tl.where(negate, -out, out)
    return tl.where(valid, out, float("nan"))


@triton.jit
def path_increment(seed_ptr, sample_offset, sample, group, step_ptr, path_ptr, points, depth, carry_ptr, offs, mask,
                   CARRIED: tl.constexpr):
    """:func:`brownian_increment` of the step ``k = *step_ptr``, from ``path[k]`` to ``path[k + 1]``
    (both read on the device); NaN where the table of ``points`` entries has no interval k.
    CARRIED: a step of a carried walk whose next end is ``path[k + 2]`` (none past the table)."""
    k = tl.load(step_ptr)
    inside = (k >= 0) & (k < points - 1)
    k = tl.where(inside, k, 0)
    q_from = tl.load(path_ptr + k)
    q_to = tl.load(path_ptr + k + 1)
    q_next = tl.full((), -1, tl.int64)
    if CARRIED:
        q_next = tl.load(path_ptr + k + 2, mask=k + 2 < points, other=-1)
    return brownian_increment(seed_ptr, sample_offset, sample, group, q_from, q_to, depth, inside, q_next,
                              carry_ptr, offs, mask, CARRIED)


def check_path(op: str, path: torch.Tensor | None, depth: int, x: torch.Tensor) -> None:
    """path is None or a 1-D int64 table of at least 2 coordinates on x's device, 0 <= depth <= 32."""
    if path is None:
        return
    if not isinstance(path, torch.Tensor) or path.dtype != torch.int64:
        raise TypeError(f"{op}: path must be an int64 tensor, got "
                        f"{path.dtype if isinstance(path, torch.Tensor) else type(path).__name__}")
    if path.device != x.device:
        raise ValueError(f"{op}: path is on {path.device} but x is on {x.device}")
    if path.dim() != 1 or path.shape[0] < 2:
        raise ValueError(f"{op}: path must be a 1-D table of at least 2 tree coordinates (one per grid point), "
                         f"got shape {tuple(path.shape)}")
    if not 0 <= depth <= brownian.MAX_DEPTH:
        raise ValueError(f"{op}: depth must be in [0, {brownian.MAX_DEPTH}], got {depth}")


def check_carry(op: str, carry: torch.Tensor, x: torch.Tensor, *inputs: torch.Tensor) -> None:
    """carry is a contiguous float32 tensor of x's numel on x's device that shares no memory with x
    or ``inputs`` (the C++ ops' check_carry and assert_no_overlap): the kernel reads them while it
    writes the carry, so even an exact alias would mix them."""
    if not isinstance(carry, torch.Tensor) or carry.dtype != torch.float32:
        raise TypeError(f"{op}: carry must be a float32 tensor, got "
                        f"{carry.dtype if isinstance(carry, torch.Tensor) else type(carry).__name__}")
    if carry.device != x.device:
        raise ValueError(f"{op}: carry is on {carry.device} but x is on {x.device}")
    if not carry.is_contiguous() or carry.numel() != x.numel():
        raise ValueError(f"{op}: carry must be contiguous with x's {x.numel()} elements, got shape "
                         f"{tuple(carry.shape)}")
    for name, t in [("x", x)] + [(f"input {k}", t) for k, t in enumerate(inputs)]:
        if overlaps(carry, t):
            raise RuntimeError(f"{op}: carry overlaps {name}; pass a buffer of its own")
