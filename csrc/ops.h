// Declarations shared by the CPU and CUDA kernels of scoreops._C: the input checks (defined in
// ops.cpp, one place for every error message) and the dtype dispatch.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

namespace scoreops {

// The most Runge-Kutta stages one rk_combine / rk_error_sq call takes, on every backend
// (scoreops.core.checks.MAX_RK_STAGES; the Triton kernels take each stage as an argument).
constexpr int64_t kMaxRkStages = 8;
// The most terms one sigma_step call combines, on every backend (scoreops.core.checks.MAX_TERMS).
constexpr int64_t kMaxTerms = 8;

// How a step coefficient (a, b or c of sde_step) is indexed for element j of sample i.
enum class CoefMode : int32_t {
  kScalar = 0,     // numel 1: value[0]
  kPerSample = 1,  // numel B: value[i]
  kPerElement = 2  // numel B*D: value[i*D + j]
};

// The (B, D) view of sde_step's x and the layout of its coefficients.
struct StepShape {
  int64_t batch;
  int64_t dim;
  CoefMode a, b, c;
};

// Each check raises c10::Error (RuntimeError/ValueError/TypeError in Python) naming the argument.
// path, when given, is the Brownian tree's int64 table of coordinates (one per grid point, at
// least 2) on x's device, and 0 <= depth <= 32; its values are read by the kernels (brownian.h).
// carry, when given, needs a path: a contiguous float32 buffer of x's numel on x's device that the
// steps of one descending walk share (brownian.h, BrownianWalk).
StepShape check_sde_step(const at::Tensor& x, const at::Tensor& s, const at::Tensor& a, const at::Tensor& b,
                         const at::Tensor& c, const at::Tensor& seed, const at::Tensor& step,
                         const std::optional<at::Tensor>& path, int64_t depth, const std::optional<at::Tensor>& carry);
// sde_step_ writes x in place: x must be contiguous (scoreops.ops.sde_step(inplace=True) writes
// a strided x through a copy, the one fallback for every backend) and must not partly overlap s.
StepShape check_sde_step_inplace(const at::Tensor& x, const at::Tensor& s, const at::Tensor& a, const at::Tensor& b,
                                 const at::Tensor& c, const at::Tensor& seed, const at::Tensor& step,
                                 const std::optional<at::Tensor>& path, int64_t depth,
                                 const std::optional<at::Tensor>& carry);
void check_sample_sq_norms(const at::Tensor& s, const at::Tensor& seed, const at::Tensor& step);
void check_philox(const char* op, const at::Tensor& seed, const at::Tensor& step, int64_t batch, int64_t numel);
// sigma_step's checks; returns the number of terms K (coefs holds K + 2 values); path and depth
// as for sde_step.
int64_t check_sigma_step(const at::Tensor& x, at::TensorList terms, const at::Tensor& coefs, const at::Tensor& seed,
                         const at::Tensor& step, const std::optional<at::Tensor>& path, int64_t depth,
                         const std::optional<at::Tensor>& carry);
// adaptive_sde_step's checks: x, x_low, x_prev and s alike, a and b laid out as sde_step's
// coefficients (the returned shape's c is unused), atol >= 0 and rtol > 0 finite.
StepShape check_adaptive_sde_step(const at::Tensor& x, const at::Tensor& x_low, const at::Tensor& x_prev,
                                  const at::Tensor& s, const at::Tensor& a, const at::Tensor& b,
                                  const at::Tensor& seed, const at::Tensor& step, double atol, double rtol);
void check_rk_combine(const at::Tensor& y, at::TensorList ks, at::ArrayRef<double> coeffs);
void check_rk_error_sq(const at::Tensor& y, const at::Tensor& y_new, at::TensorList ks, at::ArrayRef<double> e);

// Elements per sample of a (B, ...) tensor; 0 when B is 0.
inline int64_t per_sample_numel(const at::Tensor& t) {
  return t.size(0) == 0 ? 0 : t.numel() / t.size(0);
}

}  // namespace scoreops

// Runs the lambda with scalar_t = float, at::Half or at::BFloat16: the data types of the ops.
#define SCOREOPS_DISPATCH_FLOATS(TYPE, NAME, ...)                  \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__) \
                                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__) \
                                     AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))
