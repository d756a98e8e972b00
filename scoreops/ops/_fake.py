"""Fake (meta) implementations of the ``scoreops._C`` ops, for torch.compile and FakeTensor tracing.

Each returns an empty tensor of the shape, dtype and device the real kernel returns
(``docs/kernels.md``). The C++ kernels check their inputs; these check only that the tensors
share one device, because one meta tensor among real ones sends an eager call here, past the
C++ checks. Import after :mod:`scoreops._C`, which defines the op schemas.
"""
from __future__ import annotations

import torch


def _same_device(*tensors) -> None:
    flat = [t for arg in tensors for t in (arg if isinstance(arg, (list, tuple)) else [arg])]
    devices = {t.device for t in flat}
    if len(devices) > 1:
        raise ValueError(f"scoreops ops need all tensors on one device, got {sorted(map(str, devices))}")


def _optional(*tensors) -> list:
    return [t for t in tensors if t is not None]


def _words(numel: int) -> int:
    return 4 * ((numel + 3) // 4)


@torch.library.register_fake("scoreops::philox_bits")
def _philox_bits(seed, step, lane, sample_offset, batch, numel):
    _same_device(seed, step)
    return seed.new_empty((batch, _words(numel)), dtype=torch.int32)


@torch.library.register_fake("scoreops::philox_normal")
def _philox_normal(seed, step, lane, sample_offset, batch, numel):
    _same_device(seed, step)
    return seed.new_empty((batch, numel), dtype=torch.float32)


@torch.library.register_fake("scoreops::sde_step")
def _sde_step(x, s, a, b, c, seed, step, lane, sample_offset, add_noise, path=None, depth=0):
    _same_device(x, s, a, b, c, seed, step, *_optional(path))
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.register_fake("scoreops::sde_step_")
def _sde_step_(x, s, a, b, c, seed, step, lane, sample_offset, add_noise, path=None, depth=0):
    _same_device(x, s, a, b, c, seed, step, *_optional(path))
    return None


@torch.library.register_fake("scoreops::sde_step_carried_")
def _sde_step_carried_(x, s, a, b, c, seed, step, sample_offset, path, depth, carry):
    _same_device(x, s, a, b, c, seed, step, path, carry)
    return None


@torch.library.register_fake("scoreops::sample_sq_norms")
def _sample_sq_norms(s, seed, step, lane, sample_offset, with_noise):
    _same_device(s, seed, step)
    return s.new_empty((s.shape[0], 2), dtype=torch.float32)


@torch.library.register_fake("scoreops::sigma_step")
def _sigma_step(x, terms, coefs, seed, step, lane, sample_offset, add_noise, path=None, depth=0):
    _same_device(x, terms, coefs, seed, step, *_optional(path))
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.register_fake("scoreops::sigma_step_carried")
def _sigma_step_carried(x, terms, coefs, seed, step, sample_offset, path, depth, carry):
    _same_device(x, terms, coefs, seed, step, path, carry)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.register_fake("scoreops::rk_combine")
def _rk_combine(y, ks, coeffs, h):
    _same_device(y, ks)
    return torch.empty_like(y, memory_format=torch.contiguous_format)


@torch.library.register_fake("scoreops::rk_error_sq")
def _rk_error_sq(y, y_new, ks, e, h, atol, rtol):
    _same_device(y, y_new, ks)
    return y.new_empty((), dtype=torch.float32)


@torch.library.register_fake("scoreops::adaptive_sde_step")
def _adaptive_sde_step(x, x_low, x_prev, s, a, b, seed, step, lane, sample_offset, atol, rtol):
    _same_device(x, x_low, x_prev, s, a, b, seed, step)
    return torch.empty_like(x, memory_format=torch.contiguous_format), x.new_empty((x.shape[0],), dtype=torch.float32)
