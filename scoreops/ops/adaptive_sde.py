"""The fused second stage of the adaptive SDE solver (Jolicoeur-Martineau et al. 2021, "Gotta Go
Fast"): the stochastic improved-Euler proposal and each sample's scaled error, in one pass."""
from __future__ import annotations

import math
import numbers

import torch

from ..core.checks import as_counter, check_batched, check_float
from .backends import implementation, resolve_backend
from .steps import as_coef


def _check_tolerance(name: str, v, low_ok: bool) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v < 0 or (v == 0 and not low_ok):
        raise ValueError(f"{name} must be a finite float {'>= 0' if low_ok else '> 0'}, got {v!r}")
    return float(v)


def adaptive_sde_step(x: torch.Tensor, x_low: torch.Tensor, x_prev: torch.Tensor, score: torch.Tensor, a, b, *,
                      seed, step, lane: int = 0, sample_offset: int = 0, atol: float, rtol: float,
                      backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """The adaptive SDE solver's high-order proposal and scaled error, in one fused pass.

    One attempt of the solver from t to t - h draws one z for both stages. The first is
    Euler-Maruyama, ``x_low = x + h g(t)**2 s(x, t) + sqrt(h) g(t) z``
    (:func:`~scoreops.ops.sde_step`); this op is the second, stochastic improved Euler::

        x_high = ((x + x_low) + (a * score + b * z)) / 2,   a = h g(t-h)**2, b = sqrt(h) g(t-h),
        err_i  = sqrt(mean_j ((x_low - x_high)_j / delta_j)**2),
        delta  = max(atol, rtol * max(|x_low|, |x_prev|)),

    with ``score = s(x_low, t - h)`` and the same z, made again from the stream with the first
    stage's key (``seed``, ``step``, ``lane``, ``sample_offset``) instead of being stored. The
    difference is taken with x_high in float32, before it is rounded to x's dtype. A NaN in the
    inputs gives a NaN error. The op has no gradient (the sampler runs under ``torch.no_grad()``).

    Args:
        x: (B, ...) state at t, float32/float16/bfloat16; arithmetic is float32.
        x_low: the first stage's proposal; x_prev: the last accepted first-stage proposal (x
            itself at the start); score: the score at (x_low, t - h). All of x's shape, dtype, device.
        a, b: floats, or float tensors of one value, one per sample (shape (B,) or (B, 1, ..., 1))
            or one per element (x's shape), as for :func:`~scoreops.ops.sde_step`.
        seed, step, lane, sample_offset: the first stage's noise key.
        atol: absolute tolerance, >= 0 (with 0, an element where x_low and x_prev are both 0
            makes the error NaN).
        rtol: relative tolerance, > 0.
        backend: see :mod:`scoreops.ops`.
    Returns:
        ``(x_high, err)``: a new contiguous tensor of x's shape and dtype, and float32 (B,) on x's device.
    """
    check_batched("x", x)
    for name, t in (("x_low", x_low), ("x_prev", x_prev), ("score", score)):
        check_float(name, t, like=x)
    a, b = as_coef("a", a, x), as_coef("b", b, x)
    atol, rtol = _check_tolerance("atol", atol, True), _check_tolerance("rtol", rtol, False)
    seed, step = as_counter("seed", seed, x.device), as_counter("step", step, x.device)
    impl = resolve_backend(backend, x.device)
    return implementation("adaptive_sde_step", impl)(x, x_low, x_prev, score, a, b, seed, step, lane, sample_offset,
                                                     atol, rtol)
