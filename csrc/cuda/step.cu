// The fused SDE step (sde_step, sde_step_) and the Langevin corrector's per-sample norms (sample_sq_norms).
//
// CUDA kernels of scoreops._C. Every kernel runs on the current stream, reads seed and step from
// device memory (so a captured CUDA graph draws new noise at each replay), never syncs with the
// host, and takes all its memory from torch's caching allocator (cuda_kernels.h holds the shared parts).
// With a path table the step's z is the Brownian tree's increment from path[step] to
// path[step + 1] (brownian.h), both read on the device too; a step outside the table or an
// invalid pair gives NaN, which the samplers refuse at the end.
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <optional>

#include "brownian.h"
#include "cuda/cuda_kernels.h"

namespace scoreops::cuda {
namespace {

// One thread per group of 4 elements of one sample, so one Philox call gives the group's normals
// (or one tree node's normals, on the Brownian path).
template <typename scalar_t, bool kVec>
__global__ void sde_step_kernel(const scalar_t* x, const scalar_t* s, Coef a, Coef b, Coef c, Noise noise,
                                bool add_noise, Path path, int64_t batch, int64_t dim, int64_t groups,
                                scalar_t* out) {
  const NoiseKeys keys(noise);
  // The step's walk through the tree: the same for every thread.
  const bool brownian = add_noise && path.q != nullptr;
  const BrownianWalk walk = brownian ? brownian_table_walk(path.q, path.points, keys.step, path.depth,
                                                           path.carry != nullptr)
                                     : BrownianWalk{};
  const int64_t total = batch * groups;
  for (int64_t t = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; t < total; t += int64_t{gridDim.x} * blockDim.x) {
    const int64_t i = t / groups, g = t - i * groups, base = i * dim + 4 * g;
    const int n = static_cast<int>(std::min<int64_t>(4, dim - 4 * g));
    float xv[4], sv[4], av[4], r[4];
    load4<kVec>(x + base, n, xv);
    load4<kVec>(s + base, n, sv);
    a.load<kVec>(i, base, n, av);
    if (add_noise) {
      float bv[4], cv[4], z[4];
      b.load<kVec>(i, base, n, bv);
      c.load<kVec>(i, base, n, cv);
      if (brownian) {
        path_increment4<kVec>(walk, path, keys, i, g, base, n, z);
      } else {
        keys.normals(i, g, z);
      }
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        r[k] = ((xv[k] + av[k] * sv[k]) + bv[k] * z[k]) + cv[k] * (z[k] * z[k] - 1.0f);
      }
    } else {
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        r[k] = xv[k] + av[k] * sv[k];
      }
    }
    store4<kVec>(out + base, n, r);
  }
}


// Pass 1 of sample_sq_norms: block (i, chunk) sums s^2 and z^2 over its kChunk elements of
// sample i into partial[(i * chunks + chunk) * 2 + {0, 1}].
template <typename scalar_t, bool kVec>
__global__ void sq_norms_partial_kernel(const scalar_t* s, Noise noise, bool with_noise, int64_t dim, int64_t chunks,
                                        float* partial) {
  __shared__ typename BlockReduce::TempStorage tmp;
  const NoiseKeys keys(noise);
  const int64_t i = blockIdx.x / chunks, chunk = blockIdx.x - i * chunks;
  const int64_t g_begin = chunk * (kChunk / 4), g_end = std::min((dim + 3) / 4, g_begin + kChunk / 4);
  float ss = 0.0f, zz = 0.0f;
  for (int64_t g = g_begin + threadIdx.x; g < g_end; g += blockDim.x) {
    const int n = static_cast<int>(std::min<int64_t>(4, dim - 4 * g));
    float sv[4];
    load4<kVec>(s + i * dim + 4 * g, n, sv);
    float z[4] = {};  // stays 0 without noise
    if (with_noise) {
      keys.normals(i, g, z);
    }
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      if (k < n) {
        ss += sv[k] * sv[k];
        zz += z[k] * z[k];
      }
    }
  }
  ss = BlockReduce(tmp).Sum(ss);
  __syncthreads();  // tmp is reused
  zz = BlockReduce(tmp).Sum(zz);
  if (threadIdx.x == 0) {
    partial[2 * blockIdx.x] = ss;
    partial[2 * blockIdx.x + 1] = zz;
  }
}


