// The probability-flow ODE solver's stage ops: rk_combine and rk_error_sq.
//
// CUDA kernels of scoreops._C. Every kernel runs on the current stream, reads seed and step from
// device memory (so a captured CUDA graph draws new noise at each replay), never syncs with the
// host, and takes all its memory from torch's caching allocator (cuda_kernels.h holds the shared parts).
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <vector>

#include "cuda/cuda_kernels.h"

namespace scoreops::cuda {
namespace {

template <typename scalar_t>
struct Stages {
  const scalar_t* k[kMaxRkStages];
  float coeff[kMaxRkStages];
  int count;
};

// sum_j coeff[j] k_j for the 4 elements at flat index base (n of them valid).
template <bool kVec, typename scalar_t>
__device__ __forceinline__ void combine(const Stages<scalar_t>& st, int64_t base, int n, float acc[4]) {
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    acc[e] = 0.0f;
  }
  // Unrolled over every slot with a guard: constant indices keep the stage table in the
  // parameter space, where a loop to st.count would copy it to the stack.
#pragma unroll
  for (int j = 0; j < kMaxRkStages; ++j) {
    if (j < st.count) {
      float kv[4];
      load4<kVec>(st.k[j] + base, n, kv);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        acc[e] = acc[e] + st.coeff[j] * kv[e];
      }
    }
  }
}

template <typename scalar_t, bool kVec>
__global__ void rk_combine_kernel(const scalar_t* y, Stages<scalar_t> st, float h, int64_t numel, scalar_t* out) {
  const int64_t groups = (numel + 3) / 4;
  for (int64_t g = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; g < groups; g += int64_t{gridDim.x} * blockDim.x) {
    const int n = static_cast<int>(std::min<int64_t>(4, numel - 4 * g));
    float acc[4], yv[4];
    combine<kVec>(st, 4 * g, n, acc);
    load4<kVec>(y + 4 * g, n, yv);
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      acc[e] = yv[e] + h * acc[e];
    }
    store4<kVec>(out + 4 * g, n, acc);
  }
}

// Pass 1 of rk_error_sq: block b sums the squared scaled error over elements [b kChunk, (b+1) kChunk).
template <typename scalar_t, bool kVec>
__global__ void rk_error_partial_kernel(const scalar_t* y, const scalar_t* y_new, Stages<scalar_t> st, float h,
                                        float atol, float rtol, int64_t numel, float* partial) {
  __shared__ typename BlockReduce::TempStorage tmp;
  const int64_t g_begin = blockIdx.x * (kChunk / 4), g_end = std::min((numel + 3) / 4, g_begin + kChunk / 4);
  float sum = 0.0f;
  for (int64_t g = g_begin + threadIdx.x; g < g_end; g += blockDim.x) {
    const int n = static_cast<int>(std::min<int64_t>(4, numel - 4 * g));
    float err[4], yv[4], nv[4];
    combine<kVec>(st, 4 * g, n, err);
    load4<kVec>(y + 4 * g, n, yv);
    load4<kVec>(y_new + 4 * g, n, nv);
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      // max(|y|, |y_new|), NaN when either is (fmaxf would drop a NaN), as torch.maximum.
      const float ay = fabsf(yv[e]), an = fabsf(nv[e]);
      const float scaled = h * err[e] / (atol + rtol * (ay > an || isnan(ay) ? ay : an));
      sum += e < n ? scaled * scaled : 0.0f;
    }
  }
  sum = BlockReduce(tmp).Sum(sum);
  if (threadIdx.x == 0) {
    partial[blockIdx.x] = sum;
  }
}


// The stages with a non-zero coefficient, as contiguous tensors (kept alive by `keep`) and
// float32 coefficients, as the reference rounds them.
template <typename scalar_t>
Stages<scalar_t> nonzero_stages(at::TensorList ks, at::ArrayRef<double> coeffs,
                                std::vector<at::Tensor>& keep) {
  Stages<scalar_t> st{};
  for (size_t j = 0; j < ks.size(); ++j) {
    if (coeffs[j] != 0.0) {  // at most kMaxRkStages: checked in ops.cpp
      keep.push_back(ks[j].contiguous());
      st.k[st.count] = keep.back().const_data_ptr<scalar_t>();
      st.coeff[st.count] = static_cast<float>(coeffs[j]);
      ++st.count;
    }
  }
  return st;
}

