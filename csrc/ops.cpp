// scoreops._C: the op schemas (see docs/kernels.md), the input checks shared by the CPU and CUDA
// kernels, and the module stub that makes `import scoreops._C` load this library.
#include <Python.h>
#include <ATen/MemoryOverlap.h>
#include <torch/library.h>

#include <cmath>
#include <string>

#include "brownian.h"
#include "ops.h"

extern "C" {
// Importing the module only has to load the .so: its static initialisers register the ops.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

namespace scoreops {
namespace {

// Philox counter word c0 is the group index j / 4 of a sample's elements, a uint32.
constexpr int64_t kMaxPerSample = int64_t{4} << 32;

bool built_with_cuda() {
#ifdef SCOREOPS_WITH_CUDA
  return true;
#else
  return false;
#endif
}

bool is_data_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

void check_data(const char* op, const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.defined(), op, ": ", name, " is undefined");
  TORCH_CHECK_TYPE(is_data_dtype(t.scalar_type()), op, ": ", name, " must be float32, float16 or bfloat16, got ",
                   t.scalar_type());
}

void check_batch(const char* op, const at::Tensor& t, const char* name) {
  check_data(op, t, name);
  TORCH_CHECK_VALUE(t.dim() >= 1, op, ": ", name, " must have a leading batch dimension, got a 0-d tensor");
  TORCH_CHECK_VALUE(per_sample_numel(t) < kMaxPerSample, op, ": ", name, " has ", per_sample_numel(t),
                    " elements per sample; the noise stream supports fewer than 2**34");
}

void check_like(const char* op, const at::Tensor& t, const char* name, const at::Tensor& ref, const char* ref_name) {
  TORCH_CHECK_VALUE(t.defined(), op, ": ", name, " is undefined");
  TORCH_CHECK_VALUE(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but ", ref_name, " is on ",
                    ref.device());
  TORCH_CHECK_VALUE(t.sizes() == ref.sizes(), op, ": ", name, " has shape ", t.sizes(), " but ", ref_name,
                    " has shape ", ref.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), op, ": ", name, " has dtype ", t.scalar_type(), " but ",
                   ref_name, " has dtype ", ref.scalar_type());
}

void check_counter(const char* op, const at::Tensor& t, const char* name, const at::Device& device) {
  TORCH_CHECK_VALUE(t.defined(), op, ": ", name, " is undefined");
  TORCH_CHECK_TYPE(t.scalar_type() == at::kLong, op, ": ", name, " must be an int64 tensor, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.numel() == 1, op, ": ", name, " must have exactly one element, got shape ", t.sizes());
  TORCH_CHECK_VALUE(t.device() == device, op, ": ", name, " is on ", t.device(), " but the data is on ", device);
}

CoefMode check_coef(const char* op, const at::Tensor& c, const char* name, const at::Tensor& x, int64_t batch) {
  TORCH_CHECK_VALUE(c.defined(), op, ": ", name, " is undefined");
  TORCH_CHECK_TYPE(c.scalar_type() == at::kFloat, op, ": ", name, " must be float32, got ", c.scalar_type());
  TORCH_CHECK_VALUE(c.device() == x.device(), op, ": ", name, " is on ", c.device(), " but x is on ", x.device());
  // The layout rule of scoreops.core.checks.coef_layout: decided by shape, not by element count.
  if (c.numel() == 1) {
    return CoefMode::kScalar;
  }
  if (c.sizes() == x.sizes()) {
    return CoefMode::kPerElement;
  }
  bool per_sample = c.dim() >= 1 && c.dim() <= x.dim() && c.size(0) == batch;
  for (int64_t d = 1; d < c.dim(); ++d) {
    per_sample = per_sample && c.size(d) == 1;
  }
  TORCH_CHECK_VALUE(per_sample, op, ": ", name, " must be one value, one per sample (shape (B,) or (B, 1, ..., 1) "
                    "with B = ", batch, ") or one per element (x's shape ", x.sizes(), "), got shape ", c.sizes());
  return CoefMode::kPerSample;
}

// A Brownian path table, when given: a 1-D int64 table of at least 2 tree coordinates on x's
// device, and a depth in [0, kMaxBrownianDepth]. Its values are the kernels' to read.
void check_path(const char* op, const std::optional<at::Tensor>& path, int64_t depth, const at::Tensor& x) {
  if (!path.has_value()) {
    return;
  }
  const at::Tensor& p = *path;
  TORCH_CHECK_TYPE(p.scalar_type() == at::kLong, op, ": path must be an int64 tensor, got ", p.scalar_type());
  TORCH_CHECK_VALUE(p.device() == x.device(), op, ": path is on ", p.device(), " but x is on ", x.device());
  TORCH_CHECK_VALUE(p.dim() == 1 && p.size(0) >= 2, op, ": path must be a 1-D table of at least 2 tree "
                    "coordinates (one per grid point), got shape ", p.sizes());
  TORCH_CHECK_VALUE(depth >= 0 && depth <= kMaxBrownianDepth, op, ": depth must be in [0, ", kMaxBrownianDepth,
                    "], got ", depth);
}

// A carry buffer, when given: with a path, contiguous float32 of x's numel on x's device, sharing
// no memory with x (the kernels read one while writing the other).
void check_carry(const char* op, const std::optional<at::Tensor>& carry, const std::optional<at::Tensor>& path,
                 const at::Tensor& x) {
  if (!carry.has_value()) {
    return;
  }
  const at::Tensor& c = *carry;
  TORCH_CHECK_VALUE(path.has_value(), op, ": a carry needs a path (it holds part of a Brownian increment)");
  TORCH_CHECK_TYPE(c.scalar_type() == at::kFloat, op, ": carry must be a float32 tensor, got ", c.scalar_type());
  TORCH_CHECK_VALUE(c.device() == x.device(), op, ": carry is on ", c.device(), " but x is on ", x.device());
  TORCH_CHECK_VALUE(c.is_contiguous() && c.numel() == x.numel(), op, ": carry must be contiguous with x's ",
                    x.numel(), " elements, got shape ", c.sizes());
  at::assert_no_overlap(x, c);
}

void check_stages(const char* op, const at::Tensor& y, at::TensorList ks, at::ArrayRef<double> coeffs,
                  const char* coeffs_name) {
  check_data(op, y, "y");
  TORCH_CHECK_VALUE(!ks.empty() && ks.size() == coeffs.size(), op, ": need one ", coeffs_name,
                    " coefficient per stage: ", ks.size(), " stages, ", coeffs.size(), " coefficients");
  TORCH_CHECK_VALUE(static_cast<int64_t>(ks.size()) <= kMaxRkStages, op, ": at most ", kMaxRkStages,
                    " Runge-Kutta stages per call, got ", ks.size());
  for (size_t j = 0; j < ks.size(); ++j) {
    const std::string name = "ks[" + std::to_string(j) + "]";
    check_like(op, ks[j], name.c_str(), y, "y");
  }
}

}  // namespace

StepShape check_sde_step(const at::Tensor& x, const at::Tensor& s, const at::Tensor& a, const at::Tensor& b,
                         const at::Tensor& c, const at::Tensor& seed, const at::Tensor& step,
                         const std::optional<at::Tensor>& path, int64_t depth, const std::optional<at::Tensor>& carry) {
  constexpr const char* op = "sde_step";
  check_batch(op, x, "x");
  check_like(op, s, "s", x, "x");
  check_counter(op, seed, "seed", x.device());
  check_counter(op, step, "step", x.device());
  check_path(op, path, depth, x);
  check_carry(op, carry, path, x);
  const int64_t batch = x.size(0), dim = per_sample_numel(x);
  return {batch, dim, check_coef(op, a, "a", x, batch), check_coef(op, b, "b", x, batch),
          check_coef(op, c, "c", x, batch)};
}

StepShape check_sde_step_inplace(const at::Tensor& x, const at::Tensor& s, const at::Tensor& a, const at::Tensor& b,
                                 const at::Tensor& c, const at::Tensor& seed, const at::Tensor& step,
                                 const std::optional<at::Tensor>& path, int64_t depth,
                                 const std::optional<at::Tensor>& carry) {
  const StepShape shape = check_sde_step(x, s, a, b, c, seed, step, path, depth, carry);
  TORCH_CHECK_VALUE(x.is_contiguous(), "sde_step_: x must be contiguous; scoreops.ops.sde_step(..., inplace=True) "
                    "writes a strided x through a copy");
  // Reading s while writing x: an exact alias is safe element by element, a partial one is not.
  at::assert_no_partial_overlap(x, s);
  if (carry.has_value()) {
    at::assert_no_overlap(s, *carry);
  }
  return shape;
}

void check_sample_sq_norms(const at::Tensor& s, const at::Tensor& seed, const at::Tensor& step) {
  constexpr const char* op = "sample_sq_norms";
  check_batch(op, s, "s");
  check_counter(op, seed, "seed", s.device());
  check_counter(op, step, "step", s.device());
}

void check_philox(const char* op, const at::Tensor& seed, const at::Tensor& step, int64_t batch, int64_t numel) {
  TORCH_CHECK_VALUE(seed.defined(), op, ": seed is undefined");
  check_counter(op, seed, "seed", seed.device());
  check_counter(op, step, "step", seed.device());
  TORCH_CHECK_VALUE(batch >= 0, op, ": batch must be non-negative, got ", batch);
  TORCH_CHECK_VALUE(numel >= 0 && numel < kMaxPerSample, op, ": numel must be in [0, 2**34), got ", numel);
}

int64_t check_sigma_step(const at::Tensor& x, at::TensorList terms, const at::Tensor& coefs, const at::Tensor& seed,
                         const at::Tensor& step, const std::optional<at::Tensor>& path, int64_t depth,
                         const std::optional<at::Tensor>& carry) {
  constexpr const char* op = "sigma_step";
  check_batch(op, x, "x");
  const auto k = static_cast<int64_t>(terms.size());
  TORCH_CHECK_VALUE(k <= kMaxTerms, op, ": at most ", kMaxTerms, " terms per call, got ", k);
  for (int64_t j = 0; j < k; ++j) {
    const std::string name = "terms[" + std::to_string(j) + "]";
    check_like(op, terms[j], name.c_str(), x, "x");
  }
  TORCH_CHECK_VALUE(coefs.defined(), op, ": coefs is undefined");
  TORCH_CHECK_TYPE(coefs.scalar_type() == at::kFloat, op, ": coefs must be float32, got ", coefs.scalar_type());
  TORCH_CHECK_VALUE(coefs.device() == x.device(), op, ": coefs is on ", coefs.device(), " but x is on ", x.device());
  TORCH_CHECK_VALUE(coefs.dim() == 1 && coefs.size(0) == k + 2, op, ": coefs must have shape (", k + 2,
                    ",) = (a, one per term, e) for ", k, " terms, got shape ", coefs.sizes());
  check_counter(op, seed, "seed", x.device());
  check_counter(op, step, "step", x.device());
  check_path(op, path, depth, x);
  check_carry(op, carry, path, x);
  for (int64_t j = 0; carry.has_value() && j < k; ++j) {
    at::assert_no_overlap(terms[j], *carry);
  }
  return k;
}

StepShape check_adaptive_sde_step(const at::Tensor& x, const at::Tensor& x_low, const at::Tensor& x_prev,
                                  const at::Tensor& s, const at::Tensor& a, const at::Tensor& b,
                                  const at::Tensor& seed, const at::Tensor& step, double atol, double rtol) {
  constexpr const char* op = "adaptive_sde_step";
  check_batch(op, x, "x");
  check_like(op, x_low, "x_low", x, "x");
  check_like(op, x_prev, "x_prev", x, "x");
  check_like(op, s, "s", x, "x");
  check_counter(op, seed, "seed", x.device());
  check_counter(op, step, "step", x.device());
  TORCH_CHECK_VALUE(std::isfinite(atol) && atol >= 0.0, op, ": atol must be a finite float >= 0, got ", atol);
  TORCH_CHECK_VALUE(std::isfinite(rtol) && rtol > 0.0, op, ": rtol must be a positive finite float, got ", rtol);
  const int64_t batch = x.size(0), dim = per_sample_numel(x);
  return {batch, dim, check_coef(op, a, "a", x, batch), check_coef(op, b, "b", x, batch), CoefMode::kScalar};
}

void check_rk_combine(const at::Tensor& y, at::TensorList ks, at::ArrayRef<double> coeffs) {
  check_stages("rk_combine", y, ks, coeffs, "stage");
}

void check_rk_error_sq(const at::Tensor& y, const at::Tensor& y_new, at::TensorList ks, at::ArrayRef<double> e) {
  check_stages("rk_error_sq", y, ks, e, "error");
  check_like("rk_error_sq", y_new, "y_new", y, "y");
}

TORCH_LIBRARY(scoreops, m) {
  // A catch-all kernel (no dispatch key): callable without any tensor.
  m.def("built_with_cuda() -> bool", &built_with_cuda);
  m.def("philox_bits(Tensor seed, Tensor step, int lane, int sample_offset, int batch, int numel) -> Tensor");
  m.def("philox_normal(Tensor seed, Tensor step, int lane, int sample_offset, int batch, int numel) -> Tensor");
  m.def(
      "sde_step(Tensor x, Tensor s, Tensor a, Tensor b, Tensor c, Tensor seed, Tensor step, int lane, "
      "int sample_offset, bool add_noise, Tensor? path=None, int depth=0) -> Tensor");
  m.def(
      "sde_step_(Tensor(a!) x, Tensor s, Tensor a, Tensor b, Tensor c, Tensor seed, Tensor step, int lane, "
      "int sample_offset, bool add_noise, Tensor? path=None, int depth=0) -> ()");
  // The noisy step of a carried Brownian walk (brownian.h): mutates its carry, so it has no
  // autograd formula; the samplers use it without autograd.
  m.def(
      "sde_step_carried_(Tensor(a!) x, Tensor s, Tensor a, Tensor b, Tensor c, Tensor seed, Tensor step, "
      "int sample_offset, Tensor path, int depth, Tensor(b!) carry) -> ()");
  m.def("sample_sq_norms(Tensor s, Tensor seed, Tensor step, int lane, int sample_offset, bool with_noise) -> Tensor");
  m.def(
      "sigma_step(Tensor x, Tensor[] terms, Tensor coefs, Tensor seed, Tensor step, int lane, int sample_offset, "
      "bool add_noise, Tensor? path=None, int depth=0) -> Tensor");
  m.def(
      "sigma_step_carried(Tensor x, Tensor[] terms, Tensor coefs, Tensor seed, Tensor step, int sample_offset, "
      "Tensor path, int depth, Tensor(a!) carry) -> Tensor");
  m.def(
      "adaptive_sde_step(Tensor x, Tensor x_low, Tensor x_prev, Tensor s, Tensor a, Tensor b, Tensor seed, "
      "Tensor step, int lane, int sample_offset, float atol, float rtol) -> (Tensor, Tensor)");
  m.def("rk_combine(Tensor y, Tensor[] ks, float[] coeffs, float h) -> Tensor");
  m.def("rk_error_sq(Tensor y, Tensor y_new, Tensor[] ks, float[] e, float h, float atol, float rtol) -> Tensor");
}

}  // namespace scoreops
