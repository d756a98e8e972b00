// The noise stream's raw ops: philox_bits and philox_normal.
//
// CUDA kernels of scoreops._C. Every kernel runs on the current stream, reads seed and step from
// device memory (so a captured CUDA graph draws new noise at each replay), never syncs with the
// host, and takes all its memory from torch's caching allocator (cuda_kernels.h holds the shared parts).
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "cuda/cuda_kernels.h"

namespace scoreops::cuda {
namespace {

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

}  // namespace

TORCH_LIBRARY_IMPL(scoreops, CUDA, m) {
  m.impl("philox_bits", &philox_bits);
  m.impl("philox_normal", &philox_normal);
}

}  // namespace scoreops::cuda
