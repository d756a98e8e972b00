"""Adapters between a score model ``s(x, t)`` and a denoiser ``D(x, sigma)`` that predicts x0.

For a VE SDE with marginal std sigma = std(t), Tweedie's formula links the two:
``D(x, sigma) = x + sigma**2 s(x, t(sigma))`` and ``s(x, t) = (D(x, std(t)) - x) / std(t)**2``.
So a scoreops (or tutorial) model runs through the sigma-space samplers, and a denoiser (a model
trained with k-diffusion, a diffusers UNet wrapped as one) runs through the SDE samplers.
"""
from __future__ import annotations

import torch

from .schedule import Schedule


def _per_sample(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A (B,) tensor shaped (B, 1, ..., 1) to broadcast against x, in x's dtype."""
    return v.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)


def _as_batch(v, x: torch.Tensor, name: str) -> torch.Tensor:
    """A float or a (B,) / () tensor as a float32 (B,) tensor on x's device."""
    v = torch.as_tensor(v, dtype=torch.float32, device=x.device)
    if v.dim() == 0:
        v = v.expand(x.shape[0])
    if v.shape != (x.shape[0],):
        raise ValueError(f"{name} must be one value or one per sample (shape ({x.shape[0]},)), got {tuple(v.shape)}")
    return v


class ScoreDenoiser(torch.nn.Module):
    """``D(x, sigma) = x + sigma**2 score_model(x, t(sigma))``: a score model as a denoiser.

    Args:
        score_model: ``score_model(x, t)``, t a (B,) float32 tensor of times.
        marginal_prob_std: ``std(t)``: a :class:`~scoreops.sde.VESDE` or a function. t(sigma) is in
            closed form for a VESDE and :func:`scoreops.sde.marginal_prob_std`, else found by
            bisection on the device (see :meth:`Schedule.time_of_std`).
    """

    def __init__(self, score_model, marginal_prob_std):
        super().__init__()
        self.score_model = score_model
        self.schedule = Schedule(marginal_prob_std, None)

    def forward(self, x: torch.Tensor, sigma) -> torch.Tensor:
        sigma = _as_batch(sigma, x, "sigma")
        s = self.score_model(x, self.schedule.time_of_std(sigma))
        return torch.addcmul(x, _per_sample(sigma * sigma, x), s)


class DenoiserScore(torch.nn.Module):
    """``s(x, t) = (denoiser(x, sigma) - x) / sigma**2`` with sigma = std(t): a denoiser as a score model.

    Args:
        denoiser: ``denoiser(x, sigma)``, sigma a (B,) float32 tensor.
        marginal_prob_std: ``std(t)``, a :class:`~scoreops.sde.VESDE` or a function.
    """

    def __init__(self, denoiser, marginal_prob_std):
        super().__init__()
        self.denoiser = denoiser
        self.schedule = Schedule(marginal_prob_std, None)

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        t = _as_batch(t, x, "t")
        sigma = self.schedule.std_at(t)
        return (self.denoiser(x, sigma) - x) / _per_sample(sigma * sigma, x)


def score_to_denoiser(score_model, marginal_prob_std) -> ScoreDenoiser:
    """A score model as a denoiser D(x, sigma), see :class:`ScoreDenoiser`."""
    return ScoreDenoiser(score_model, marginal_prob_std)


def denoiser_to_score(denoiser, marginal_prob_std) -> DenoiserScore:
    """A denoiser as a score model s(x, t), see :class:`DenoiserScore`."""
    return DenoiserScore(denoiser, marginal_prob_std)
