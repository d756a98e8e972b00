// CPU kernel of the sigma-space step (sigma_step): out = a x + sum_k b_k terms[k] + e z. Work is
// split into tiles of one sample's elements, each making its own noise, as in step.cpp; z is the
// stream's normal, or with a path the Brownian tree's increment over the step (brownian.h).
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <vector>

#include "brownian.h"
#include "cpu/cpu_kernels.h"

namespace scoreops::cpu {
namespace {

SCOREOPS_CPU_CLONES
void scale(float a, const float* x, int64_t n, float* __restrict acc) {
  for (int64_t j = 0; j < n; ++j) {
    acc[j] = a * x[j];
  }
}

SCOREOPS_CPU_CLONES
void axpy(float a, const float* x, int64_t n, float* __restrict acc) {
  for (int64_t j = 0; j < n; ++j) {
    acc[j] = acc[j] + a * x[j];
  }
}

template <typename scalar_t>
void sigma_step_rows(int64_t batch, int64_t dim, const scalar_t* x, const std::vector<const scalar_t*>& terms,
                     const std::vector<float>& coefs, const StreamArgs& noise, bool add_noise,
                     const BrownianWalk* walk, float* carry, scalar_t* out) {
  const int64_t k = static_cast<int64_t>(terms.size());
  for_each_tile(batch, dim, [&](int64_t, const Tile& t) {
    float buf[kTile], acc[kTile];
    const int64_t offset = t.offset(dim);
    // The torch reference's order: a x, then each term in turn, then the noise.
    scale(coefs[0], load_floats(x + offset, t.size, buf), t.size, acc);
    for (int64_t j = 0; j < k; ++j) {
      axpy(coefs[1 + j], load_floats(terms[j] + offset, t.size, buf), t.size, acc);
    }
    if (add_noise) {
      tile_noise(noise, walk, carry, t, offset, buf);
      axpy(coefs[1 + k], buf, t.size, acc);
    }
    store_floats(acc, t.size, out + offset);
  });
}

at::Tensor run_sigma_step(const at::Tensor& x, at::TensorList terms, const at::Tensor& coefs, const at::Tensor& seed,
                          const at::Tensor& step, int64_t lane, int64_t sample_offset, bool add_noise,
                          const std::optional<at::Tensor>& path, int64_t depth,
                          const std::optional<at::Tensor>& carry) {
  const int64_t k = check_sigma_step(x, terms, coefs, seed, step, path, depth, carry);
  at::Tensor out = at::empty(x.sizes(), x.options());
  if (x.numel() == 0) {
    return out;
  }
  const at::Tensor xc = x.contiguous(), cc = coefs.contiguous();
  std::vector<at::Tensor> tc;
  for (int64_t j = 0; j < k; ++j) {
    tc.push_back(terms[j].contiguous());
  }
  const std::vector<float> cv(cc.const_data_ptr<float>(), cc.const_data_ptr<float>() + k + 2);
  const StreamArgs noise = host_stream_args(seed, step, lane, sample_offset);
  std::optional<BrownianWalk> walk;
  if (add_noise && path.has_value()) {
    walk = host_walk("sigma_step", *path, noise.step, depth, carry.has_value());
  }
  const int64_t batch = x.size(0), dim = per_sample_numel(x);
  SCOREOPS_DISPATCH_FLOATS(x.scalar_type(), "sigma_step", [&] {
    std::vector<const scalar_t*> tp;
    for (const at::Tensor& t : tc) {
      tp.push_back(t.const_data_ptr<scalar_t>());
    }
    sigma_step_rows<scalar_t>(batch, dim, xc.const_data_ptr<scalar_t>(), tp, cv, noise, add_noise,
                              walk ? &*walk : nullptr, walk && carry ? carry->mutable_data_ptr<float>() : nullptr,
                              out.mutable_data_ptr<scalar_t>());
  });
  return out;
}

at::Tensor sigma_step(const at::Tensor& x, at::TensorList terms, const at::Tensor& coefs, const at::Tensor& seed,
                      const at::Tensor& step, int64_t lane, int64_t sample_offset, bool add_noise,
                      const std::optional<at::Tensor>& path, int64_t depth) {
  return run_sigma_step(x, terms, coefs, seed, step, lane, sample_offset, add_noise, path, depth, std::nullopt);
}

at::Tensor sigma_step_carried(const at::Tensor& x, at::TensorList terms, const at::Tensor& coefs,
                              const at::Tensor& seed, const at::Tensor& step, int64_t sample_offset,
                              const at::Tensor& path, int64_t depth, at::Tensor& carry) {
  return run_sigma_step(x, terms, coefs, seed, step, 0, sample_offset, true, path, depth, carry);
}

}  // namespace

TORCH_LIBRARY_IMPL(scoreops, CPU, m) {
  m.impl("sigma_step", &sigma_step);
  m.impl("sigma_step_carried", &sigma_step_carried);
}

}  // namespace scoreops::cpu
