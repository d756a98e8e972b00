"""Test helper: a 2-D Gaussian mixture whose VE-noised score is known in closed form.

Component k is ``N(m_k, diag(v_k))``. Under the VE SDE, x(t) = x(0) + std(t) * z, so the noised
marginal is the mixture of ``N(m_k, diag(v_k + std(t)**2))``, and its score is
``sum_k r_k(x) (m_k - x) / (v_k + std(t)**2)`` with r_k the posterior weight of component k.
"""
from __future__ import annotations

import math

import torch

from scoreops.sde import marginal_prob_std

#: Default mixture: unequal weights 0.3 / 0.7, well separated (about 7 standard deviations),
#: with mean zero so that the prior N(0, std(1)**2 I) is centred on the noised marginal.
WEIGHTS = (0.3, 0.7)
MEANS = ((-3.5, 1.4), (1.5, -0.6))
VARIANCES = ((0.36, 0.64), (0.49, 0.25))


class GaussianMixture2D:
    """A diagonal Gaussian mixture in 2-D, and the exact score of its VE-noised marginals.

    Args:
        weights: (K,) mixture weights, summing to 1.
        means: (K, 2) component means.
        variances: (K, 2) per-coordinate component variances.
        sigma: the VE SDE's sigma.
    """

    def __init__(self, weights=WEIGHTS, means=MEANS, variances=VARIANCES, sigma: float = 25.0):
        self.weights = torch.tensor(weights, dtype=torch.float64)
        self.means = torch.tensor(means, dtype=torch.float64)
        self.variances = torch.tensor(variances, dtype=torch.float64)
        self.sigma = sigma

    def _log_components(self, x: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        """(B, K) log(w_k N(x; m_k, diag(var_k))) for x (B, 2), var (B, K, 2)."""
        d = x[:, None, :] - self.means
        return (self.weights.log()
                - 0.5 * (d * d / var + var.log() + math.log(2 * math.pi)).sum(-1))

    def to(self, device) -> GaussianMixture2D:
        """Move the parameters to ``device`` (as a CUDA graph needs them), in place; returns self."""
        self.weights, self.means, self.variances = (v.to(device) for v in (self.weights, self.means, self.variances))
        return self

    def _noised_variances(self, t: torch.Tensor) -> torch.Tensor:
        """(B, K, 2) component variances of the noised marginal at times t (B,)."""
        std2 = marginal_prob_std(t.to(torch.float64), self.sigma) ** 2
        return self.variances + std2[:, None, None]

    def log_prob(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The noised marginal's log density at (x, t): x (B, 2), t (B,); float64 (B,)."""
        return torch.logsumexp(self._log_components(x.to(torch.float64), self._noised_variances(t)), dim=1)

    def score(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The noised marginal's score at (x, t): x (B, 2), t (B,); float64 maths, x's dtype out."""
        x64 = x.to(torch.float64)
        var = self._noised_variances(t)
        resp = torch.softmax(self._log_components(x64, var), dim=1)
        d = self.means - x64[:, None, :]
        return (resp[..., None] * d / var).sum(1).to(x.dtype)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.score(x, t)

    def sample(self, n: int, t: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """n exact samples of the noised marginal at time t, float32 (n, 2)."""
        weights, means, variances = (v.cpu() for v in (self.weights, self.means, self.variances))
        k = torch.multinomial(weights, n, replacement=True, generator=generator)
        std2 = float(marginal_prob_std(torch.tensor(t, dtype=torch.float64), self.sigma)) ** 2
        z = torch.randn(n, 2, dtype=torch.float64, generator=generator)
        return (means[k] + (variances[k] + std2).sqrt() * z).to(torch.float32)

    def assign(self, x: torch.Tensor) -> torch.Tensor:
        """(n,) index of the component each sample most likely came from (at t = 0)."""
        x64 = x.to(device=self.means.device, dtype=torch.float64)
        return self._log_components(x64, self.variances.expand(x64.shape[0], -1, -1)).argmax(1).cpu()

    def statistics(self, x: torch.Tensor):
        """Per-component (weights (K,), means (K, 2), variances (K, 2)) of samples x (n, 2)."""
        x64, k = x.to(device="cpu", dtype=torch.float64), self.assign(x)
        comps = [x64[k == j] for j in range(len(self.weights))]
        weights = torch.tensor([len(c) / len(x64) for c in comps], dtype=torch.float64)
        return weights, torch.stack([c.mean(0) for c in comps]), torch.stack([c.var(0) for c in comps])

    def check_samples(self, x: torch.Tensor, z: float = 4.5, what: str = "samples") -> None:
        """Assert that samples x (n, 2) reproduce the mixture's weights, means and variances.

        Each statistic must lie within ``z`` standard errors of the truth, the standard errors
        being those of an exact sample of size n: ``sqrt(w (1 - w) / n)`` for a weight,
        ``sqrt(v / n_k)`` for a mean and ``v sqrt(2 / (n_k - 1))`` for a variance.
        """
        assert torch.isfinite(x).all(), f"{what}: non-finite samples"
        n = x.shape[0]
        weights, means, variances = self.statistics(x)
        w, m, v = (p.cpu() for p in (self.weights, self.means, self.variances))
        _within(f"{what}: mode weights", weights, w, (w * (1 - w) / n).sqrt(), z)
        n_k = (w * n)[:, None]
        _within(f"{what}: mode means", means, m, (v / n_k).sqrt(), z)
        _within(f"{what}: mode variances", variances, v, v * (2 / (n_k - 1)).sqrt(), z)


def _within(what: str, got: torch.Tensor, want: torch.Tensor, se: torch.Tensor, z: float) -> None:
    dev = ((got - want) / se).abs()
    assert (dev <= z).all(), (f"{what} off by {dev.max():.2f} standard errors (> {z}):\n"
                              f"got  {got.tolist()}\nwant {want.tolist()}")
