// The sigma-space samplers' fused update (sigma_step): out = a x + sum_k b_k terms[k] + e z, z the
// stream's normal or, with a path table, the Brownian tree's increment over the step (brownian.h).
//
// CUDA kernel of scoreops._C. It runs on the current stream and reads coefs, seed and step from
// device memory, so a captured CUDA graph replays new coefficients and draws new noise without a
// host sync (cuda_kernels.h holds the shared parts). The tree coordinates of the step,
// path[step] and path[step + 1], are read on the device too; a step outside the table or an
// invalid pair gives NaN, which the samplers refuse at the end.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <vector>

#include "brownian.h"
#include "cuda/cuda_kernels.h"

namespace scoreops::cuda {
namespace {

// The terms of one call, passed by value (kernel parameter space): no device copy of a pointer table.
template <typename scalar_t>
struct Terms {
  const scalar_t* t[kMaxTerms];
  int count;
};

// One thread per group of 4 elements of one sample, as sde_step_kernel, so one Philox call gives
// the group's normals (or one node's normals, on the Brownian path). coefs = (a, b_0, ...,
// b_{count-1}, e) in device memory.
template <typename scalar_t, bool kVec>
__global__ void sigma_step_kernel(const scalar_t* x, Terms<scalar_t> terms, const float* coefs, Noise noise,
                                  bool add_noise, Path path, int64_t batch, int64_t dim, int64_t groups,
                                  scalar_t* out) {
  const NoiseKeys keys(noise);
  // The step's walk through the tree: the same for every thread.
  BrownianWalk walk{};
  if (add_noise && path.q != nullptr) {
    walk = brownian_table_walk(path.q, path.points, keys.step, path.depth, path.carry != nullptr);
  }
  // Read once per thread. Unrolled over every slot with a guard: constant indices keep b in
  // registers and the term table in the parameter space, where a loop to terms.count would copy
  // them to the stack.
  const float a = coefs[0];
  float b[kMaxTerms];
#pragma unroll
  for (int j = 0; j < kMaxTerms; ++j) {
    b[j] = j < terms.count ? coefs[1 + j] : 0.0f;
  }
  const float e = add_noise ? coefs[1 + terms.count] : 0.0f;
  const int64_t total = batch * groups;
  for (int64_t t = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; t < total; t += int64_t{gridDim.x} * blockDim.x) {
    const int64_t i = t / groups, g = t - i * groups, base = i * dim + 4 * g;
    const int n = static_cast<int>(std::min<int64_t>(4, dim - 4 * g));
    float acc[4];
    load4<kVec>(x + base, n, acc);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      acc[k] = a * acc[k];
    }
    // The reference's order: a x, then each term in turn, then the noise.
#pragma unroll
    for (int j = 0; j < kMaxTerms; ++j) {
      if (j < terms.count) {
        float tv[4];
        load4<kVec>(terms.t[j] + base, n, tv);
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          acc[k] = acc[k] + b[j] * tv[k];
        }
      }
    }
    if (add_noise) {
      float z[4];
      if (path.q != nullptr) {
        path_increment4<kVec>(walk, path, keys, i, g, base, n, z);
      } else {
        keys.normals(i, g, z);
      }
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        acc[k] = acc[k] + e * z[k];
      }
    }
    store4<kVec>(out + base, n, acc);
  }
}

at::Tensor run_sigma_step(const at::Tensor& x, at::TensorList terms, const at::Tensor& coefs, const at::Tensor& seed,
                          const at::Tensor& step, int64_t lane, int64_t sample_offset, bool add_noise,
                          const std::optional<at::Tensor>& path, int64_t depth,
                          const std::optional<at::Tensor>& carry) {
  const int64_t k = check_sigma_step(x, terms, coefs, seed, step, path, depth, carry);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty(x.sizes(), x.options());
  if (x.numel() == 0) {
    return out;
  }
  const at::Tensor xc = x.contiguous(), cc = coefs.contiguous();
  std::vector<at::Tensor> keep;  // contiguous terms, alive until the launch is queued
  keep.reserve(static_cast<size_t>(k));
  for (int64_t j = 0; j < k; ++j) {
    keep.push_back(terms[j].contiguous());
  }
  const int64_t batch = x.size(0), dim = per_sample_numel(x), groups = (dim + 3) / 4;
  const Noise noise = make_noise(seed, step, lane, sample_offset);
  const at::Tensor pc = path.has_value() ? path->contiguous() : at::Tensor();
  const Path tree = make_path(pc, depth, carry);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  SCOREOPS_DISPATCH_FLOATS(x.scalar_type(), "sigma_step", [&] {
    Terms<scalar_t> tt{};
    tt.count = static_cast<int>(k);
    const scalar_t* xp = xc.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    bool vec = dim % 4 == 0 && aligned4(xp, sizeof(scalar_t)) && aligned4(op, sizeof(scalar_t)) &&
               (tree.carry == nullptr || aligned4(tree.carry, sizeof(float)));
    for (int64_t j = 0; j < k; ++j) {
      tt.t[j] = keep[static_cast<size_t>(j)].const_data_ptr<scalar_t>();
      vec = vec && aligned4(tt.t[j], sizeof(scalar_t));
    }
    const float* cp = cc.const_data_ptr<float>();
    const int grid = grid_for(batch * groups);
    if (vec) {
      sigma_step_kernel<scalar_t, true><<<grid, kThreads, 0, stream>>>(xp, tt, cp, noise, add_noise, tree, batch,
                                                                        dim, groups, op);
    } else {
      sigma_step_kernel<scalar_t, false><<<grid, kThreads, 0, stream>>>(xp, tt, cp, noise, add_noise, tree, batch,
                                                                         dim, groups, op);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
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

TORCH_LIBRARY_IMPL(scoreops, CUDA, m) {
  m.impl("sigma_step", &sigma_step);
  m.impl("sigma_step_carried", &sigma_step_carried);
}

}  // namespace scoreops::cuda
