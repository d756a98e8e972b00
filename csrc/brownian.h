// The virtual Brownian tree of scoreops.core.brownian for C++ and CUDA: the normalised increment
// (W(t_to) - W(t_from)) / sqrt|t_to - t_from| between two tree coordinates, computed from the node
// where the descents to the two points part, for host and device code.
//
// The walk (which nodes, which halves, which weights) depends only on (q_from, q_to, L), so it is
// the same for every element of a call: brownian_walk() plans it once, and brownian_increment()
// runs it over a block of elements with a caller's source of node normals. Every product and sum
// is rounded in float32 in the reference's order (weights are formed in float64 and rounded once,
// as torch rounds a Python float), so given the same node normals the result is the reference's
// to the bit.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "philox.h"

namespace scoreops {

// Philox lane word of the tree's node normals (scoreops.core.brownian.BROWNIAN_LANE): the top bit,
// which no lane of the step stream sets.
constexpr uint32_t kBrownianLane = 0x80000000u;
// Deepest tree: node numbers live in the 32-bit step word of the counter.
constexpr int64_t kMaxBrownianDepth = 32;

// One increment's walk, the same for every element.
//
// A carried walk (a descending walk's steps k = 0, 1, ... sharing a buffer of one float per
// element) does not descend towards b = q_from: the previous step, which walked the whole path of
// that point as its a, left there the part of this increment below b's side of the parting node.
// It leaves the same for the next step, from the next coordinate q_next < a: the left halves,
// weighted for that step, where a goes right below the level where a and q_next part. So a step
// draws the normals of one path, at most L + 1, and gives the stateless walk's z to the bit.
struct BrownianWalk {
  int64_t a, b;   // the sorted ends, 0 <= a < b <= 2^L
  int depth;      // L
  int shared;     // leading bits the L-bit codes of a and b share (b < 2^L)
  bool to_top;    // b == 2^L: the walk runs down node 1 towards a only
  bool negate;    // q_to < q_from
  bool valid;     // the q values are distinct points of the tree
  double weight;  // 1 / sqrt(b - a)
  bool carried;      // the carry buffer replaces the descent towards b (read unless to_top)
  bool write_carry;  // carried, and the next step descends from a to q_next
  int next_shared;   // leading bits a and q_next share
  double next_weight;  // 1 / sqrt(a - q_next)
};

SCOREOPS_HD int bit_length64(uint64_t v) {
#if defined(__CUDA_ARCH__)
  return v == 0 ? 0 : 64 - __clzll(static_cast<long long>(v));
#else
  return v == 0 ? 0 : 64 - __builtin_clzll(v);
#endif
}

// Trailing zero bits of q as an L-bit code; L for q = 0.
SCOREOPS_HD int tree_trailing_zeros(int64_t q, int depth) {
  if (q == 0) {
    return depth;
  }
#if defined(__CUDA_ARCH__)
  return __ffsll(static_cast<long long>(q)) - 1;
#else
  return __builtin_ctzll(static_cast<uint64_t>(q));
#endif
}

SCOREOPS_HD BrownianWalk brownian_walk(int64_t q_from, int64_t q_to, int64_t depth) {
  BrownianWalk w{};
  w.valid = depth >= 0 && depth <= kMaxBrownianDepth;
  if (!w.valid) {
    return w;
  }
  const int64_t top = int64_t{1} << depth;
  w.valid = q_from >= 0 && q_to >= 0 && q_from <= top && q_to <= top && q_from != q_to;
  if (!w.valid) {
    return w;
  }
  w.depth = static_cast<int>(depth);
  w.negate = q_to < q_from;
  w.a = w.negate ? q_to : q_from;
  w.b = w.negate ? q_from : q_to;
  w.to_top = w.b == top;
  w.shared = w.to_top ? 0 : w.depth - bit_length64(static_cast<uint64_t>(w.a ^ w.b));
  w.weight = 1.0 / std::sqrt(static_cast<double>(w.b - w.a));
  return w;
}

// The float32 weight sqrt(width / (b - a)) of a dyadic piece `width` leaves wide.
SCOREOPS_HD float brownian_weight(const BrownianWalk& w, int64_t width) {
  return static_cast<float>(std::sqrt(static_cast<double>(width)) * w.weight);
}

// Makes w a carried walk whose next coordinate is q_next (negative: none, the walk ends at a).
// Only a descending walk carries; an ascending one becomes invalid.
SCOREOPS_HD void brownian_carry(BrownianWalk& w, int64_t q_next) {
  if (!w.valid) {
    return;
  }
  w.valid = w.negate;
  w.carried = true;
  w.write_carry = w.valid && q_next >= 0 && q_next < w.a;
  if (w.write_carry) {
    w.next_shared = w.depth - bit_length64(static_cast<uint64_t>(w.a ^ q_next));
    w.next_weight = 1.0 / std::sqrt(static_cast<double>(w.a - q_next));
  }
}

// The walk of step `step` of a table of `points` tree coordinates, from q[step] to q[step + 1];
// invalid (NaN increments) where the table has no interval `step`. carried: the walk reads and
// writes a carry buffer, and q[step + 2] (if any) is the next step's end.
SCOREOPS_HD BrownianWalk brownian_table_walk(const int64_t* q, int64_t points, int64_t step, int64_t depth,
                                             bool carried = false) {
  if (step < 0 || step + 1 >= points) {
    return BrownianWalk{};
  }
  BrownianWalk w = brownian_walk(q[step], q[step + 1], depth);
  if (carried) {
    brownian_carry(w, step + 2 < points ? q[step + 2] : -1);
  }
  return w;
}

// The float32 weight of a piece `width` leaves wide in the next step's increment.
SCOREOPS_HD float brownian_next_weight(const BrownianWalk& w, int64_t width) {
  return static_cast<float>(std::sqrt(static_cast<double>(width)) * w.next_weight);
}

// Bit d (most significant first, d < L) of q's L-bit code.
SCOREOPS_HD int tree_bit(int64_t q, int depth, int d) {
  return static_cast<int>((q >> (depth - 1 - d)) & 1);
}

// A node's halves: left = (delta + z) / sqrt 2, right = (delta - z) / sqrt 2, rounded as the
// reference rounds them. keep_right: delta becomes the right half and `other` the left; else
// the reverse. `other` may be z itself (each element is read before it is written).
template <typename Size>
SCOREOPS_HD void brownian_halves(Size n, float* delta, const float* z, float* other, bool keep_right) {
  const float h = static_cast<float>(0.70710678118654752440);
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int64_t k = 0; k < n; ++k) {
    const float lo = (delta[k] + z[k]) * h, hi = (delta[k] - z[k]) * h;
    delta[k] = keep_right ? hi : lo;
    other[k] = keep_right ? lo : hi;
  }
}

