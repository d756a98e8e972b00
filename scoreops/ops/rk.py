"""Runge-Kutta stage ops of the probability-flow ODE sampler: a stage combination and scipy's
RK45 error norm, each one fused pass."""
from __future__ import annotations

from typing import Sequence

import torch

from ..core.checks import check_float, check_stages
from .backends import implementation, resolve_backend


def rk_combine(y: torch.Tensor, ks: Sequence[torch.Tensor], coeffs: Sequence[float], h: float,
               *, backend: str = "auto") -> torch.Tensor:
    """Runge-Kutta stage combination ``y + h * sum_j coeffs[j] * ks[j]`` in one pass."""
    check_stages(y, ks, coeffs, "stage")
    impl = resolve_backend(backend, y.device)
    return implementation("rk_combine", impl)(y, list(ks), [float(c) for c in coeffs], float(h))


def rk_error_norm(y: torch.Tensor, y_new: torch.Tensor, ks: Sequence[torch.Tensor], e: Sequence[float],
                  h: float, atol: float, rtol: float, *, backend: str = "auto") -> torch.Tensor:
    """scipy's RK45 error norm ``rms(h * sum_j e[j] k_j / (atol + rtol * max(|y|, |y_new|)))``.

    One fused reduction pass; returns a float32 0-d tensor on y's device.
    """
    check_stages(y, ks, e, "error")
    check_float("y_new", y_new, like=y)
    impl = resolve_backend(backend, y.device)
    sq = implementation("rk_error_sq", impl)(y, y_new, list(ks), [float(c) for c in e], float(h), float(atol),
                                             float(rtol))
    return (sq / max(y.numel(), 1)).sqrt()
