"""A counter-based virtual Brownian tree on the scoreops noise stream, in plain torch.

The stochastic samplers can draw their step noise from one Brownian path W instead of i.i.d.
normals: ``z_k = (W(t_{k+1}) - W(t_k)) / sqrt|t_{k+1} - t_k|`` (k-diffusion's
``BrownianTreeNoiseSampler``, torchsde's ``BrownianTree``). On one grid the law is the same as
i.i.d. noise; the gain is that W is a fixed function of (seed, sample, element, t), so a finer
grid through the same points walks the same path and its increments sum to the coarse ones.

**The tree.** ``t`` is the tree variable (sigma for the sigma-space samplers, t for the t-grid
samplers). The tree spans ``[t_lo, t_hi]``, the smallest positive and the largest value of the
grid, and has depth ``L = ceil(log2((t_hi - t_lo) / tol))``: its leaves are cells of width
``(t_hi - t_lo) / 2**L <= tol``. Neither depends on the number of steps, so grids of N and 2N - 1
points with the same ends share one tree. ``tol`` is absolute, in units of t, default 1e-6, as
torchsde's and k-diffusion's (L = 24 on the VE sigma range [0.0317, 9.85]): what it must resolve
is the smallest step, and the smallest steps sit at small t, whatever the range.

A grid point snaps to the integer ``q = round(2**L (t - t_lo) / (t_hi - t_lo))`` in ``[0, 2**L]``
(an int64 table made once on the host beside the grid, :meth:`BrownianTree.grid_table`) and to the
time ``t_lo + q (t_hi - t_lo) / 2**L``. Increments are normalised by the snapped step, so z is
exactly N(0, 1) and consecutive increments are exactly independent.

**The path.** ``W(t_lo) = 0``, ``W(t_hi) = sqrt(t_hi - t_lo) Z_0``; node ``n`` (node 1 is
``[t_lo, t_hi]``, node n's halves are 2n and 2n + 1) spanning ``[s, u]`` sets its midpoint by the
Brownian bridge ``W(m) = (W(s) + W(u)) / 2 + sqrt(u - s) / 2 Z_n``. W at q is found by descending
L levels from node 1, taking the half given by the next bit of q (most significant first).

**The normals.** ``Z_n`` of element j of sample i is normal number ``j % 4`` of the Philox call
with counter ``(j // 4, sample_offset + i, n, BROWNIAN_LANE)``: the i.i.d. stream's layout
(:mod:`.noise`) with the node in the step word and a lane of its own. The step stream's lanes are
0 (predictor), 1 + r (corrector r) and ``PRIOR_LANE = 2**31 - 1``, all below 2**31;
``BROWNIAN_LANE = 2**31`` is the first value with the top bit set, so the two streams never meet.
Nodes need ``n < 2**L <= 2**32``: L is at most :data:`MAX_DEPTH` = 32.

**The increment** is computed from the node where the paths to its two ends part, not as
``W(t') - W(t)``: that difference of two O(sqrt(t_hi - t_lo)) numbers loses most float32 digits
of a fine step. Each node carries its own increment normalised by the square root of its width,
``delta``; a node's halves get ``(delta + Z_n) / sqrt 2`` (left) and ``(delta - Z_n) / sqrt 2``
(right), so every number stays O(1), and the increment over ``[a, b]`` is the sum of the dyadic
pieces between a and b, each weighted by ``sqrt(width / (b - a))``. A descent stops as soon as the
point is the left end of its node.

Normals per element (:func:`normals_per_element`): W at one point takes ``L + 1``; an increment
between ``a < b < 2**L`` whose L-bit codes share their first ``c`` bits takes
``2 + c + max(0, L - 1 - c - tz(a)) + (L - 1 - c - tz(b))`` (``tz``: trailing zero bits; tz(0) = L),
at most ``2L - c <= 2L``; with ``b = 2**L``, ``1 + max(0, L - tz(a))``. At L = 24: at most 48,
against 1 for i.i.d. noise.

**Carried walks.** A sampler's steps walk the grid downwards, each step's ``a`` the next step's
``b``. The part of step k + 1's increment on b's side of its parting node (the left halves where b
goes right, below that node) lies on the path to b, which step k walks whole: a step that keeps it
in a float per element (the *carry*, :func:`brownian_carried_increment`) draws one path's normals,
``1 + max(c + 1, L - tz(a))`` (``1 + L - tz(a)`` from the top), at most ``L + 1``, and sums the same
float32 numbers in the same order, so its z is the stateless one to the bit.

**Sign.** ``z = (W(t_to) - W(t_from)) / sqrt|t_to - t_from|``, as k-diffusion's
``W(sigma') - W(sigma)`` with ``sigma' < sigma`` in the reverse samplers; N(0, 1) either way.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Callable

import torch

from .checks import check_int, check_positive, check_sample_range
from .noise import philox_normal

#: Philox lane word of the tree's node normals: the top bit, which no lane of the step stream sets.
BROWNIAN_LANE = 0x80000000
#: Deepest tree: node numbers live in the 32-bit step word of the counter.
MAX_DEPTH = 32
#: Default absolute tolerance (leaf width) in units of the tree variable, as torchsde's.
DEFAULT_TOL = 1e-6
#: Entry of :meth:`BrownianTree.grid_table` for a grid point at t = 0 (the final denoise of a
#: sigma grid), which takes no noise; :func:`brownian_increment` rejects it.
NO_POINT = -1

_SQRT_HALF = math.sqrt(0.5)


def tree_depth(t_lo: float, t_hi: float, tol: float = DEFAULT_TOL) -> int:
    """Depth ``L = max(0, ceil(log2((t_hi - t_lo) / tol)))`` of the tree on ``[t_lo, t_hi]``."""
    t_lo, t_hi, tol = _check_range(t_lo, t_hi, tol)
    depth = max(0, math.ceil(math.log2((t_hi - t_lo) / tol)))
    if depth > MAX_DEPTH:
        raise ValueError(f"tol={tol:g} on [{t_lo:g}, {t_hi:g}] needs a tree of depth {depth}, deeper than "
                         f"{MAX_DEPTH} (node numbers are 32-bit): pass a larger tol")
    return depth


def _check_range(t_lo, t_hi, tol) -> tuple[float, float, float]:
    t_lo, t_hi = float(t_lo), float(t_hi)
    if not (math.isfinite(t_lo) and math.isfinite(t_hi) and 0 <= t_lo < t_hi):
        raise ValueError(f"the Brownian tree needs finite 0 <= t_lo < t_hi, got t_lo={t_lo!r}, t_hi={t_hi!r}")
    return t_lo, t_hi, check_positive("tol", tol)


@dataclass(frozen=True)
class BrownianTree:
    """The parameters of one virtual Brownian tree: ``[t_lo, t_hi]`` and depth ``L``.

    Build it with :meth:`from_grid` (or :meth:`from_range`); it holds no noise, which comes from
    (seed, sample, element) at each call.
    """

    t_lo: float
    t_hi: float
    depth: int

    def __post_init__(self):
        _check_range(self.t_lo, self.t_hi, 1.0)
        check_int("depth", self.depth, 0)
        if self.depth > MAX_DEPTH:
            raise ValueError(f"depth must be at most {MAX_DEPTH}, got {self.depth}")

    @classmethod
    def from_range(cls, t_lo: float, t_hi: float, tol: float = DEFAULT_TOL) -> BrownianTree:
        """The tree on ``[t_lo, t_hi]`` with leaves at most ``tol`` wide (absolute, units of t)."""
        depth = tree_depth(t_lo, t_hi, tol)
        return cls(float(t_lo), float(t_hi), depth)

    @classmethod
    def from_grid(cls, grid, tol: float = DEFAULT_TOL) -> BrownianTree:
        """The tree of a grid of the tree variable: on [smallest positive, largest] value.

        Args:
            grid: 1-D values of the tree variable (sigmas or times), any order; zeros (a sigma
                grid's final denoise) are allowed and ignored, negative values are not.
            tol: absolute leaf width bound, in units of the grid.
        """
        g = _check_grid(grid)
        positive = g[g > 0]
        if positive.numel() < 2:
            raise ValueError(f"the Brownian tree needs at least two distinct positive grid points, got {g.tolist()}")
        return cls.from_range(float(positive.min()), float(positive.max()), tol)

    @property
    def cells(self) -> int:
        """``2**L``, the number of leaves; q runs over ``[0, 2**L]``."""
        return 1 << self.depth

    def snap(self, t) -> torch.Tensor:
        """The int64 tree coordinate q of each time in ``[t_lo, t_hi]`` (float64 arithmetic, CPU)."""
        t = torch.as_tensor(t, dtype=torch.float64).cpu()
        if not bool(((t >= self.t_lo) & (t <= self.t_hi)).all()):
            raise ValueError(f"times must lie in the tree's [{self.t_lo:g}, {self.t_hi:g}], got {t.tolist()}")
        q = torch.round((t - self.t_lo) * (self.cells / (self.t_hi - self.t_lo)))
        return q.clamp(0, self.cells).to(torch.int64)  # t_hi may round a hair past 2**L

    def time(self, q) -> torch.Tensor:
        """The snapped time ``t_lo + q (t_hi - t_lo) / 2**L`` of tree coordinates q (float64)."""
        q = _check_q("q", torch.as_tensor(q, dtype=torch.int64), self.depth)
        return self.t_lo + q.to(torch.float64) * ((self.t_hi - self.t_lo) / self.cells)

    def grid_table(self, grid) -> torch.Tensor:
        """The int64 q table beside a grid: one entry per point, :data:`NO_POINT` where t = 0.

        Raises if two consecutive noisy points snap to the same q (a step below the tree's
        resolution, whose increment would be 0/0): build the tree with a smaller tol.
        """
        g = _check_grid(grid)
        table = torch.full(g.shape, NO_POINT, dtype=torch.int64)
        noisy = g > 0
        table[noisy] = self.snap(g[noisy])
        both = noisy[1:] & noisy[:-1]
        same = both & (table[1:] == table[:-1])
        if bool(same.any()):
            k = int(same.nonzero()[0, 0])
            raise ValueError(f"grid points {k} and {k + 1} ({float(g[k]):.9g}, {float(g[k + 1]):.9g}) snap to the same "
                             f"tree point: the step is below the leaf width {(self.t_hi - self.t_lo) / self.cells:.3g}; "
                             f"pass a smaller tol")
        return table

    def increment(self, seed: int, q_from: int, q_to: int, batch: int, numel: int, sample_offset: int = 0,
                  device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """:func:`brownian_increment` on this tree."""
        return brownian_increment(seed, q_from, q_to, self.depth, batch, numel, sample_offset, device, dtype)

    def value(self, seed: int, q: int, batch: int, numel: int, sample_offset: int = 0, device=None,
              dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """W at the snapped time of q, in units of ``sqrt(t)``: :func:`brownian_w` times ``sqrt(leaf width)``."""
        w = brownian_w(seed, q, self.depth, batch, numel, sample_offset, device, dtype)
        return w * math.sqrt((self.t_hi - self.t_lo) / self.cells)


def _check_grid(grid) -> torch.Tensor:
    g = torch.as_tensor(grid, dtype=torch.float64).cpu()
    if g.dim() != 1 or g.numel() == 0:
        raise ValueError(f"the grid must be a non-empty 1-D sequence, got shape {tuple(g.shape)}")
    if not bool(torch.isfinite(g).all()) or bool((g < 0).any()):
        raise ValueError(f"the grid must be finite and >= 0, got {g.tolist()}")
    return g


def _check_q(name: str, q: torch.Tensor, depth: int) -> torch.Tensor:
    if bool(((q < 0) | (q > 1 << depth)).any()):
        raise ValueError(f"{name} must lie in [0, 2**L = {1 << depth}] (L = {depth}; {NO_POINT} marks a grid point "
                         f"at t = 0, which takes no noise), got {q.tolist()}")
    return q


def _check_point(name: str, q, depth: int) -> int:
    try:
        if isinstance(q, bool):
            raise TypeError
        q = operator.index(q)
    except TypeError:
        raise ValueError(f"{name} must be an int, got {q!r}") from None
    _check_q(name, torch.tensor(q), depth)
    return q


def _check_depth(depth) -> int:
    depth = check_int("L", depth, 0)
    if depth > MAX_DEPTH:
        raise ValueError(f"L must be at most {MAX_DEPTH}, got {depth}")
    return depth


def shared_bits(a: int, b: int, depth: int) -> int:
    """How many leading bits the L-bit codes of ``a != b`` in ``[0, 2**L)`` share: the depth of
    the node where the descents to a and b part."""
    return depth - (a ^ b).bit_length()


def _trailing_zeros(q: int, depth: int) -> int:
    return depth if q == 0 else (q & -q).bit_length() - 1


def normals_per_element(q_from: int, q_to: int, depth: int, carried: bool = False) -> int:
    """Distinct node normals a kernel draws per element for one increment.

    Stateless (:func:`brownian_increment`): ``2 + c + max(0, L-1-c-tz(a)) + (L-1-c-tz(b))`` for
    ``a < b < 2**L`` sharing c leading bits, ``1 + max(0, L - tz(a))`` for ``b = 2**L`` (a, b the
    sorted ends); at most ``2L``. Carried (a descending step, ``q_to < q_from``, of
    :func:`brownian_carried_increment`): the normals of the path to ``a = q_to`` down to the
    parting node's left half or further, ``1 + max(c + 1, L - tz(a))`` (``1 + L - tz(a)`` for
    ``b = 2**L``); at most ``L + 1``.
    """
    depth = _check_depth(depth)
    q_from, q_to = _check_point("q_from", q_from, depth), _check_point("q_to", q_to, depth)
    _check_pair(q_from, q_to)
    nodes = set()

    def count(n: int) -> torch.Tensor:
        nodes.add(n)
        return torch.zeros(())

    a, b = min(q_from, q_to), max(q_from, q_to)
    if carried:
        _check_descends(q_from, q_to)
        _walk_parts(a, b, depth, count, b_side=False)
    else:
        _walk(a, b, depth, count)
    return len(nodes)


def _check_descends(q_from: int, q_to: int) -> None:
    if q_to > q_from:
        raise ValueError(f"a carried walk descends: q_to must be below q_from, got {q_from} -> {q_to}")


def _check_pair(q_from: int, q_to: int) -> None:
    if q_from == q_to:
        raise ValueError(f"q_from and q_to must differ (a zero step has no normalised increment), got {q_from}")


def _halves(delta: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalised increments of a node's left and right halves."""
    return (delta + z) * _SQRT_HALF, (delta - z) * _SQRT_HALF


