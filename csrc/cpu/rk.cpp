// CPU kernels of the adaptive ODE solver: the Runge-Kutta stage combination (rk_combine) and
// the squared, scaled error sum of scipy's RK45 error norm (rk_error_sq).
#include <ATen/ops/empty.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "cpu/cpu_kernels.h"

namespace scoreops::cpu {
namespace {

// The stages with a non-zero coefficient, as contiguous tensors and float32 coefficients
// (the reference multiplies float32 tensors by the coefficients rounded to float32).
struct Stages {
  std::vector<at::Tensor> ks;
  std::vector<float> coeffs;
};

Stages nonzero_stages(at::TensorList ks, at::ArrayRef<double> coeffs) {
  Stages st;
  for (size_t j = 0; j < ks.size(); ++j) {
    if (coeffs[j] != 0.0) {
      st.ks.push_back(ks[j].contiguous());
      st.coeffs.push_back(static_cast<float>(coeffs[j]));
    }
  }
  return st;
}

SCOREOPS_CPU_CLONES
void axpy(float a, const float* x, int64_t n, float* __restrict y) {
  for (int64_t j = 0; j < n; ++j) {
    y[j] = y[j] + a * x[j];
  }
}

// sum_j coeffs[j] k_j over the tile [begin, begin + n) of the flattened stages, into acc.
template <typename scalar_t>
void combine_stages(const Stages& st, int64_t begin, int64_t n, float* acc) {
  float buf[kTile];
  std::fill_n(acc, n, 0.0f);
  for (size_t j = 0; j < st.ks.size(); ++j) {
    axpy(st.coeffs[j], load_floats(st.ks[j].const_data_ptr<scalar_t>() + begin, n, buf), n, acc);
  }
}

SCOREOPS_CPU_CLONES
void combine_finish(const float* y, float h, int64_t n, float* __restrict acc) {
  for (int64_t j = 0; j < n; ++j) {
    acc[j] = y[j] + h * acc[j];
  }
}

// err <- h err / (atol + rtol max(|y|, |y_new|)) elementwise; rk_error_sq sums the squares.
// The max is NaN when either operand is (as torch.maximum), so the solver sees a NaN state.
SCOREOPS_CPU_CLONES
void scaled_error(const float* y, const float* y_new, float h, float atol, float rtol, int64_t n,
                  float* __restrict err) {
  for (int64_t j = 0; j < n; ++j) {
    const float ay = std::abs(y[j]), an = std::abs(y_new[j]);
    const float scale = atol + rtol * (ay > an || std::isnan(ay) ? ay : an);
    err[j] = h * err[j] / scale;
  }
}

at::Tensor rk_combine(const at::Tensor& y, at::TensorList ks, at::ArrayRef<double> coeffs, double h) {
  check_rk_combine(y, ks, coeffs);
  at::Tensor out = at::empty(y.sizes(), y.options());
  const int64_t n = y.numel();
  if (n == 0) {
    return out;
  }
  const at::Tensor yc = y.contiguous();
  const Stages st = nonzero_stages(ks, coeffs);
  const float hf = static_cast<float>(h);
  SCOREOPS_DISPATCH_FLOATS(y.scalar_type(), "rk_combine", [&] {
    const scalar_t* yd = yc.const_data_ptr<scalar_t>();
    scalar_t* od = out.mutable_data_ptr<scalar_t>();
    for_each_tile(1, n, [&](int64_t, const Tile& t) {
      float acc[kTile], yb[kTile];
      combine_stages<scalar_t>(st, t.begin, t.size, acc);
      combine_finish(load_floats(yd + t.begin, t.size, yb), hf, t.size, acc);
      store_floats(acc, t.size, od + t.begin);
    });
  });
  return out;
}

at::Tensor rk_error_sq(const at::Tensor& y, const at::Tensor& y_new, at::TensorList ks, at::ArrayRef<double> e,
                       double h, double atol, double rtol) {
  check_rk_error_sq(y, y_new, ks, e);
  const int64_t n = y.numel();
  if (n == 0) {
    return at::zeros({}, y.options().dtype(at::kFloat));
  }
  const at::Tensor yc = y.contiguous(), nc = y_new.contiguous();
  const Stages st = nonzero_stages(ks, e);
  std::vector<float> partial(static_cast<size_t>(tiles_per_row(n)));
  SCOREOPS_DISPATCH_FLOATS(y.scalar_type(), "rk_error_sq", [&] {
    const scalar_t* yd = yc.const_data_ptr<scalar_t>();
    const scalar_t* nd = nc.const_data_ptr<scalar_t>();
    for_each_tile(1, n, [&](int64_t index, const Tile& t) {
      float err[kTile], yb[kTile], nb[kTile];
      combine_stages<scalar_t>(st, t.begin, t.size, err);
      scaled_error(load_floats(yd + t.begin, t.size, yb), load_floats(nd + t.begin, t.size, nb),
                   static_cast<float>(h), static_cast<float>(atol), static_cast<float>(rtol), t.size, err);
      partial[index] = sum_squares(err, t.size);
    });
  });
  // Tiles in order in float64: the result does not depend on the number of threads.
  double total = 0.0;
  for (float p : partial) {
    total += p;
  }
  return at::scalar_tensor(total, y.options().dtype(at::kFloat));
}

}  // namespace

TORCH_LIBRARY_IMPL(scoreops, CPU, m) {
  m.impl("rk_combine", &rk_combine);
  m.impl("rk_error_sq", &rk_error_sq);
}

}  // namespace scoreops::cpu
