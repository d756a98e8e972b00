// CUDA kernels of scoreops._C. Every kernel runs on the current stream, reads seed and step from
// device memory (so a captured CUDA graph draws new noise at each replay), never syncs with the
// host, and takes all its memory from torch's caching allocator.
//
// One thread handles one group of 4 elements of one sample (one Philox call gives their 4
// normals) and loads them with one vector load when the rows are aligned. Arithmetic is float32
// and compiled with -fmad=false, so that it rounds as the CPU kernels and the torch reference do.
#include <ATen/MemoryOverlap.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cub/block/block_reduce.cuh>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "ops.h"
#include "philox.h"

namespace scoreops::cuda {
namespace {

constexpr int kThreads = 256;
// Grid-stride loops cover any size with at most this many blocks: more threads than an H200
// (132 SMs x 2048) keeps resident.
constexpr int64_t kMaxBlocks = 4096;
// Elements per block in the first pass of the reductions; fixed so that the summation order,
// and so the result, depends only on the shapes.
constexpr int64_t kChunk = 4 * 4 * kThreads;
// rk_combine / rk_error_sq take their stages as kernel arguments.
constexpr int kMaxStages = 16;

int grid_for(int64_t work_items) {
  return static_cast<int>(std::max<int64_t>(1, std::min(kMaxBlocks, (work_items + kThreads - 1) / kThreads)));
}

// Four elements, aligned for one vector load or store.
template <typename scalar_t>
struct alignas(4 * sizeof(scalar_t)) Vec4 {
  scalar_t v[4];
};

bool aligned4(const void* p, size_t elem_size) {
  return reinterpret_cast<uintptr_t>(p) % (4 * elem_size) == 0;
}

// Loads elements [0, n) of p (n <= 4) as float; kVec: one vector load of all four.
template <bool kVec, typename scalar_t>
__device__ __forceinline__ void load4(const scalar_t* p, int n, float out[4]) {
  if (kVec) {
    const Vec4<scalar_t> v = *reinterpret_cast<const Vec4<scalar_t>*>(p);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      out[k] = static_cast<float>(v.v[k]);
    }
  } else {
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      out[k] = k < n ? static_cast<float>(p[k]) : 0.0f;
    }
  }
}

template <bool kVec, typename scalar_t>
__device__ __forceinline__ void store4(scalar_t* p, int n, const float in[4]) {
  if (kVec) {
    Vec4<scalar_t> v;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      v.v[k] = static_cast<scalar_t>(in[k]);
    }
    *reinterpret_cast<Vec4<scalar_t>*>(p) = v;
  } else {
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      if (k < n) {
        p[k] = static_cast<scalar_t>(in[k]);
      }
    }
  }
}

// A coefficient of sde_step: 1, B or B*D float32 values (layout checked by shape in ops.cpp).
struct Coef {
  const float* data;
  CoefMode mode;

  // Its values for elements [base, base + n) (flat index) of sample i.
  template <bool kVec>
  __device__ __forceinline__ void load(int64_t i, int64_t base, int n, float out[4]) const {
    if (mode == CoefMode::kPerElement) {
      load4<kVec>(data + base, n, out);
    } else {
      const float v = data[mode == CoefMode::kScalar ? 0 : i];
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        out[k] = v;
      }
    }
  }
};

// The noise-stream arguments of one call, with seed and step still in device memory.
struct Noise {
  const int64_t* seed;
  const int64_t* step;
  int64_t lane;
  int64_t sample_offset;
};

// The same, with seed and step read (once per thread, at kernel start).
struct NoiseKeys {
  int64_t seed, step, lane, sample_offset;

  __device__ __forceinline__ explicit NoiseKeys(const Noise& n)
      : seed(*n.seed), step(*n.step), lane(n.lane), sample_offset(n.sample_offset) {}

  __device__ __forceinline__ StreamKey key(int64_t i) const {
    return stream_key(seed, step, lane, sample_offset + i);
  }

  // The normals of group `group` (elements 4 group .. 4 group + 3) of sample i.
  __device__ __forceinline__ void normals(int64_t i, int64_t group, float z[4]) const {
    philox_normal4(static_cast<uint32_t>(group), key(i), z);
  }
};

