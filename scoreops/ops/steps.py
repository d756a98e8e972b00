"""The public fused SDE-step ops and the raw noise stream: input checks, then one backend call.

See :mod:`scoreops.ops` for the backends and the meaning of ``seed``/``step``.
"""
from __future__ import annotations

import functools
import math

import torch

from ..core.checks import (as_counter, canonical_device, check_batched, check_choice, check_float, check_int,
                           check_positive, coef_layout)
from .backends import implementation, resolve_backend
from .sigma_steps import check_carry, check_path


def _records_grad(*tensors: torch.Tensor) -> bool:
    """Whether autograd would record an op on these inputs."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def as_coef(name: str, v, x: torch.Tensor) -> torch.Tensor:
    """A step coefficient as a float32 tensor on x's device: one value, one per sample
    (shape (B,) or (B, 1, ..., 1)) or one per element (x's shape)."""
    if isinstance(v, torch.Tensor):
        if v.dtype.is_complex or not v.dtype.is_floating_point:
            raise TypeError(f"{name} must be a real floating tensor or a float, got {v.dtype}")
        if v.device != x.device:
            raise ValueError(f"{name} is on {v.device} but x is on {x.device}")
        coef_layout(name, v.shape, x.shape)
        return v.to(torch.float32).contiguous()
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{name} must be a float or a tensor, got {type(v).__name__}")
    return torch.full((1,), float(v), dtype=torch.float32, device=x.device)


def sde_step(x: torch.Tensor, score: torch.Tensor, a, b, c=0.0, *, seed, step, lane: int = 0,
             sample_offset: int = 0, add_noise: bool = True, path: torch.Tensor | None = None, depth: int = 0,
             carry: torch.Tensor | None = None, inplace: bool = False, backend: str = "auto") -> torch.Tensor:
    """One fused SDE update ``x + a*score + b*z + c*(z*z - 1)``, z ~ N(0, I) from the stream.

    EM is ``a = g**2 dt, b = g sqrt(dt), c = 0``; Milstein adds ``c = g g' dt / 2``; the VE
    reverse-diffusion predictor is ``a = G**2, b = G``; the Langevin corrector is
    ``a = eps, b = sqrt(2 eps)``.

    Args:
        x: (B, ...) state, float32/float16/bfloat16; arithmetic is float32.
        score: score (or drift) of x's shape, dtype and device.
        a, b, c: floats, or float tensors of one value, one per sample (shape (B,) or (B, 1, ..., 1)) or
            one per element (x's shape).
        seed, step: noise-stream key and step counter (int or 1-element int64 tensor).
        lane: stream lane (0 predictor, 1 + r for the r-th corrector step).
        sample_offset: global index of sample 0 (for sharded sampling).
        add_noise: False returns the mean ``x + a*score`` (the last step of a sampler); path is
            then ignored.
        path: None for the stream's i.i.d. normals; else the Brownian tree's int64 table of
            coordinates, one per grid point (:meth:`scoreops.core.brownian.BrownianTree.grid_table`),
            on x's device: z, in both ``b*z`` and Milstein's ``c*(z*z - 1)``, is then the normalised
            increment from ``path[step]`` to ``path[step + 1]``
            (:func:`scoreops.core.brownian.brownian_increment`), made in the kernel from (seed,
            sample, element) alone, so ``lane`` is unused. The kernels read both coordinates on the
            device; the CPU kernel and the torch reference refuse a step outside the table or an
            invalid pair, the CUDA and Triton kernels give NaN.
        depth: the tree's depth L, 0 <= L <= 32 (with path).
        carry: with path and add_noise, the buffer a descending walk's steps share, as in
            :func:`scoreops.ops.sigma_step`: at most L + 1 node normals per element, the same z;
            no gradient.
        inplace: write the result into x and return x.
        backend: see the module docstring.
    Returns:
        The new state, x's shape and dtype (x itself when inplace).
    """
    check_batched("x", x)
    check_float("score", score, like=x)
    a, b, c = as_coef("a", a, x), as_coef("b", b, x), as_coef("c", c, x)
    seed, step = as_counter("seed", seed, x.device), as_counter("step", step, x.device)
    depth = check_path(path, depth, x.device)
    check_carry(carry, path, x, x, score, a, b, c)
    if x.numel() == 0:
        return x if inplace else x.clone()
    impl = resolve_backend(backend, x.device)
    if carry is not None and add_noise:
        out = x if inplace and x.is_contiguous() else x.clone(memory_format=torch.contiguous_format)
        implementation("sde_step_carried_", impl)(out, score, a, b, c, seed, step, sample_offset, path, depth, carry)
        return x.copy_(out) if inplace and out is not x else out
    args = (x, score, a, b, c, seed, step, lane, sample_offset, add_noise, path, depth)
    if inplace and impl != "torch" and x.is_contiguous() and not _records_grad(x, score, a, b, c):
        implementation("sde_step_", impl)(*args)
        return x
    # The one in-place fallback for every backend: strided x, the torch reference, and autograd,
    # which records an out-of-place op and a copy.
    out = implementation("sde_step", impl)(*args)
    return x.copy_(out) if inplace else out


def sample_sq_norms(score: torch.Tensor, *, seed=0, step=0, lane: int = 0, sample_offset: int = 0,
                    with_noise: bool = False, backend: str = "auto") -> torch.Tensor:
    """Per-sample squared L2 norms in one reduction pass: float32 (B, 2).

    Column 0 is ``sum(score_i**2)``; column 1 is ``sum(z_i**2)`` of the stream noise at
    (seed, step, lane) when ``with_noise`` (the same z an :func:`sde_step` with those
    arguments draws), else 0.
    """
    check_float("score", score)
    if score.dim() < 1:
        raise ValueError("score must have a leading batch dimension")
    seed, step = as_counter("seed", seed, score.device), as_counter("step", step, score.device)
    impl = resolve_backend(backend, score.device)
    return implementation("sample_sq_norms", impl)(score, seed, step, lane, sample_offset, with_noise)


NOISE_NORMS = ("fixed", "sampled")


def langevin_step_size(norms: torch.Tensor, snr: float, numel: int, noise_norm: str,
                       per_sample: bool) -> torch.Tensor:
    """Langevin step ``eps = 2 (snr * noise_norm / grad_norm)**2`` from :func:`sample_sq_norms`.

    ``grad_norm`` is the batch mean of per-sample score norms (tutorial), or each sample's own
    norm when ``per_sample``; ``noise_norm`` is ``sqrt(numel)`` (``"fixed"``) or the same
    statistic of the sampled z (``"sampled"``). Returns float32 (1,) or (B,).
    """
    norms = norms.sqrt()
    grad_norm, z_norm = norms[:, 0], norms[:, 1]
    if not per_sample:
        grad_norm, z_norm = grad_norm.mean().reshape(1), z_norm.mean().reshape(1)
    noise_scale = z_norm if noise_norm == "sampled" else math.sqrt(numel)
    return 2.0 * (snr * noise_scale / grad_norm) ** 2


def langevin_correct(x: torch.Tensor, score: torch.Tensor, snr: float, *, seed, step, lane: int = 1,
                     sample_offset: int = 0, noise_norm: str = "fixed", per_sample: bool = False,
                     inplace: bool = False, backend: str = "auto") -> torch.Tensor:
    """One Langevin corrector step ``x + eps*score + sqrt(2 eps) z`` as two fused passes.

    A reduction pass takes the per-sample norms of ``score`` (and of z for
    ``noise_norm="sampled"``); the update pass makes the same z again from the stream rather
    than storing it. See :func:`langevin_step_size` for ``eps``.

    Args:
        x, score: (B, ...) state and its score, same shape/dtype/device.
        snr: signal-to-noise ratio, > 0 (tutorial: 0.16).
        noise_norm: ``"fixed"`` (sqrt(d), tutorial) or ``"sampled"`` (score_sde / diffusers).
        per_sample: use each sample's own norms, so that it does not depend on its batch.
        Others as :func:`sde_step`; ``lane`` defaults to the first corrector lane.
    """
    check_batched("x", x)
    check_float("score", score, like=x)
    check_choice("noise_norm", noise_norm, NOISE_NORMS)
    snr = check_positive("snr", snr)
    if x.numel() == 0:
        return x if inplace else x.clone()
    impl = resolve_backend(backend, x.device)
    seed, step = as_counter("seed", seed, x.device), as_counter("step", step, x.device)
    norms = implementation("sample_sq_norms", impl)(score, seed, step, lane, sample_offset, noise_norm == "sampled")
    eps = langevin_step_size(norms, snr, x.numel() // x.shape[0], noise_norm, per_sample)
    return sde_step(x, score, eps, (2.0 * eps).sqrt(), _zero(x.device), seed=seed, step=step, lane=lane,
                    sample_offset=sample_offset, inplace=inplace, backend=impl)


@functools.lru_cache(maxsize=None)
def _zero(device: torch.device) -> torch.Tensor:
    """A read-only float32 zero coefficient per device, so a corrector step allocates none."""
    return torch.zeros(1, dtype=torch.float32, device=device)


def philox_normal(batch: int, numel: int, *, seed, step=0, lane: int = 0, sample_offset: int = 0,
                  device: torch.device | str = "cpu", backend: str = "auto") -> torch.Tensor:
    """Standard normals of the stream: float32 (batch, numel) for samples ``sample_offset + i``."""
    return _stream_op("philox_normal", batch, numel, seed, step, lane, sample_offset, device, backend)


def philox_bits(batch: int, numel: int, *, seed, step=0, lane: int = 0, sample_offset: int = 0,
                device: torch.device | str = "cpu", backend: str = "auto") -> torch.Tensor:
    """The stream's raw uint32 words bit-cast to int32: (batch, 4 * ceil(numel / 4))."""
    return _stream_op("philox_bits", batch, numel, seed, step, lane, sample_offset, device, backend)


def _stream_op(name: str, batch, numel, seed, step, lane, sample_offset, device, backend) -> torch.Tensor:
    """Check the raw stream ops' arguments and call op ``name`` on the chosen backend."""
    device = canonical_device(device)
    batch, numel = check_int("batch", batch, 0), check_int("numel", numel, 0)
    seed, step = as_counter("seed", seed, device), as_counter("step", step, device)
    return implementation(name, resolve_backend(backend, device))(seed, step, lane, sample_offset, batch, numel)
