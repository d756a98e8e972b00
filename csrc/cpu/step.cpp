// CPU kernels of the fused SDE step (sde_step, sde_step_) and of the per-sample norms of the
// Langevin corrector (sample_sq_norms). Work is split into tiles of one sample's elements; each
// tile makes its own noise, so a tile's result depends only on its own elements. The step's z is
// the stream's normal, or with a path the Brownian tree's increment over the step (brownian.h).
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <optional>
#include <vector>

#include "brownian.h"
#include "cpu/cpu_kernels.h"

namespace scoreops::cpu {
namespace {

// out = (x + a s + b z) + c (z^2 - 1), rounded in the order the torch reference rounds.
SCOREOPS_CPU_CLONES
void noisy_update(const float* x, const float* s, const float* a, const float* b, const float* c, const float* z,
                  int64_t n, float* __restrict out) {
  for (int64_t j = 0; j < n; ++j) {
    const float mean = x[j] + a[j] * s[j];
    out[j] = (mean + b[j] * z[j]) + c[j] * (z[j] * z[j] - 1.0f);
  }
}

SCOREOPS_CPU_CLONES
void mean_update(const float* x, const float* s, const float* a, int64_t n, float* __restrict out) {
  for (int64_t j = 0; j < n; ++j) {
    out[j] = x[j] + a[j] * s[j];
  }
}

// The same with one a for the whole tile, written straight into float32 data: out may be x
// itself (each element is read before it is written), so it is not restrict.
SCOREOPS_CPU_CLONES
void mean_update_into(const float* x, const float* s, float a, int64_t n, float* out) {
  for (int64_t j = 0; j < n; ++j) {
    out[j] = x[j] + a * s[j];
  }
}

// Writes the step of contiguous (B, D) x and s into out, which may be x itself; walk (or null for
// the stream's normals) is the step's Brownian walk, carry (or null) its carried part.
template <typename scalar_t>
void sde_step_rows(const StepShape& shape, const scalar_t* x, const scalar_t* s, const Coef (&coef)[3],
                   const StreamArgs& noise, bool add_noise, const BrownianWalk* walk, float* carry, scalar_t* out) {
  for_each_tile(shape.batch, shape.dim, [&](int64_t, const Tile& t) {
    float xb[kTile], sb[kTile], ab[kTile], bb[kTile], cb[kTile], z[kTile], result[kTile];
    const int64_t offset = t.offset(shape.dim);
    const float* xv = load_floats(x + offset, t.size, xb);
    const float* sv = load_floats(s + offset, t.size, sb);
    if constexpr (std::is_same_v<scalar_t, float>) {
      // The noise-free mean streams x and s: no staging buffers between them and out.
      if (!add_noise && coef[0].mode != CoefMode::kPerElement) {
        mean_update_into(xv, sv, coef[0].tile_value(t), t.size, out + offset);
        return;
      }
    }
    const float* av = coef[0].tile_values(t, ab);
    if (add_noise) {
      tile_noise(noise, walk, carry, t, offset, z);
      noisy_update(xv, sv, av, coef[1].tile_values(t, bb), coef[2].tile_values(t, cb), z, t.size, result);
    } else {
      mean_update(xv, sv, av, t.size, result);
    }
    store_floats(result, t.size, out + offset);
  });
}

// Writes the step of x into out: contiguous, x's shape and dtype, possibly x itself.
void run_sde_step(const StepShape& shape, const at::Tensor& x, const at::Tensor& s, const at::Tensor& a,
                  const at::Tensor& b, const at::Tensor& c, const StreamArgs& noise, bool add_noise,
                  const std::optional<at::Tensor>& path, int64_t depth, const std::optional<at::Tensor>& carry,
                  at::Tensor& out) {
  if (x.numel() == 0) {
    return;
  }
  std::optional<BrownianWalk> walk;
  if (add_noise && path.has_value()) {
    walk = host_walk("sde_step", *path, noise.step, depth, carry.has_value());
  }
  const at::Tensor xc = x.contiguous(), sc = s.contiguous();
  const at::Tensor ac = a.contiguous(), bc = b.contiguous(), cc = c.contiguous();
  const Coef coef[3] = {{ac.const_data_ptr<float>(), shape.a, shape.dim},
                        {bc.const_data_ptr<float>(), shape.b, shape.dim},
                        {cc.const_data_ptr<float>(), shape.c, shape.dim}};
  SCOREOPS_DISPATCH_FLOATS(x.scalar_type(), "sde_step", [&] {
    sde_step_rows(shape, xc.const_data_ptr<scalar_t>(), sc.const_data_ptr<scalar_t>(), coef, noise, add_noise,
                  walk ? &*walk : nullptr, walk && carry ? carry->mutable_data_ptr<float>() : nullptr,
                  out.mutable_data_ptr<scalar_t>());
  });
}

at::Tensor sde_step(const at::Tensor& x, const at::Tensor& s, const at::Tensor& a, const at::Tensor& b,
                    const at::Tensor& c, const at::Tensor& seed, const at::Tensor& step, int64_t lane,
                    int64_t sample_offset, bool add_noise, const std::optional<at::Tensor>& path, int64_t depth) {
  const StepShape shape = check_sde_step(x, s, a, b, c, seed, step, path, depth, std::nullopt);
  at::Tensor out = at::empty(x.sizes(), x.options());
  run_sde_step(shape, x, s, a, b, c, host_stream_args(seed, step, lane, sample_offset), add_noise, path, depth,
               std::nullopt, out);
  return out;
}

void sde_step_(at::Tensor& x, const at::Tensor& s, const at::Tensor& a, const at::Tensor& b, const at::Tensor& c,
               const at::Tensor& seed, const at::Tensor& step, int64_t lane, int64_t sample_offset,
               bool add_noise, const std::optional<at::Tensor>& path, int64_t depth) {
  const StepShape shape = check_sde_step_inplace(x, s, a, b, c, seed, step, path, depth, std::nullopt);
  run_sde_step(shape, x, s, a, b, c, host_stream_args(seed, step, lane, sample_offset), add_noise, path, depth,
               std::nullopt, x);
}

void sde_step_carried_(at::Tensor& x, const at::Tensor& s, const at::Tensor& a, const at::Tensor& b,
                       const at::Tensor& c, const at::Tensor& seed, const at::Tensor& step, int64_t sample_offset,
                       const at::Tensor& path, int64_t depth, at::Tensor& carry) {
  const StepShape shape = check_sde_step_inplace(x, s, a, b, c, seed, step, path, depth, carry);
  run_sde_step(shape, x, s, a, b, c, host_stream_args(seed, step, 0, sample_offset), true, path, depth, carry, x);
}

at::Tensor sample_sq_norms(const at::Tensor& s, const at::Tensor& seed, const at::Tensor& step, int64_t lane,
                           int64_t sample_offset, bool with_noise) {
  check_sample_sq_norms(s, seed, step);
  const int64_t batch = s.size(0), dim = per_sample_numel(s), per_row = tiles_per_row(dim);
  at::Tensor out = at::zeros({batch, 2}, s.options().dtype(at::kFloat));
  if (s.numel() == 0) {
    return out;
  }
  const at::Tensor sc = s.contiguous();
  const StreamArgs noise = host_stream_args(seed, step, lane, sample_offset);
  // Per-tile float32 sums, then each row's tiles in order in float64: the result does not
  // depend on the number of threads.
  std::vector<float> partial(static_cast<size_t>(batch * per_row * 2), 0.0f);
  SCOREOPS_DISPATCH_FLOATS(s.scalar_type(), "sample_sq_norms", [&] {
    const scalar_t* data = sc.const_data_ptr<scalar_t>();
    for_each_tile(batch, dim, [&](int64_t index, const Tile& t) {
      float buf[kTile];
      partial[2 * index] = sum_squares(load_floats(data + t.offset(dim), t.size, buf), t.size);
      if (with_noise) {
        fill_normals(noise.key(t.row), t.begin, t.size, buf);
        partial[2 * index + 1] = sum_squares(buf, t.size);
      }
    });
  });
  float* result = out.mutable_data_ptr<float>();
  for (int64_t i = 0; i < batch; ++i) {
    double sums[2] = {0.0, 0.0};
    for (int64_t t = i * per_row; t < (i + 1) * per_row; ++t) {
      sums[0] += partial[2 * t];
      sums[1] += partial[2 * t + 1];
    }
    result[2 * i] = static_cast<float>(sums[0]);
    result[2 * i + 1] = static_cast<float>(sums[1]);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(scoreops, CPU, m) {
  m.impl("sde_step", &sde_step);
  m.impl("sde_step_", &sde_step_);
  m.impl("sde_step_carried_", &sde_step_carried_);
  m.impl("sample_sq_norms", &sample_sq_norms);
}

}  // namespace scoreops::cpu
