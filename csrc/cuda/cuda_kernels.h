// Building blocks shared by the CUDA kernels of scoreops._C (noise.cu, step.cu, rk.cu): launch
// geometry, vectorised loads and stores, step coefficients, the noise stream's arguments, and the
// second pass of the reductions.
//
// One thread handles one group of 4 elements of one sample (one Philox call gives their 4
// normals) and loads them with one vector load when the rows are aligned. Arithmetic is float32
// and compiled with -fmad=false, so that it rounds as the CPU kernels and the torch reference do.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cub/block/block_reduce.cuh>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <type_traits>

#include "brownian.h"
#include "ops.h"
#include "philox.h"

namespace scoreops::cuda {

constexpr int kThreads = 256;
// Grid-stride loops cover any size with at most this many blocks: more threads than an H200
// (132 SMs x 2048) keeps resident.
constexpr int64_t kMaxBlocks = 4096;
// Elements per block in the first pass of the reductions; fixed so that the summation order,
// and so the result, depends only on the shapes.
constexpr int64_t kChunk = 4 * 4 * kThreads;

inline int grid_for(int64_t work_items) {
  return static_cast<int>(std::max<int64_t>(1, std::min(kMaxBlocks, (work_items + kThreads - 1) / kThreads)));
}

// Four elements, aligned for one vector load or store.
template <typename scalar_t>
struct alignas(4 * sizeof(scalar_t)) Vec4 {
  scalar_t v[4];
};

inline bool aligned4(const void* p, size_t elem_size) {
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

// The Brownian path of a call: the int64 table of tree coordinates (null: i.i.d. noise), and the
// carry buffer of a carried walk (null: stateless).
struct Path {
  const int64_t* q;
  int64_t points;
  int64_t depth;
  float* carry;
};

inline Path make_path(const at::Tensor& contiguous_path, int64_t depth, const std::optional<at::Tensor>& carry) {
  const bool tree = contiguous_path.defined();
  return {tree ? contiguous_path.const_data_ptr<int64_t>() : nullptr, tree ? contiguous_path.size(0) : 0, depth,
          tree && carry.has_value() ? carry->mutable_data_ptr<float>() : nullptr};
}

// The Brownian increment of group g (elements base .. base + n - 1, n <= 4) of sample i into z,
// on the call's walk; a carried walk reads and writes the group's carry as one float4 where kVec
// (the carry aligned too), else element by element.
template <bool kVec>
__device__ __forceinline__ void path_increment4(const BrownianWalk& walk, const Path& path, const NoiseKeys& keys,
                                                int64_t i, int64_t g, int64_t base, int n, float z[4]) {
  float delta[4], scratch[4], part[4], held[4] = {};
  const BrownianGroupNormals normals{static_cast<uint32_t>(g), keys.seed, keys.sample_offset + i};
  if (walk.carried && !walk.to_top) {
    load4<kVec>(path.carry + base, n, held);
  }
  brownian_increment(walk, normals, std::integral_constant<int, 4>{}, delta, scratch, part, z, held);
  if (walk.carried && walk.write_carry) {
    store4<kVec>(path.carry + base, n, held);
  }
}

// seed and step stay in device memory: the kernels read them, so a graph replay sees new values.
inline Noise make_noise(const at::Tensor& seed, const at::Tensor& step, int64_t lane, int64_t sample_offset) {
  return {seed.const_data_ptr<int64_t>(), step.const_data_ptr<int64_t>(), lane, sample_offset};
}


using BlockReduce = cub::BlockReduce<float, kThreads>;

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

}  // namespace scoreops::cuda