// Launches sde_step on contiguous x, s into out (contiguous; may be x).
void run_sde_step(const StepShape& shape, const at::Tensor& x, const at::Tensor& s, const at::Tensor& a,
                  const at::Tensor& b, const at::Tensor& c, const Noise& noise, bool add_noise, const Path& path,
                  at::Tensor& out) {
  const at::Tensor ac = a.contiguous(), bc = b.contiguous(), cc = c.contiguous();
  const Coef coef[3] = {{ac.const_data_ptr<float>(), shape.a},
                        {bc.const_data_ptr<float>(), shape.b},
                        {cc.const_data_ptr<float>(), shape.c}};
  const int64_t groups = (shape.dim + 3) / 4;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  SCOREOPS_DISPATCH_FLOATS(x.scalar_type(), "sde_step", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* sp = s.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    bool vec = shape.dim % 4 == 0 && aligned4(xp, sizeof(scalar_t)) && aligned4(sp, sizeof(scalar_t)) &&
               aligned4(op, sizeof(scalar_t));
    vec = vec && (path.carry == nullptr || aligned4(path.carry, sizeof(float)));
    for (const Coef& k : coef) {
      vec = vec && (k.mode != CoefMode::kPerElement || aligned4(k.data, sizeof(float)));
    }
    const int grid = grid_for(shape.batch * groups);
    if (vec) {
      sde_step_kernel<scalar_t, true><<<grid, kThreads, 0, stream>>>(xp, sp, coef[0], coef[1], coef[2], noise,
                                                                      add_noise, path, shape.batch, shape.dim, groups,
                                                                      op);
    } else {
      sde_step_kernel<scalar_t, false><<<grid, kThreads, 0, stream>>>(xp, sp, coef[0], coef[1], coef[2], noise,
                                                                       add_noise, path, shape.batch, shape.dim, groups,
                                                                       op);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

at::Tensor sde_step(const at::Tensor& x, const at::Tensor& s, const at::Tensor& a, const at::Tensor& b,
                    const at::Tensor& c, const at::Tensor& seed, const at::Tensor& step, int64_t lane,
                    int64_t sample_offset, bool add_noise, const std::optional<at::Tensor>& path, int64_t depth) {
  const StepShape shape = check_sde_step(x, s, a, b, c, seed, step, path, depth, std::nullopt);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty(x.sizes(), x.options());
  if (x.numel() != 0) {
    const at::Tensor pc = path.has_value() ? path->contiguous() : at::Tensor();
    run_sde_step(shape, x.contiguous(), s.contiguous(), a, b, c, make_noise(seed, step, lane, sample_offset),
                 add_noise, make_path(pc, depth, std::nullopt), out);
  }
  return out;
}

void sde_step_(at::Tensor& x, const at::Tensor& s, const at::Tensor& a, const at::Tensor& b, const at::Tensor& c,
               const at::Tensor& seed, const at::Tensor& step, int64_t lane, int64_t sample_offset,
               bool add_noise, const std::optional<at::Tensor>& path, int64_t depth) {
  const StepShape shape = check_sde_step_inplace(x, s, a, b, c, seed, step, path, depth, std::nullopt);
  const c10::cuda::CUDAGuard guard(x.device());
  if (x.numel() == 0) {
    return;
  }
  const at::Tensor pc = path.has_value() ? path->contiguous() : at::Tensor();
  run_sde_step(shape, x, s.contiguous(), a, b, c, make_noise(seed, step, lane, sample_offset), add_noise,
               make_path(pc, depth, std::nullopt), x);
}

void sde_step_carried_(at::Tensor& x, const at::Tensor& s, const at::Tensor& a, const at::Tensor& b,
                       const at::Tensor& c, const at::Tensor& seed, const at::Tensor& step, int64_t sample_offset,
                       const at::Tensor& path, int64_t depth, at::Tensor& carry) {
  const StepShape shape = check_sde_step_inplace(x, s, a, b, c, seed, step, path, depth, carry);
  const c10::cuda::CUDAGuard guard(x.device());
  if (x.numel() == 0) {
    return;
  }
  run_sde_step(shape, x, s.contiguous(), a, b, c, make_noise(seed, step, 0, sample_offset), true,
               make_path(path.contiguous(), depth, carry), x);
}

at::Tensor sample_sq_norms(const at::Tensor& s, const at::Tensor& seed, const at::Tensor& step, int64_t lane,
                           int64_t sample_offset, bool with_noise) {
  check_sample_sq_norms(s, seed, step);
  const c10::cuda::CUDAGuard guard(s.device());
  const int64_t batch = s.size(0), dim = per_sample_numel(s);
  if (s.numel() == 0) {
    return at::zeros({batch, 2}, s.options().dtype(at::kFloat));
  }
  const at::Tensor sc = s.contiguous();
  const int64_t chunks = (dim + kChunk - 1) / kChunk;
  at::Tensor partial = at::empty({batch, chunks, 2}, s.options().dtype(at::kFloat));
  at::Tensor out = at::empty({batch, 2}, s.options().dtype(at::kFloat));
  const Noise noise = make_noise(seed, step, lane, sample_offset);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  SCOREOPS_DISPATCH_FLOATS(s.scalar_type(), "sample_sq_norms", [&] {
    const scalar_t* sp = sc.const_data_ptr<scalar_t>();
    float* pp = partial.mutable_data_ptr<float>();
    const auto blocks = static_cast<unsigned>(batch * chunks);
    if (dim % 4 == 0 && aligned4(sp, sizeof(scalar_t))) {
      sq_norms_partial_kernel<scalar_t, true><<<blocks, kThreads, 0, stream>>>(sp, noise, with_noise, dim, chunks, pp);
    } else {
      sq_norms_partial_kernel<scalar_t, false><<<blocks, kThreads, 0, stream>>>(sp, noise, with_noise, dim, chunks, pp);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  sum_partials_kernel<2><<<static_cast<unsigned>(batch), kThreads, 0, stream>>>(
      partial.const_data_ptr<float>(), chunks, out.mutable_data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(scoreops, CUDA, m) {
  m.impl("sde_step", &sde_step);
  m.impl("sde_step_", &sde_step_);
  m.impl("sde_step_carried_", &sde_step_carried_);
  m.impl("sample_sq_norms", &sample_sq_norms);
}

}  // namespace scoreops::cuda
