// CPU noise stream: the vectorised Philox / Box-Muller loops and the philox_bits / philox_normal ops.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "cpu/cpu_kernels.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

namespace scoreops::cpu {

namespace {

// Groups per block of fill_normals; a block's words stay in L1.
constexpr int64_t kBlockGroups = 64;

// Word k of group g0 + g goes to w[k][g] (structure of arrays, for the vector loops).
using WordBlock = uint32_t[4][kBlockGroups];

SCOREOPS_CPU_CLONES
void philox_words_generic(StreamKey key, int64_t g0, int64_t first, int64_t groups, WordBlock& w) {
  for (int64_t g = first; g < groups; ++g) {
    uint32_t word[4];
    philox4x32_10(static_cast<uint32_t>(g0 + g), key, word);
    w[0][g] = word[0];
    w[1][g] = word[1];
    w[2][g] = word[2];
    w[3][g] = word[3];
  }
}

#if defined(__x86_64__) && defined(__GNUC__)
#define SCOREOPS_AVX512_PHILOX 1
// GCC 12's _mm512_undefined_epi32, used inside the shift and multiply intrinsics, trips a false
// -Wmaybe-uninitialized.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// GCC vectorises the generic loop's 32x32->64-bit products as full 64-bit multiplies (three
// vpmuludq and shifts each). Here one vpmuludq makes 8 products: even lanes directly, odd lanes
// after a shift, and blends put the halves back in place. About 3x faster.
__attribute__((target("avx512f"))) inline void mulhilo16(__m512i a, __m512i b, __m512i* hi, __m512i* lo) {
  constexpr __mmask16 kOdd = 0xAAAA;
  const __m512i even = _mm512_mul_epu32(a, b);
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), _mm512_srli_epi64(b, 32));
  *lo = _mm512_mask_blend_epi32(kOdd, even, _mm512_slli_epi64(odd, 32));
  *hi = _mm512_mask_blend_epi32(kOdd, _mm512_srli_epi64(even, 32), odd);
}

// philox_words_generic for groups [0, groups), a multiple of 16, 16 groups per iteration.
__attribute__((target("avx512f"))) void philox_words_avx512(StreamKey key, int64_t g0, int64_t groups, WordBlock& w) {
  const __m512i round_a = _mm512_set1_epi32(static_cast<int32_t>(kPhiloxRoundA));
  const __m512i round_b = _mm512_set1_epi32(static_cast<int32_t>(kPhiloxRoundB));
  const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  for (int64_t g = 0; g < groups; g += 16) {
    __m512i c0 = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int32_t>(g0 + g)), lanes);
    __m512i c1 = _mm512_set1_epi32(static_cast<int32_t>(key.sample));
    __m512i c2 = _mm512_set1_epi32(static_cast<int32_t>(key.step));
    __m512i c3 = _mm512_set1_epi32(static_cast<int32_t>(key.lane));
    uint32_t k0 = key.k0, k1 = key.k1;
    for (int r = 0; r < kPhiloxRounds; ++r) {
      __m512i hi_b, lo_b, hi_a, lo_a;
      mulhilo16(round_b, c2, &hi_b, &lo_b);
      mulhilo16(round_a, c0, &hi_a, &lo_a);
      constexpr int kXor3 = 0x96;  // ternary-logic truth table of a ^ b ^ c
      c0 = _mm512_ternarylogic_epi32(hi_b, c1, _mm512_set1_epi32(static_cast<int32_t>(k0)), kXor3);
      c1 = lo_b;
      c2 = _mm512_ternarylogic_epi32(hi_a, c3, _mm512_set1_epi32(static_cast<int32_t>(k1)), kXor3);
      c3 = lo_a;
      k0 += kPhiloxKeyA;
      k1 += kPhiloxKeyB;
    }
    _mm512_storeu_si512(w[0] + g, c0);
    _mm512_storeu_si512(w[1] + g, c1);
    _mm512_storeu_si512(w[2] + g, c2);
    _mm512_storeu_si512(w[3] + g, c3);
  }
}
#pragma GCC diagnostic pop
#endif

// Words of groups [g0, g0 + groups), groups <= kBlockGroups.
void philox_words(StreamKey key, int64_t g0, int64_t groups, WordBlock& w) {
  int64_t done = 0;
#ifdef SCOREOPS_AVX512_PHILOX
  static const bool has_avx512 = __builtin_cpu_supports("avx512f");
  if (has_avx512) {
    done = groups - groups % 16;
    philox_words_avx512(key, g0, done, w);
  }
#endif
  philox_words_generic(key, g0, done, groups, w);
}

// The 4 normals of each of `groups` groups of words, in element order.
SCOREOPS_CPU_CLONES
void normals_from_words(const WordBlock& w, int64_t groups, float* out) {
  for (int64_t g = 0; g < groups; ++g) {
    box_muller(w[0][g], w[1][g], out + 4 * g, out + 4 * g + 1);
    box_muller(w[2][g], w[3][g], out + 4 * g + 2, out + 4 * g + 3);
  }
}

}  // namespace

