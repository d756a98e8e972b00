// The adaptive SDE solver's second stage (adaptive_sde_step): the stochastic improved-Euler
// proposal and, in the same pass, each sample's scaled error against the Euler-Maruyama proposal:
//   x_high = ((x + x_low) + (a s + b z)) / 2
//   err_i  = sqrt(mean_j ((x_low - x_high)_j / max(atol, rtol max(|x_low_j|, |x_prev_j|)))^2)
// z is made again from the stream (the same key as the first stage's sde_step), never stored.
//
// CUDA kernels of scoreops._C. Every kernel runs on the current stream, reads seed and step from
// device memory (so a captured CUDA graph draws new noise at each replay), never syncs with the
// host, and takes all its memory from torch's caching allocator (cuda_kernels.h holds the shared parts).
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <tuple>

#include "cuda/cuda_kernels.h"

namespace scoreops::cuda {
namespace {

// Pass 1: block (i, chunk) writes x_high for its kChunk elements of sample i and the sum of their
// squared scaled differences into partial[i * chunks + chunk].
template <typename scalar_t, bool kVec>
__global__ void adaptive_sde_partial_kernel(const scalar_t* x, const scalar_t* x_low, const scalar_t* x_prev,
                                            const scalar_t* s, Coef a, Coef b, Noise noise, float atol, float rtol,
                                            int64_t dim, int64_t chunks, scalar_t* out, float* partial) {
  __shared__ typename BlockReduce::TempStorage tmp;
  const NoiseKeys keys(noise);
  const int64_t i = blockIdx.x / chunks, chunk = blockIdx.x - i * chunks;
  const int64_t g_begin = chunk * (kChunk / 4), g_end = std::min((dim + 3) / 4, g_begin + kChunk / 4);
  float sum = 0.0f;
  for (int64_t g = g_begin + threadIdx.x; g < g_end; g += blockDim.x) {
    const int n = static_cast<int>(std::min<int64_t>(4, dim - 4 * g));
    const int64_t base = i * dim + 4 * g;
    float xv[4], lv[4], pv[4], sv[4], av[4], bv[4], z[4], high[4];
    load4<kVec>(x + base, n, xv);
    load4<kVec>(x_low + base, n, lv);
    load4<kVec>(x_prev + base, n, pv);
    load4<kVec>(s + base, n, sv);
    a.load<kVec>(i, base, n, av);
    b.load<kVec>(i, base, n, bv);
    keys.normals(i, g, z);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      high[k] = ((xv[k] + lv[k]) + (av[k] * sv[k] + bv[k] * z[k])) * 0.5f;
      // Both maxima are NaN when an operand is (fmaxf would drop it), as torch.maximum and clamp_min.
      const float al = fabsf(lv[k]), ap = fabsf(pv[k]);
      const float rel = rtol * (al > ap || isnan(al) ? al : ap);
      const float delta = rel > atol || isnan(rel) ? rel : atol;
      const float ratio = (lv[k] - high[k]) / delta;
      sum += k < n ? ratio * ratio : 0.0f;
    }
    store4<kVec>(out + base, n, high);
  }
  sum = BlockReduce(tmp).Sum(sum);
  if (threadIdx.x == 0) {
    partial[blockIdx.x] = sum;
  }
}

// Pass 2: err[i] = sqrt(sum of row i's partials / dim), one block per sample, in a fixed order.
__global__ void rms_rows_kernel(const float* partial, int64_t chunks, int64_t dim, float* err) {
  __shared__ typename BlockReduce::TempStorage tmp;
  const float* row = partial + blockIdx.x * chunks;
  float acc = 0.0f;
  for (int64_t k = threadIdx.x; k < chunks; k += blockDim.x) {
    acc += row[k];
  }
  acc = BlockReduce(tmp).Sum(acc);
  if (threadIdx.x == 0) {
    err[blockIdx.x] = static_cast<float>(sqrt(static_cast<double>(acc) / static_cast<double>(dim)));
  }
}

std::tuple<at::Tensor, at::Tensor> adaptive_sde_step(const at::Tensor& x, const at::Tensor& x_low,
                                                     const at::Tensor& x_prev, const at::Tensor& s,
                                                     const at::Tensor& a, const at::Tensor& b, const at::Tensor& seed,
                                                     const at::Tensor& step, int64_t lane, int64_t sample_offset,
                                                     double atol, double rtol) {
  const StepShape shape = check_adaptive_sde_step(x, x_low, x_prev, s, a, b, seed, step, atol, rtol);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty(x.sizes(), x.options());
  if (x.numel() == 0) {
    return {out, at::zeros({shape.batch}, x.options().dtype(at::kFloat))};
  }
  const at::Tensor xc = x.contiguous(), lc = x_low.contiguous(), pc = x_prev.contiguous(), sc = s.contiguous();
  const at::Tensor ac = a.contiguous(), bc = b.contiguous();
  const Coef coef_a{ac.const_data_ptr<float>(), shape.a}, coef_b{bc.const_data_ptr<float>(), shape.b};
  const int64_t chunks = (shape.dim + kChunk - 1) / kChunk;
  at::Tensor partial = at::empty({shape.batch, chunks}, x.options().dtype(at::kFloat));
  at::Tensor err = at::empty({shape.batch}, x.options().dtype(at::kFloat));
  const Noise noise = make_noise(seed, step, lane, sample_offset);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const auto atol_f = static_cast<float>(atol), rtol_f = static_cast<float>(rtol);
  SCOREOPS_DISPATCH_FLOATS(x.scalar_type(), "adaptive_sde_step", [&] {
    const scalar_t* xp = xc.const_data_ptr<scalar_t>();
    const scalar_t* lp = lc.const_data_ptr<scalar_t>();
    const scalar_t* pp = pc.const_data_ptr<scalar_t>();
    const scalar_t* sp = sc.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    float* part = partial.mutable_data_ptr<float>();
    bool vec = shape.dim % 4 == 0;
    for (const void* p : {static_cast<const void*>(xp), static_cast<const void*>(lp), static_cast<const void*>(pp),
                          static_cast<const void*>(sp), static_cast<const void*>(op)}) {
      vec = vec && aligned4(p, sizeof(scalar_t));
    }
    for (const Coef& k : {coef_a, coef_b}) {
      vec = vec && (k.mode != CoefMode::kPerElement || aligned4(k.data, sizeof(float)));
    }
    const auto blocks = static_cast<unsigned>(shape.batch * chunks);
    if (vec) {
      adaptive_sde_partial_kernel<scalar_t, true><<<blocks, kThreads, 0, stream>>>(
          xp, lp, pp, sp, coef_a, coef_b, noise, atol_f, rtol_f, shape.dim, chunks, op, part);
    } else {
      adaptive_sde_partial_kernel<scalar_t, false><<<blocks, kThreads, 0, stream>>>(
          xp, lp, pp, sp, coef_a, coef_b, noise, atol_f, rtol_f, shape.dim, chunks, op, part);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  rms_rows_kernel<<<static_cast<unsigned>(shape.batch), kThreads, 0, stream>>>(
      partial.const_data_ptr<float>(), chunks, shape.dim, err.mutable_data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {out, err};
}

}  // namespace

TORCH_LIBRARY_IMPL(scoreops, CUDA, m) {
  m.impl("adaptive_sde_step", &adaptive_sde_step);
}

}  // namespace scoreops::cuda
