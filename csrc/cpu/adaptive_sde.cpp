// CPU kernel of the adaptive SDE solver's second stage (adaptive_sde_step): the stochastic
// improved-Euler proposal and, in the same pass, each sample's scaled error against the
// Euler-Maruyama proposal:
//   x_high = ((x + x_low) + (a s + b z)) / 2
//   err_i  = sqrt(mean_j ((x_low - x_high)_j / max(atol, rtol max(|x_low_j|, |x_prev_j|)))^2)
// z is the stream's normal of (seed, step, lane, sample_offset + i, j): the same z the first stage
// (sde_step with the same key) drew, made again rather than stored.
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>
#include <vector>

#include "cpu/cpu_kernels.h"

namespace scoreops::cpu {
namespace {

// out = ((x + x_low) + (a s + b z)) * 0.5, each product and sum rounded in float32 as the torch
// reference rounds them (halving is exact).
SCOREOPS_CPU_CLONES
void high_order(const float* x, const float* x_low, const float* s, const float* a, const float* b, const float* z,
                int64_t n, float* __restrict out) {
  for (int64_t j = 0; j < n; ++j) {
    out[j] = ((x[j] + x_low[j]) + (a[j] * s[j] + b[j] * z[j])) * 0.5f;
  }
}

// ratio = (x_low - x_high) / max(atol, rtol max(|x_low|, |x_prev|)); both maxima are NaN when an
// operand is (as torch.maximum and clamp_min), so a NaN state gives a NaN error.
SCOREOPS_CPU_CLONES
void scaled_difference(const float* x_low, const float* x_prev, const float* x_high, float atol, float rtol,
                       int64_t n, float* __restrict ratio) {
  for (int64_t j = 0; j < n; ++j) {
    const float al = std::abs(x_low[j]), ap = std::abs(x_prev[j]);
    const float rel = rtol * (al > ap || std::isnan(al) ? al : ap);
    const float delta = rel > atol || std::isnan(rel) ? rel : atol;
    ratio[j] = (x_low[j] - x_high[j]) / delta;
  }
}

std::tuple<at::Tensor, at::Tensor> adaptive_sde_step(const at::Tensor& x, const at::Tensor& x_low,
                                                     const at::Tensor& x_prev, const at::Tensor& s,
                                                     const at::Tensor& a, const at::Tensor& b, const at::Tensor& seed,
                                                     const at::Tensor& step, int64_t lane, int64_t sample_offset,
                                                     double atol, double rtol) {
  const StepShape shape = check_adaptive_sde_step(x, x_low, x_prev, s, a, b, seed, step, atol, rtol);
  at::Tensor out = at::empty(x.sizes(), x.options());
  at::Tensor err = at::zeros({shape.batch}, x.options().dtype(at::kFloat));
  if (x.numel() == 0) {
    return {out, err};
  }
  const at::Tensor xc = x.contiguous(), lc = x_low.contiguous(), pc = x_prev.contiguous(), sc = s.contiguous();
  const at::Tensor ac = a.contiguous(), bc = b.contiguous();
  const Coef coef_a{ac.const_data_ptr<float>(), shape.a, shape.dim};
  const Coef coef_b{bc.const_data_ptr<float>(), shape.b, shape.dim};
  const StreamArgs noise = host_stream_args(seed, step, lane, sample_offset);
  const float atol_f = static_cast<float>(atol), rtol_f = static_cast<float>(rtol);
  const int64_t per_row = tiles_per_row(shape.dim);
  std::vector<float> partial(static_cast<size_t>(shape.batch * per_row));
  SCOREOPS_DISPATCH_FLOATS(x.scalar_type(), "adaptive_sde_step", [&] {
    const scalar_t* xd = xc.const_data_ptr<scalar_t>();
    const scalar_t* ld = lc.const_data_ptr<scalar_t>();
    const scalar_t* pd = pc.const_data_ptr<scalar_t>();
    const scalar_t* sd = sc.const_data_ptr<scalar_t>();
    scalar_t* od = out.mutable_data_ptr<scalar_t>();
    for_each_tile(shape.batch, shape.dim, [&](int64_t index, const Tile& t) {
      float xb[kTile], lb[kTile], pb[kTile], sb[kTile], ab[kTile], bb[kTile], z[kTile], high[kTile], ratio[kTile];
      const int64_t offset = t.offset(shape.dim);
      const float* lv = load_floats(ld + offset, t.size, lb);
      fill_normals(noise.key(t.row), t.begin, t.size, z);
      high_order(load_floats(xd + offset, t.size, xb), lv, load_floats(sd + offset, t.size, sb),
                 coef_a.tile_values(t, ab), coef_b.tile_values(t, bb), z, t.size, high);
      // The error uses the float32 proposal, before rounding to a narrower data type.
      scaled_difference(lv, load_floats(pd + offset, t.size, pb), high, atol_f, rtol_f, t.size, ratio);
      partial[index] = sum_squares(ratio, t.size);
      store_floats(high, t.size, od + offset);
    });
  });
  // Each row's tiles in order in float64: the result does not depend on the number of threads.
  float* e = err.mutable_data_ptr<float>();
  for (int64_t i = 0; i < shape.batch; ++i) {
    double sum = 0.0;
    for (int64_t t = i * per_row; t < (i + 1) * per_row; ++t) {
      sum += partial[t];
    }
    e[i] = static_cast<float>(std::sqrt(sum / static_cast<double>(shape.dim)));
  }
  return {out, err};
}

}  // namespace

TORCH_LIBRARY_IMPL(scoreops, CPU, m) {
  m.impl("adaptive_sde_step", &adaptive_sde_step);
}

}  // namespace scoreops::cpu