template <typename scalar_t>
bool stages_aligned(const Stages<scalar_t>& st) {
  for (int j = 0; j < st.count; ++j) {
    if (!aligned4(st.k[j], sizeof(scalar_t))) {
      return false;
    }
  }
  return true;
}

at::Tensor rk_combine(const at::Tensor& y, at::TensorList ks, at::ArrayRef<double> coeffs, double h) {
  check_rk_combine(y, ks, coeffs);
  const c10::cuda::CUDAGuard guard(y.device());
  at::Tensor out = at::empty(y.sizes(), y.options());
  const int64_t numel = y.numel();
  if (numel == 0) {
    return out;
  }
  const at::Tensor yc = y.contiguous();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  SCOREOPS_DISPATCH_FLOATS(y.scalar_type(), "rk_combine", [&] {
    std::vector<at::Tensor> keep;
    const Stages<scalar_t> st = nonzero_stages<scalar_t>(ks, coeffs, keep);
    const scalar_t* yp = yc.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    const int grid = grid_for((numel + 3) / 4);
    const auto hf = static_cast<float>(h);
    if (numel % 4 == 0 && aligned4(yp, sizeof(scalar_t)) && aligned4(op, sizeof(scalar_t)) && stages_aligned(st)) {
      rk_combine_kernel<scalar_t, true><<<grid, kThreads, 0, stream>>>(yp, st, hf, numel, op);
    } else {
      rk_combine_kernel<scalar_t, false><<<grid, kThreads, 0, stream>>>(yp, st, hf, numel, op);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor rk_error_sq(const at::Tensor& y, const at::Tensor& y_new, at::TensorList ks, at::ArrayRef<double> e,
                       double h, double atol, double rtol) {
  check_rk_error_sq(y, y_new, ks, e);
  const c10::cuda::CUDAGuard guard(y.device());
  const int64_t numel = y.numel();
  if (numel == 0) {
    return at::zeros({}, y.options().dtype(at::kFloat));
  }
  const at::Tensor yc = y.contiguous(), nc = y_new.contiguous();
  const int64_t chunks = (numel + kChunk - 1) / kChunk;
  at::Tensor partial = at::empty({chunks}, y.options().dtype(at::kFloat));
  at::Tensor out = at::empty({}, y.options().dtype(at::kFloat));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  SCOREOPS_DISPATCH_FLOATS(y.scalar_type(), "rk_error_sq", [&] {
    std::vector<at::Tensor> keep;
    const Stages<scalar_t> st = nonzero_stages<scalar_t>(ks, e, keep);
    const scalar_t* yp = yc.const_data_ptr<scalar_t>();
    const scalar_t* np = nc.const_data_ptr<scalar_t>();
    float* pp = partial.mutable_data_ptr<float>();
    const auto blocks = static_cast<unsigned>(chunks);
    const auto hf = static_cast<float>(h), af = static_cast<float>(atol), rf = static_cast<float>(rtol);
    if (numel % 4 == 0 && aligned4(yp, sizeof(scalar_t)) && aligned4(np, sizeof(scalar_t)) && stages_aligned(st)) {
      rk_error_partial_kernel<scalar_t, true><<<blocks, kThreads, 0, stream>>>(yp, np, st, hf, af, rf, numel, pp);
    } else {
      rk_error_partial_kernel<scalar_t, false><<<blocks, kThreads, 0, stream>>>(yp, np, st, hf, af, rf, numel, pp);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  sum_partials_kernel<1><<<1, kThreads, 0, stream>>>(partial.const_data_ptr<float>(), chunks,
                                                     out.mutable_data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(scoreops, CUDA, m) {
  m.impl("rk_combine", &rk_combine);
  m.impl("rk_error_sq", &rk_error_sq);
}

}  // namespace scoreops::cuda