void fill_normals(StreamKey key, int64_t j0, int64_t n, float* out) {
  alignas(64) WordBlock w;
  const int64_t g0 = j0 / 4, groups = (n + 3) / 4;
  for (int64_t b = 0; b < groups; b += kBlockGroups) {
    const int64_t m = std::min(kBlockGroups, groups - b), values = std::min(4 * m, n - 4 * b);
    philox_words(key, g0 + b, m, w);
    if (values == 4 * m) {
      normals_from_words(w, m, out + 4 * b);
    } else {  // the sample's last group is partial
      float block[4 * kBlockGroups];
      normals_from_words(w, m, block);
      std::copy_n(block, values, out + 4 * b);
    }
  }
}

BrownianWalk host_walk(const char* op, const at::Tensor& path, int64_t step, int64_t depth, bool carried) {
  const int64_t points = path.size(0);
  TORCH_CHECK_VALUE(step >= 0 && step + 1 < points, op, ": step ", step, " has no interval in the path table of ",
                    points, " points");
  const at::Tensor p = path.contiguous();
  const int64_t q_from = p.const_data_ptr<int64_t>()[step], q_to = p.const_data_ptr<int64_t>()[step + 1];
  BrownianWalk walk = brownian_walk(q_from, q_to, depth);
  TORCH_CHECK_VALUE(walk.valid, op, ": path[", step, "] = ", q_from, " and path[", step + 1, "] = ", q_to,
                    " must be distinct tree coordinates in [0, 2**depth = ", int64_t{1} << depth,
                    "] (-1 marks a grid point that takes no noise)");
  if (carried) {
    brownian_carry(walk, step + 2 < points ? p.const_data_ptr<int64_t>()[step + 2] : -1);
    TORCH_CHECK_VALUE(walk.valid, op, ": a carried walk descends, but path[", step, "] = ", q_from, " < path[",
                      step + 1, "] = ", q_to);
  }
  return walk;
}

namespace {

// The Brownian-tree node normals of elements [begin, begin + n) of one sample: the stream's, with
// the node as the step word and the tree's own lane.
struct TileNormals {
  int64_t seed, sample, begin, n;

  void operator()(uint32_t node, float* z) const {
    fill_normals(stream_key(seed, node, kBrownianLane, sample), begin, n, z);
  }
};

}  // namespace

SCOREOPS_CPU_CLONES
void tile_noise(const StreamArgs& noise, const BrownianWalk* walk, float* carry, const Tile& t, int64_t offset,
                float* z) {
  if (walk == nullptr) {
    fill_normals(noise.key(t.row), t.begin, t.size, z);
    return;
  }
  float delta[kTile], scratch[kTile], part[kTile];
  const TileNormals normals{noise.seed, noise.sample_offset + t.row, t.begin, t.size};
  brownian_increment(*walk, normals, t.size, delta, scratch, part, z, carry == nullptr ? nullptr : carry + offset);
}

SCOREOPS_CPU_CLONES
void fill_words(StreamKey key, int64_t g0, int64_t groups, uint32_t* out) {
  for (int64_t g = 0; g < groups; ++g) {
    philox4x32_10(static_cast<uint32_t>(g0 + g), key, out + 4 * g);
  }
}

SCOREOPS_CPU_CLONES
float sum_squares(const float* v, int64_t n) {
  constexpr int64_t kLanes = 16;
  float acc[kLanes] = {};
  const int64_t body = n - n % kLanes;
  for (int64_t j = 0; j < body; j += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) {
      acc[l] += v[j + l] * v[j + l];
    }
  }
  for (int64_t j = body; j < n; ++j) {
    acc[j - body] += v[j] * v[j];
  }
  float total = 0.0f;
  for (float a : acc) {
    total += a;
  }
  return total;
}

namespace {

at::Tensor philox_bits(const at::Tensor& seed, const at::Tensor& step, int64_t lane, int64_t sample_offset,
                       int64_t batch, int64_t numel) {
  check_philox("philox_bits", seed, step, batch, numel);
  const int64_t words = 4 * ((numel + 3) / 4);
  at::Tensor out = at::empty({batch, words}, seed.options().dtype(at::kInt));
  const int64_t seed_v = read_counter(seed), step_v = read_counter(step);
  auto* data = reinterpret_cast<uint32_t*>(out.mutable_data_ptr<int32_t>());
  for_each_tile(batch, words, [&](int64_t, const Tile& t) {
    const StreamKey key = stream_key(seed_v, step_v, lane, sample_offset + t.row);
    fill_words(key, t.begin / 4, t.size / 4, data + t.offset(words));
  });
  return out;
}

at::Tensor philox_normal(const at::Tensor& seed, const at::Tensor& step, int64_t lane, int64_t sample_offset,
                         int64_t batch, int64_t numel) {
  check_philox("philox_normal", seed, step, batch, numel);
  at::Tensor out = at::empty({batch, numel}, seed.options().dtype(at::kFloat));
  const int64_t seed_v = read_counter(seed), step_v = read_counter(step);
  float* data = out.mutable_data_ptr<float>();
  for_each_tile(batch, numel, [&](int64_t, const Tile& t) {
    const StreamKey key = stream_key(seed_v, step_v, lane, sample_offset + t.row);
    fill_normals(key, t.begin, t.size, data + t.offset(numel));
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(scoreops, CPU, m) {
  m.impl("philox_bits", &philox_bits);
  m.impl("philox_normal", &philox_normal);
}

}  // namespace scoreops::cpu
