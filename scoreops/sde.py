"""The variance-exploding SDE of the paper and the well-known tutorial.

Forward SDE ``dx = g(t) dw`` on ``t in [0, 1]`` with ``g(t) = sigma**t``. Its perturbation
kernel is ``N(x0, std(t)**2 I)`` with ``std(t)**2 = (sigma**(2t) - 1) / (2 ln sigma)``, and the
prior is ``N(0, std(1)**2 I)``.

The free functions keep the tutorial's shape, so that
``functools.partial(marginal_prob_std, sigma=25.)`` works as the tutorial's own does;
:class:`VESDE` bundles them with ``dg/dt`` and the prior, and the samplers accept either.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import ops
from .core.checks import check_int, check_sample_range, default_device
from .core.noise import PRIOR_LANE


def _check_sigma(sigma) -> float:
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma > 1 or not math.isfinite(sigma):
        raise ValueError(f"sigma must be a finite float > 1, got {sigma!r}")
    return float(sigma)


def _as_time(t) -> torch.Tensor:
    """t as a floating tensor, keeping the device and dtype of a floating tensor."""
    t = torch.as_tensor(t)
    return t if t.is_floating_point() else t.to(torch.get_default_dtype())


def marginal_prob_std(t, sigma: float = 25.0) -> torch.Tensor:
    """Standard deviation of the VE perturbation kernel, ``sqrt((sigma**(2t) - 1) / (2 ln sigma))``.

    Args:
        t: times in [0, 1], a float or a tensor of any shape.
        sigma: the SDE's sigma (> 1).
    Returns:
        A tensor of t's shape, device and (floating) dtype.
    """
    t = _as_time(t)
    log_sigma = math.log(_check_sigma(sigma))
    # expm1 keeps precision near t = 0, where sigma**(2t) - 1 cancels.
    return torch.sqrt(torch.expm1(2.0 * log_sigma * t) / (2.0 * log_sigma))


def diffusion_coeff(t, sigma: float = 25.0) -> torch.Tensor:
    """Diffusion coefficient ``g(t) = sigma**t``; a tensor of t's shape, device and dtype."""
    t = _as_time(t)
    return torch.exp(math.log(_check_sigma(sigma)) * t)


def time_of_std(std, sigma: float = 25.0) -> torch.Tensor:
    """The inverse of :func:`marginal_prob_std`: ``t = ln(1 + 2 ln(sigma) std**2) / (2 ln(sigma))``."""
    std = _as_time(std)
    log_sigma = math.log(_check_sigma(sigma))
    return torch.log1p(2.0 * log_sigma * std * std) / (2.0 * log_sigma)


def diffusion_coeff_dt(t, sigma: float = 25.0) -> torch.Tensor:
    """Time derivative ``dg/dt = ln(sigma) * sigma**t``; a tensor of t's shape, device and dtype."""
    log_sigma = math.log(_check_sigma(sigma))
    return log_sigma * diffusion_coeff(t, sigma)


@dataclass(frozen=True)
class VESDE:
    """The VE SDE ``dx = sigma**t dw`` on [0, 1].

    Pass it to the samplers in place of the tutorial's two functions
    (``em_sample(model, VESDE(25.), batch_size=64)``); it also gives them ``dg/dt`` in closed form.

    Args:
        sigma: the SDE's sigma (> 1); the paper and the tutorial use 25.
    """

    sigma: float = 25.0

    def __post_init__(self):
        object.__setattr__(self, "sigma", _check_sigma(self.sigma))

    def marginal_prob_std(self, t) -> torch.Tensor:
        """``std(t)``, see :func:`marginal_prob_std`."""
        return marginal_prob_std(t, self.sigma)

    def time_of_std(self, std) -> torch.Tensor:
        """The time t at which ``marginal_prob_std(t) = std``, see :func:`time_of_std`."""
        return time_of_std(std, self.sigma)

    def diffusion_coeff(self, t) -> torch.Tensor:
        """``g(t) = sigma**t``, see :func:`diffusion_coeff`."""
        return diffusion_coeff(t, self.sigma)

    def diffusion_coeff_dt(self, t) -> torch.Tensor:
        """``dg/dt = ln(sigma) sigma**t``, see :func:`diffusion_coeff_dt`."""
        return diffusion_coeff_dt(t, self.sigma)

    def prior_sample(self, batch_size: int, shape=(1, 28, 28), *, seed: int, sample_offset: int = 0,
                     device=None, backend: str = "auto") -> torch.Tensor:
        """Draw x(1) ~ N(0, std(1)**2 I) from the scoreops noise stream (see :func:`prior_sample`)."""
        return prior_sample(self.marginal_prob_std, batch_size, shape, seed=seed, sample_offset=sample_offset,
                            device=device, backend=backend)


def prior_sample(marginal_prob_std, batch_size: int, shape=(1, 28, 28), *, seed: int, sample_offset: int = 0,
                 device=None, backend: str = "auto") -> torch.Tensor:
    """The samplers' starting point ``x(1) = std(1) * z``, z from the noise stream.

    z is taken at stream step 0 on :data:`PRIOR_LANE`, so that sample ``sample_offset + i`` is
    the same for any batch size and on every backend.

    Args:
        marginal_prob_std: ``std(t)`` as a function (the tutorial's, or :meth:`VESDE.marginal_prob_std`).
        batch_size: number of samples B.
        shape: shape of one sample.
        seed: noise-stream seed (int or 1-element int64 tensor on ``device``).
        sample_offset: global index of sample 0, for sharded sampling.
        device: where to put the result (default: CUDA when available, else CPU).
        backend: op backend for the noise, see :mod:`scoreops.ops`.
    Returns:
        float32 tensor of shape ``(batch_size, *shape)``.
    """
    device = default_device(device)
    if device.type == "meta":
        raise ValueError("the meta device has no data to sample; use a CPU or CUDA device")
    batch_size = check_int("batch_size", batch_size, 1)
    check_sample_range(check_int("sample_offset", sample_offset, 0), batch_size)
    try:
        shape = tuple(int(n) for n in shape)
    except TypeError:
        raise TypeError(f"shape must be a sequence of ints, got {shape!r}") from None
    if not shape or min(shape) < 1:
        raise ValueError(f"shape must be a non-empty sequence of positive ints, got {shape!r}")
    numel = math.prod(shape)
    z = ops.philox_normal(batch_size, numel, seed=seed, step=0, lane=PRIOR_LANE, sample_offset=sample_offset,
                          device=device, backend=backend)
    # t of shape (1,): the tutorial calls marginal_prob_std with a batch of times.
    std1 = torch.as_tensor(marginal_prob_std(torch.ones(1, dtype=torch.float64)))
    if std1.numel() != 1 or not bool(torch.isfinite(std1).all()) or not bool(std1.reshape(()) > 0):
        raise ValueError(f"marginal_prob_std(1) must be one positive finite value, got {std1}")
    return (z * std1.reshape(()).to(device=device, dtype=torch.float32)).reshape(batch_size, *shape)