// acc += c * v, the product rounded first.
template <typename Size>
SCOREOPS_HD void brownian_axpy(Size n, float c, const float* v, float* acc) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int64_t k = 0; k < n; ++k) {
    acc[k] = acc[k] + c * v[k];
  }
}

template <typename Size>
SCOREOPS_HD void brownian_fill(Size n, float v, float* out) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int64_t k = 0; k < n; ++k) {
    out[k] = v;
  }
}

// The normalised increment of the walk w for n elements: out[k], for the element whose node
// normals normals(node, z) writes into z[k] (node 0: W(t_hi)'s; nodes 1 .. 2^L - 1 the bridges).
// delta, z and acc are scratch of n floats. A carried walk (w.carried) reads carry[k] unless
// w.to_top and writes it if w.write_carry. Size: an integer, or std::integral_constant for a
// fixed block (CUDA: 4 elements in registers). NaN for an invalid walk (carry untouched).
template <typename Normals, typename Size>
SCOREOPS_HD void brownian_increment(const BrownianWalk& w, const Normals& normals, Size n, float* delta, float* z,
                                    float* acc, float* out, float* carry = nullptr) {
  if (!w.valid) {
    brownian_fill(n, NAN, out);
    return;
  }
  const int depth = w.depth;
  const bool carried = w.carried;
  // The next step's part below its parting node: the left halves where a goes right there.
  const auto carry_next = [&](int d) {
    if (carried && w.write_carry && d > w.next_shared) {
      brownian_axpy(n, brownian_next_weight(w, int64_t{1} << (depth - d - 1)), z, acc);
    }
  };
  normals(0u, delta);  // node 1's increment over sqrt(t_hi - t_lo)
  uint32_t node = 1;
  int level = 0;
  brownian_fill(n, 0.0f, acc);
  // Descend the levels the two ends share, then split the parting node: the right half goes to
  // b (kept in out while the left half walks to a; a carried walk has b's part already), the
  // left half to a.
  if (!w.to_top) {
    for (int d = 0; d < w.shared; ++d) {
      const int bit = tree_bit(w.a, depth, d);
      normals(node, z);
      brownian_halves(n, delta, z, z, bit != 0);  // z takes the other half
      if (bit) {
        carry_next(d);
      }
      node = 2 * node + static_cast<uint32_t>(bit);
    }
    normals(node, z);
    level = w.shared + 1;
    // A carried walk drops b's half. A branch, not a select between the arrays' pointers, which
    // would put them in local memory on CUDA.
    if (carried) {
      brownian_halves(n, delta, z, z, false);
    } else {
      brownian_halves(n, delta, z, out, false);
      // From the left end of the right half to b: the left halves of the nodes where b goes right.
      uint32_t right = 2 * node + 1;
      const int stop_b = std::max(level, depth - tree_trailing_zeros(w.b, depth));
      for (int d = level; d < stop_b; ++d) {
        const int bit = tree_bit(w.b, depth, d);
        normals(right, z);
        brownian_halves(n, out, z, z, bit != 0);  // z takes the other half
        if (bit) {
          brownian_axpy(n, brownian_weight(w, int64_t{1} << (depth - d - 1)), z, acc);
        }
        right = 2 * right + static_cast<uint32_t>(bit);
      }
    }
    node = 2 * node;
    // delta holds the left half's increment; out is free again: it takes the walk to a.
  }
  // From a to the right end of the current node: the right halves of the nodes where a goes left.
  // acc holds the part towards b (zeros when to_top; a carried walk's next carry); out
  // accumulates the part towards a.
  brownian_fill(n, 0.0f, out);
  const int stop_a = std::max(level, depth - tree_trailing_zeros(w.a, depth));
  for (int d = level; d < stop_a; ++d) {
    const int bit = tree_bit(w.a, depth, d);
    normals(node, z);
    brownian_halves(n, delta, z, z, bit != 0);  // z takes the other half
    if (!bit) {
      brownian_axpy(n, brownian_weight(w, int64_t{1} << (depth - d - 1)), z, out);
    } else {
      carry_next(d);
    }
    node = 2 * node + static_cast<uint32_t>(bit);
  }
  // a is the left end of the node it stopped at: the whole node lies in [a, b].
  brownian_axpy(n, brownian_weight(w, int64_t{1} << (depth - stop_a)), delta, out);
  const float sign = w.negate ? -1.0f : 1.0f;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int64_t k = 0; k < n; ++k) {
    const float part_b = !carried ? acc[k] : w.to_top ? 0.0f : carry[k];
    out[k] = (out[k] + part_b) * sign;
    if (carried && w.write_carry) {
      carry[k] = acc[k];
    }
  }
}

// The node normals of one group of 4 elements (group g of sample `sample`): the stream's normals
// with counter (g, sample, node, kBrownianLane).
struct BrownianGroupNormals {
  uint32_t group;
  int64_t seed;
  int64_t sample;

  SCOREOPS_HD void operator()(uint32_t node, float* z) const {
    philox_normal4(group, stream_key(seed, node, kBrownianLane, sample), z);
  }
};

}  // namespace scoreops