def _to_right_end(a: int, depth: int, node: int, level: int, delta, weight: float, normal) -> torch.Tensor:
    """``(W(u) - W(a)) * weight / sqrt(leaf)`` for a in node ``[s, u)`` at ``level`` with increment delta."""
    acc = 0.0
    for d in range(level, depth + 1):
        width = 1 << (depth - d)
        if a & (width - 1) == 0:  # a is the node's left end: the whole node lies in [a, u]
            return acc + math.sqrt(width) * weight * delta
        bit = (a >> (depth - 1 - d)) & 1
        lo, hi = _halves(delta, normal(node))
        if bit:
            delta, node = hi, 2 * node + 1
        else:
            acc = acc + math.sqrt(width // 2) * weight * hi
            delta, node = lo, 2 * node
    raise AssertionError("unreachable: every point is the left end of its leaf")


def _from_left_end(b: int, depth: int, node: int, level: int, delta, weight: float, normal) -> torch.Tensor:
    """``(W(b) - W(s)) * weight / sqrt(leaf)`` for b in node ``[s, u)`` at ``level`` with increment delta."""
    acc = 0.0
    for d in range(level, depth):
        width = 1 << (depth - d)
        if b & (width - 1) == 0:  # b is the node's left end: nothing left to add
            break
        bit = (b >> (depth - 1 - d)) & 1
        lo, hi = _halves(delta, normal(node))
        if bit:
            acc = acc + math.sqrt(width // 2) * weight * lo
            delta, node = hi, 2 * node + 1
        else:
            delta, node = lo, 2 * node
    return acc


def _walk_parts(a: int, b: int, depth: int, normal: Callable[[int], torch.Tensor], b_side: bool = True):
    """The two parts of ``(W(b) - W(a)) / sqrt(t_b - t_a)`` for ``0 <= a < b <= 2**L``, from the
    parting node: a's side (to the node's midpoint) and b's (None for ``b = 2**L``, or unless b_side)."""
    weight = 1.0 / math.sqrt(b - a)
    delta = normal(0)  # node 1's increment over sqrt(t_hi - t_lo)
    if b == 1 << depth:
        return _to_right_end(a, depth, 1, 0, delta, weight, normal), None
    node, c = 1, shared_bits(a, b, depth)
    for d in range(c):
        bit = (a >> (depth - 1 - d)) & 1
        lo, hi = _halves(delta, normal(node))
        delta, node = (hi if bit else lo), 2 * node + bit
    lo, hi = _halves(delta, normal(node))
    a_part = _to_right_end(a, depth, 2 * node, c + 1, lo, weight, normal)
    return a_part, _from_left_end(b, depth, 2 * node + 1, c + 1, hi, weight, normal) if b_side else None


def _walk(a: int, b: int, depth: int, normal: Callable[[int], torch.Tensor]) -> torch.Tensor:
    """``(W(b) - W(a)) / sqrt(t_b - t_a)`` for ``0 <= a < b <= 2**L``, from the parting node."""
    a_part, b_part = _walk_parts(a, b, depth, normal)
    return a_part if b_part is None else a_part + b_part


def node_normal(seed: int, node: int, batch: int, numel: int, sample_offset: int = 0, device=None) -> torch.Tensor:
    """The tree's normal Z_node for every element: float32 (batch, numel), node 0 = W(t_hi)'s."""
    return philox_normal(seed, node, BROWNIAN_LANE, batch, numel, sample_offset, device)


def _normal_source(seed, batch, numel, sample_offset, device, dtype):
    check_int("batch", batch, 1)
    check_int("numel", numel, 1)
    check_int("sample_offset", sample_offset, 0)
    check_sample_range(sample_offset, batch)
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating torch dtype, got {dtype!r}")
    return lambda n: node_normal(seed, n, batch, numel, sample_offset, device).to(dtype)


def brownian_increment(seed: int, q_from: int, q_to: int, L: int, batch: int, numel: int, sample_offset: int = 0,
                       device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Normalised Brownian increments ``(W(t_to) - W(t_from)) / sqrt|t_to - t_from|`` ~ N(0, 1).

    Computed from the node where the paths to the two points part (module docstring), so a fine
    step keeps its float32 accuracy.

    Args:
        seed: the stream's 64-bit key.
        q_from, q_to: distinct tree coordinates in ``[0, 2**L]`` (:meth:`BrownianTree.grid_table`).
        L: tree depth, ``0 <= L <= 32``.
        batch, numel: output shape; row i is global sample ``sample_offset + i``, column j element j.
        sample_offset: global index of the first sample.
        device: where the normals are made.
        dtype: arithmetic dtype (the normals themselves are float32).
    Returns:
        (batch, numel) tensor of dtype.
    """
    depth = _check_depth(L)
    q_from, q_to = _check_point("q_from", q_from, depth), _check_point("q_to", q_to, depth)
    _check_pair(q_from, q_to)
    normal = _normal_source(seed, batch, numel, sample_offset, device, dtype)
    z = _walk(min(q_from, q_to), max(q_from, q_to), depth, normal)
    return z if q_to > q_from else -z


def brownian_carried_increment(seed: int, q_from: int, q_to: int, q_next: int | None, L: int, carry: torch.Tensor,
                               sample_offset: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One step of a carried walk: :func:`brownian_increment` from ``q_from`` down to ``q_to``, with
    b's part of it taken from ``carry`` (module docstring, "Carried walks"), and the next carry.

    Args:
        seed, L, sample_offset: as :func:`brownian_increment`.
        q_from, q_to: tree coordinates with ``0 <= q_to < q_from <= 2**L``.
        q_next: the next step's end, ``0 <= q_next < q_to``, or None when the walk stops at q_to.
        carry: float32 (batch, numel): what the previous step of the walk returned as its next
            carry; not read when ``q_from = 2**L`` (the first step of a walk from the top).
    Returns:
        ``(z, next_carry)``: z float32 (batch, numel) ~ N(0, 1), the stateless increment to the
        bit; next_carry (None without q_next) is b's part of the next step's increment.
    """
    depth = _check_depth(L)
    q_from, q_to = _check_point("q_from", q_from, depth), _check_point("q_to", q_to, depth)
    _check_pair(q_from, q_to)
    _check_descends(q_from, q_to)
    if not (isinstance(carry, torch.Tensor) and carry.dtype == torch.float32 and carry.dim() == 2):
        raise ValueError(f"carry must be a float32 (batch, numel) tensor, got {carry!r:.80}")
    batch, numel = carry.shape
    normal = _normal_source(seed, batch, numel, sample_offset, carry.device, torch.float32)
    a_part, _ = _walk_parts(q_to, q_from, depth, normal, b_side=False)
    z = -(a_part if q_from == 1 << depth else a_part + carry)
    if q_next is None:
        return z, None
    q_next = _check_point("q_next", q_next, depth)
    _check_descends(q_to, q_next)
    _check_pair(q_to, q_next)
    _, next_carry = _walk_parts(q_next, q_to, depth, normal)
    return z, torch.as_tensor(next_carry, dtype=torch.float32, device=carry.device).expand(batch, numel)


def brownian_w(seed: int, q: int, L: int, batch: int, numel: int, sample_offset: int = 0, device=None,
               dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """W at tree coordinate q by plain descent, in units of ``sqrt(leaf width)``: (batch, numel).

    ``W(0) = 0``, ``W(2**L) = 2**(L/2) Z_0``; L levels of the bridge from node 1 (L + 1 normals).
    Differences of these lose precision in float32; use :func:`brownian_increment` for steps.
    """
    depth = _check_depth(L)
    q = _check_point("q", q, depth)
    normal = _normal_source(seed, batch, numel, sample_offset, device, dtype)
    w_hi = math.sqrt(1 << depth) * normal(0)
    if q == 1 << depth:
        return w_hi
    w_lo, node = torch.zeros_like(w_hi), 1
    for d in range(depth):
        half = 1 << (depth - 1 - d)  # half the node's width, in leaves
        mid = 0.5 * (w_lo + w_hi) + math.sqrt(half / 2) * normal(node)  # sqrt(2 half) / 2
        bit = (q >> (depth - 1 - d)) & 1
        w_lo, w_hi, node = (mid, w_hi, 2 * node + 1) if bit else (w_lo, mid, 2 * node)
    return w_lo