// ----------------------------------------------------------------------------- noise stream
__global__ void philox_bits_kernel(Noise noise, int64_t batch, int64_t groups, uint4* out) {
  const NoiseKeys keys(noise);
  const int64_t total = batch * groups;
  for (int64_t t = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; t < total; t += int64_t{gridDim.x} * blockDim.x) {
    const int64_t i = t / groups, g = t - i * groups;
    uint32_t w[4];
    philox4x32_10(static_cast<uint32_t>(g), keys.key(i), w);
    out[t] = make_uint4(w[0], w[1], w[2], w[3]);
  }
}

template <bool kVec>
__global__ void philox_normal_kernel(Noise noise, int64_t batch, int64_t dim, int64_t groups, float* out) {
  const NoiseKeys keys(noise);
  const int64_t total = batch * groups;
  for (int64_t t = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; t < total; t += int64_t{gridDim.x} * blockDim.x) {
    const int64_t i = t / groups, g = t - i * groups;
    float z[4];
    keys.normals(i, g, z);
    store4<kVec>(out + i * dim + 4 * g, static_cast<int>(std::min<int64_t>(4, dim - 4 * g)), z);
  }
}

// ----------------------------------------------------------------------------- SDE step
template <typename scalar_t, bool kVec>
__global__ void sde_step_kernel(const scalar_t* x, const scalar_t* s, Coef a, Coef b, Coef c, Noise noise,
                                bool add_noise, int64_t batch, int64_t dim, int64_t groups, scalar_t* out) {
  const NoiseKeys keys(noise);
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
      keys.normals(i, g, z);
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

// ----------------------------------------------------------------------------- reductions
using BlockReduce = cub::BlockReduce<float, kThreads>;

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

// Pass 2 of the reductions: out[r * kCols + col] = sum over k of partial[(r * chunks + k) * kCols + col],
// one block per row r, in a fixed order.
template <int kCols>
__global__ void sum_partials_kernel(const float* partial, int64_t chunks, float* out) {
  __shared__ typename BlockReduce::TempStorage tmp;
  const float* row = partial + blockIdx.x * chunks * kCols;
#pragma unroll
  for (int col = 0; col < kCols; ++col) {
    float acc = 0.0f;
    for (int64_t k = threadIdx.x; k < chunks; k += blockDim.x) {
      acc += row[k * kCols + col];
    }
    acc = BlockReduce(tmp).Sum(acc);
    if (threadIdx.x == 0) {
      out[blockIdx.x * kCols + col] = acc;
    }
    __syncthreads();
  }
}

// ----------------------------------------------------------------------------- Runge-Kutta
template <typename scalar_t>
struct Stages {
  const scalar_t* k[kMaxStages];
  float coeff[kMaxStages];
  int count;
};

// sum_j coeff[j] k_j for the 4 elements at flat index base (n of them valid).
template <bool kVec, typename scalar_t>
__device__ __forceinline__ void combine(const Stages<scalar_t>& st, int64_t base, int n, float acc[4]) {
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    acc[e] = 0.0f;
  }
  for (int j = 0; j < st.count; ++j) {
    float kv[4];
    load4<kVec>(st.k[j] + base, n, kv);
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      acc[e] = acc[e] + st.coeff[j] * kv[e];
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

// ----------------------------------------------------------------------------- host side
Noise make_noise(const at::Tensor& seed, const at::Tensor& step, int64_t lane, int64_t sample_offset) {
  return {seed.const_data_ptr<int64_t>(), step.const_data_ptr<int64_t>(), lane, sample_offset};
}

at::Tensor philox_bits(const at::Tensor& seed, const at::Tensor& step, int64_t lane, int64_t sample_offset,
                       int64_t batch, int64_t numel) {
  check_philox("philox_bits", seed, step, batch, numel);
  const c10::cuda::CUDAGuard guard(seed.device());
  const int64_t groups = (numel + 3) / 4;
  at::Tensor out = at::empty({batch, 4 * groups}, seed.options().dtype(at::kInt));
  if (out.numel() == 0) {
    return out;
  }
  philox_bits_kernel<<<grid_for(batch * groups), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      make_noise(seed, step, lane, sample_offset), batch, groups, reinterpret_cast<uint4*>(out.mutable_data_ptr()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor philox_normal(const at::Tensor& seed, const at::Tensor& step, int64_t lane, int64_t sample_offset,
                         int64_t batch, int64_t numel) {
  check_philox("philox_normal", seed, step, batch, numel);
  const c10::cuda::CUDAGuard guard(seed.device());
  at::Tensor out = at::empty({batch, numel}, seed.options().dtype(at::kFloat));
  if (out.numel() == 0) {
    return out;
  }
  const int64_t groups = (numel + 3) / 4;
  const Noise noise = make_noise(seed, step, lane, sample_offset);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  if (numel % 4 == 0) {
    philox_normal_kernel<true><<<grid_for(batch * groups), kThreads, 0, stream>>>(noise, batch, numel, groups,
                                                                                 out.mutable_data_ptr<float>());
  } else {
    philox_normal_kernel<false><<<grid_for(batch * groups), kThreads, 0, stream>>>(noise, batch, numel, groups,
                                                                                  out.mutable_data_ptr<float>());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// Launches sde_step on contiguous x, s into out (contiguous; may be x).
void run_sde_step(const StepShape& shape, const at::Tensor& x, const at::Tensor& s, const at::Tensor& a,
                  const at::Tensor& b, const at::Tensor& c, const Noise& noise, bool add_noise, at::Tensor& out) {
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
    for (const Coef& k : coef) {
      vec = vec && (k.mode != CoefMode::kPerElement || aligned4(k.data, sizeof(float)));
    }
    const int grid = grid_for(shape.batch * groups);
    if (vec) {
      sde_step_kernel<scalar_t, true><<<grid, kThreads, 0, stream>>>(xp, sp, coef[0], coef[1], coef[2], noise,
                                                                      add_noise, shape.batch, shape.dim, groups, op);
    } else {
      sde_step_kernel<scalar_t, false><<<grid, kThreads, 0, stream>>>(xp, sp, coef[0], coef[1], coef[2], noise,
                                                                       add_noise, shape.batch, shape.dim, groups, op);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

at::Tensor sde_step(const at::Tensor& x, const at::Tensor& s, const at::Tensor& a, const at::Tensor& b,
                    const at::Tensor& c, const at::Tensor& seed, const at::Tensor& step, int64_t lane,
                    int64_t sample_offset, bool add_noise) {
  const StepShape shape = check_sde_step(x, s, a, b, c, seed, step);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty(x.sizes(), x.options());
  if (x.numel() != 0) {
    run_sde_step(shape, x.contiguous(), s.contiguous(), a, b, c, make_noise(seed, step, lane, sample_offset),
                 add_noise, out);
  }
  return out;
}

void sde_step_(at::Tensor& x, const at::Tensor& s, const at::Tensor& a, const at::Tensor& b, const at::Tensor& c,
               const at::Tensor& seed, const at::Tensor& step, int64_t lane, int64_t sample_offset,
               bool add_noise) {
  const StepShape shape = check_sde_step(x, s, a, b, c, seed, step);
  // Reading s while writing x: an exact alias is safe element by element, a partial one is not.
  at::assert_no_partial_overlap(x, s);
  const c10::cuda::CUDAGuard guard(x.device());
  if (x.numel() == 0) {
    return;
  }
  if (x.is_contiguous()) {
    run_sde_step(shape, x, s.contiguous(), a, b, c, make_noise(seed, step, lane, sample_offset), add_noise, x);
  } else {
    x.copy_(sde_step(x, s, a, b, c, seed, step, lane, sample_offset, add_noise));
  }
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

// The stages with a non-zero coefficient, as contiguous tensors (kept alive by `keep`) and
// float32 coefficients, as the reference rounds them.
template <typename scalar_t>
Stages<scalar_t> nonzero_stages(const char* op, at::TensorList ks, at::ArrayRef<double> coeffs,
                                std::vector<at::Tensor>& keep) {
  Stages<scalar_t> st{};
  for (size_t j = 0; j < ks.size(); ++j) {
    if (coeffs[j] != 0.0) {
      TORCH_CHECK_VALUE(st.count < kMaxStages, op, ": the CUDA kernel takes at most ", kMaxStages,
                        " stages with non-zero coefficients, got more");
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
    const Stages<scalar_t> st = nonzero_stages<scalar_t>("rk_combine", ks, coeffs, keep);
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
    const Stages<scalar_t> st = nonzero_stages<scalar_t>("rk_error_sq", ks, e, keep);
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
  m.impl("philox_bits", &philox_bits);
  m.impl("philox_normal", &philox_normal);
  m.impl("sde_step", &sde_step);
  m.impl("sde_step_", &sde_step_);
  m.impl("sample_sq_norms", &sample_sq_norms);
  m.impl("rk_combine", &rk_combine);
  m.impl("rk_error_sq", &rk_error_sq);
}

}  // namespace scoreops::cuda
