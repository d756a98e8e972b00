// Measures the float32 log and sincos of csrc/philox.h against double-precision libm, on every
// float of the ranges the noise stream uses: u1 in [1e-7, 1) and th in [0, 2 pi].
// Prints the largest error in units in the last place (ulp) of the exact result.
//
//   g++ -O2 -std=c++17 -ffp-contract=off -fno-math-errno -Icsrc csrc/tools/check_transcendentals.cpp \
//       -o /tmp/check_transcendentals && /tmp/check_transcendentals      # a few minutes
#include <algorithm>
#include <cmath>
#include <cstdio>

#include "philox.h"

namespace {

// ulp of a float32 of magnitude |v| (subnormal floor 2^-149).
double float_ulp(double v) {
  int e;
  std::frexp(std::fabs(v), &e);
  return std::ldexp(1.0, std::max(e - 24, -149));
}

double ulp_error(float got, double exact) {
  return std::fabs(got - exact) / float_ulp(exact);
}

}  // namespace

int main() {
  double worst_log = 0.0;
  for (float u = scoreops::kU1Min; u < 1.0f; u = std::nextafter(u, 2.0f)) {
    worst_log = std::max(worst_log, ulp_error(scoreops::log_positive(u), std::log(static_cast<double>(u))));
  }
  double worst_sin = 0.0, worst_cos = 0.0;
  for (float th = 0.0f; th <= scoreops::kTwoPi; th = std::nextafter(th, 10.0f)) {
    float s, c;
    scoreops::sincos_small(th, &s, &c);
    worst_sin = std::max(worst_sin, ulp_error(s, std::sin(static_cast<double>(th))));
    worst_cos = std::max(worst_cos, ulp_error(c, std::cos(static_cast<double>(th))));
  }
  std::printf("max ulp error: log %.3f, sin %.3f, cos %.3f\n", worst_log, worst_sin, worst_cos);
  return 0;
}
