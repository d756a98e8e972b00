// The scoreops noise stream for C++ and CUDA: Philox4x32-10 and the word -> uniform -> normal
// transform of docs/kernels.md, as one set of inline functions for host and device code.
//
// The transform uses its own float32 log and sincos (polynomials below) instead of the C/CUDA
// library's, so that the CPU kernels can vectorise it (the functions are branch-free; loops over
// them auto-vectorise) and so that host and device compute the same bits: build the host side
// with -ffp-contract=off and the device side with -fmad=false, so neither fuses a*b+c.
// Largest errors on every float the stream feeds them (csrc/tools/check_transcendentals.cpp):
// log_positive 0.86 ulp on [1e-7, 1), sin and cos 0.80 ulp on [0, 2 pi]. The polynomial
// coefficients come from csrc/tools/fit_transcendentals.py.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define SCOREOPS_HD __host__ __device__ __forceinline__
#else
#define SCOREOPS_HD inline
#endif

namespace scoreops {

constexpr uint32_t kPhiloxKeyA = 0x9E3779B9u;
constexpr uint32_t kPhiloxKeyB = 0xBB67AE85u;
constexpr uint32_t kPhiloxRoundA = 0xD2511F53u;
constexpr uint32_t kPhiloxRoundB = 0xCD9E8D57u;
constexpr int kPhiloxRounds = 10;

// Word to uniform and Box-Muller constants of the stream (float32 values of the reference's).
constexpr float kUniformScale = 4.6566127342e-10f;
constexpr float kTwoPi = 6.2831855f;
constexpr float kU1Min = 1.0e-7f;

// Counter words that are the same for every element of one sample: (c1, c2, c3) and the key.
struct StreamKey {
  uint32_t sample;  // c1 = sample_offset + i
  uint32_t step;    // c2
  uint32_t lane;    // c3
  uint32_t k0, k1;  // seed low and high words
};

SCOREOPS_HD StreamKey stream_key(int64_t seed, int64_t step, int64_t lane, int64_t sample) {
  const uint64_t s = static_cast<uint64_t>(seed);
  return {static_cast<uint32_t>(sample), static_cast<uint32_t>(step), static_cast<uint32_t>(lane),
          static_cast<uint32_t>(s), static_cast<uint32_t>(s >> 32)};
}

SCOREOPS_HD uint32_t mulhilo(uint32_t a, uint32_t b, uint32_t* hi) {
#if defined(__CUDA_ARCH__)
  *hi = __umulhi(a, b);
  return a * b;
#else
  const uint64_t p = static_cast<uint64_t>(a) * b;
  *hi = static_cast<uint32_t>(p >> 32);
  return static_cast<uint32_t>(p);
#endif
}

// Philox4x32-10 of counter (c0, key.sample, key.step, key.lane) under key (key.k0, key.k1).
SCOREOPS_HD void philox4x32_10(uint32_t c0, const StreamKey& key, uint32_t w[4]) {
  uint32_t c1 = key.sample, c2 = key.step, c3 = key.lane, k0 = key.k0, k1 = key.k1;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int r = 0; r < kPhiloxRounds; ++r) {
    uint32_t hi_b, hi_a;
    const uint32_t lo_b = mulhilo(kPhiloxRoundB, c2, &hi_b);
    const uint32_t lo_a = mulhilo(kPhiloxRoundA, c0, &hi_a);
    c0 = hi_b ^ c1 ^ k0;
    c1 = lo_b;
    c2 = hi_a ^ c3 ^ k1;
    c3 = lo_a;
    k0 += kPhiloxKeyA;
    k1 += kPhiloxKeyB;
  }
  w[0] = c0;
  w[1] = c1;
  w[2] = c2;
  w[3] = c3;
}

SCOREOPS_HD int32_t float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_int(x);
#else
  int32_t i;
  std::memcpy(&i, &x, sizeof i);
  return i;
#endif
}

SCOREOPS_HD float bits_float(int32_t i) {
#if defined(__CUDA_ARCH__)
  return __int_as_float(i);
#else
  float x;
  std::memcpy(&x, &i, sizeof x);
  return x;
#endif
}

SCOREOPS_HD float sqrt_rn(float x) {
#if defined(__CUDA_ARCH__)
  return __fsqrt_rn(x);
#else
  return std::sqrt(x);  // sqrtss; vectorises with -fno-math-errno
#endif
}

