// Building blocks of the CPU kernels: tiling and threading, float32 staging of the data, and
// the vectorised noise loops (noise.cpp).
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "brownian.h"
#include "ops.h"
#include "philox.h"

// The hot loops are written as plain loops that GCC auto-vectorises; target_clones compiles them
// once per ISA and picks one at load time, so the .so runs on any x86-64 and uses AVX-512 where
// the CPU has it. The vector and scalar clones compute the same bits (no FMA contraction).
#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__)
#define SCOREOPS_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define SCOREOPS_CPU_CLONES
#endif

namespace scoreops::cpu {

// Elements per work item: a multiple of 4, so that a tile holds whole Philox groups, and small
// enough that a tile's float32 staging buffers stay in L1.
constexpr int64_t kTile = 1024;
// Tiles per parallel chunk: below about 16k elements a thread costs more than it saves.
constexpr int64_t kGrainTiles = 16;

// Elements [begin, begin + size) of row `row` of a (rows, dim) array.
struct Tile {
  int64_t row;
  int64_t begin;
  int64_t size;
  int64_t offset(int64_t dim) const { return row * dim + begin; }
};

inline int64_t tiles_per_row(int64_t dim) {
  return (dim + kTile - 1) / kTile;
}

// Calls f(tile_index, tile) for every tile of a (rows, dim) array, in parallel; tile_index runs
// over [0, rows * tiles_per_row(dim)), row-major.
template <typename F>
void for_each_tile(int64_t rows, int64_t dim, const F& f) {
  const int64_t per_row = tiles_per_row(dim);
  at::parallel_for(0, rows * per_row, kGrainTiles, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t row = t / per_row, begin_elem = (t % per_row) * kTile;
      f(t, Tile{row, begin_elem, std::min(kTile, dim - begin_elem)});
    }
  });
}

// n values as float32: the data itself when it is float32, else converted into buf.
template <typename scalar_t>
const float* load_floats(const scalar_t* data, int64_t n, float* buf) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    return data;
  } else {
    for (int64_t j = 0; j < n; ++j) {
      buf[j] = static_cast<float>(data[j]);
    }
    return buf;
  }
}

template <typename scalar_t>
void store_floats(const float* values, int64_t n, scalar_t* out) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    std::copy_n(values, n, out);
  } else {
    for (int64_t j = 0; j < n; ++j) {
      out[j] = static_cast<scalar_t>(values[j]);
    }
  }
}

// A coefficient of sde_step (1, B or B*D values, layout checked by shape in ops.cpp) as seen by one tile.
struct Coef {
  const float* data;
  CoefMode mode;
  int64_t dim;

  // Its values for the tile's elements: a slice of a per-element tensor, or the sample's
  // single value broadcast into buf (kTile floats).
  const float* tile_values(const Tile& t, float* buf) const {
    if (mode == CoefMode::kPerElement) {
      return data + t.offset(dim);
    }
    std::fill_n(buf, t.size, tile_value(t));
    return buf;
  }

  // The one value of a scalar or per-sample coefficient for the tile's sample.
  float tile_value(const Tile& t) const { return data[mode == CoefMode::kScalar ? 0 : t.row]; }
};

// The value of a 1-element int64 tensor (seed or step).
inline int64_t read_counter(const at::Tensor& t) {
  return *t.const_data_ptr<int64_t>();
}

// The noise-stream arguments shared by every tile of one call.
struct StreamArgs {
  int64_t seed, step, lane, sample_offset;
  StreamKey key(int64_t row) const { return stream_key(seed, step, lane, sample_offset + row); }
};

inline StreamArgs host_stream_args(const at::Tensor& seed, const at::Tensor& step, int64_t lane,
                                   int64_t sample_offset) {
  return {read_counter(seed), read_counter(step), lane, sample_offset};
}

// Stream normals of elements [j0, j0 + n) of the sample `key` names (j0 a multiple of 4).
void fill_normals(StreamKey key, int64_t j0, int64_t n, float* out);
// Raw stream words of groups [g0, g0 + groups): 4 * groups words.
void fill_words(StreamKey key, int64_t g0, int64_t groups, uint32_t* out);
// sum_j v[j]^2 in float32 with 16 partial sums, which vectorise.
float sum_squares(const float* v, int64_t n);

// The walk of step `step` of a path table (CPU, int64): from path[step] to path[step + 1], with
// one-line errors naming `op` for a step outside the table or an invalid pair.
BrownianWalk host_walk(const char* op, const at::Tensor& path, int64_t step, int64_t depth, bool carried);

// A step's noise for tile t (elements at `offset` of the (B, D) data) into z: the stream's normals,
// or with a walk (not null) its Brownian increments, reading and writing a carried walk's `carry`
// (the whole buffer; null when stateless). noise.cpp; its elementwise loops are cloned per ISA.
void tile_noise(const StreamArgs& noise, const BrownianWalk* walk, float* carry, const Tile& t, int64_t offset,
                float* z);

}  // namespace scoreops::cpu