// Natural log of a positive, finite, normal float.
// x = 2^e m with m in [sqrt(1/2), sqrt(2)), so f = m - 1 is exact and
// log x = e ln2 + f - f^2/2 + f^3 P(f), with ln2 split so that e * kLn2Hi is exact.
// P: minimax fit of (log1p(f) - f + f^2/2) / f^3 on [sqrt(1/2) - 1, sqrt(2) - 1].
SCOREOPS_HD float log_positive(float x) {
  constexpr int32_t kSqrtHalfBits = 0x3f3504f3;
  constexpr float kLn2Hi = 0x1.63p-1f;        // 0.693359375, 10 significant bits
  constexpr float kLn2Lo = -0x1.bd0106p-13f;  // ln 2 - kLn2Hi
  const int32_t ix = float_bits(x) - kSqrtHalfBits;
  const int32_t e = ix >> 23;  // arithmetic shift: floor(ix / 2^23)
  const float f = bits_float((ix & 0x007fffff) + kSqrtHalfBits) - 1.0f;
  const float fe = static_cast<float>(e);
  float p = -0.07634499f;
  p = p * f + 0.12761581f;
  p = p * f + -0.13160183f;
  p = p * f + 0.14201757f;
  p = p * f + -0.16623357f;
  p = p * f + 0.20001227f;
  p = p * f + -0.2500082f;
  p = p * f + 0.3333333f;
  const float f2 = f * f;
  float y = f * f2 * p;
  y = y + fe * kLn2Lo;
  y = y - 0.5f * f2;
  return (f + y) + fe * kLn2Hi;
}

// sin and cos of th for |th| <= 8 pi.
// th = k pi/2 + r with |r| <= pi/4; pi/2 = kPio2A + kPio2B + kPio2C (Cody-Waite) where the first
// two have 20 significant bits, so k * kPio2A and k * kPio2B are exact for |k| <= 16.
// sin r = r + r^3 S(r^2), cos r = 1 - r^2/2 + r^4 C(r^2): minimax fits on |r| <= pi/4 + 0.002.
SCOREOPS_HD void sincos_small(float th, float* s, float* c) {
  constexpr float kTwoOverPi = 0x1.45f306p-1f;
  constexpr float kRoundMagic = 0x1.8p+23f;  // adding it rounds |v| < 2^22 to an integer
  constexpr float kPio2A = 0x1.921fcp+0f;
  constexpr float kPio2B = -0x1.5777ap-21f;
  constexpr float kPio2C = -0x1.73dcb4p-43f;
  const float shifted = th * kTwoOverPi + kRoundMagic;
  const int32_t q = float_bits(shifted) & 3;  // k mod 4: k sits in the low mantissa bits
  const float k = shifted - kRoundMagic;
  // r = r_hi + r_lo: the first subtraction is exact (Sterbenz); 2Sum keeps the second one's
  // rounding error, so the reduced argument carries ~48 bits.
  const float r1 = th - k * kPio2A;
  const float kb = k * kPio2B;
  const float r = r1 - kb;
  const float rb = r - r1;
  const float r_lo = ((r1 - (r - rb)) + (-kb - rb)) - k * kPio2C;
  const float z = r * r;
  const float hz = 0.5f * z;
  const float w = 1.0f - hz;

  float ps = 2.71793e-06f;
  ps = ps * z + -0.00019839293f;
  ps = ps * z + 0.008333329f;
  ps = ps * z + -0.16666667f;
  // sin(r + r_lo) ~ sin r + r_lo (1 - r^2/2)
  const float sin_r = r + (r * z * ps + r_lo * w);

  float pc = 2.443126e-05f;
  pc = pc * z + -0.00138873f;
  pc = pc * z + 0.041666646f;
  // cos(r + r_lo) ~ cos r - r r_lo; ((1 - w) - hz) is the rounding error of w = 1 - r^2/2.
  const float cos_r = w + (((1.0f - w) - hz) + (z * z * pc - r * r_lo));

  // Quadrant k mod 4 maps (sin, cos) to (sin r, cos r), (cos r, -sin r), (-sin r, -cos r), (-cos r, sin r).
  const float sv = (q & 1) ? cos_r : sin_r;
  const float cv = (q & 1) ? sin_r : cos_r;
  *s = (q & 2) ? -sv : sv;
  *c = ((q + 1) & 2) ? -cv : cv;
}

// A stream word as a uniform in [0, 1): bit-cast to int32, fold negatives with ~, scale.
SCOREOPS_HD float uniform_from_word(uint32_t w) {
  const int32_t x = static_cast<int32_t>(w);
  return static_cast<float>(x < 0 ? ~x : x) * kUniformScale;
}

// Two standard normals from two stream words (Box-Muller): (r cos th, r sin th).
SCOREOPS_HD void box_muller(uint32_t w1, uint32_t w2, float* n1, float* n2) {
  // max(u1, kU1Min) on the bit patterns, which order like the values for u1 >= 0: a float
  // select here lets GCC split the loop around it (log of a constant), which blocks vectorising.
  const int32_t u1_bits = float_bits(uniform_from_word(w1));
  const float u1 = bits_float(u1_bits < float_bits(kU1Min) ? float_bits(kU1Min) : u1_bits);
  const float r = sqrt_rn(-2.0f * log_positive(u1));
  float s, c;
  sincos_small(kTwoPi * uniform_from_word(w2), &s, &c);
  *n1 = r * c;
  *n2 = r * s;
}

// The four normals of group c0 (elements 4 c0 .. 4 c0 + 3) of the sample that `key` names.
SCOREOPS_HD void philox_normal4(uint32_t c0, const StreamKey& key, float n[4]) {
  uint32_t w[4];
  philox4x32_10(c0, key, w);
  box_muller(w[0], w[1], &n[0], &n[1]);
  box_muller(w[2], w[3], &n[2], &n[3]);
}

}  // namespace scoreops
