"""Eager, tutorial-style samplers: plain torch ops and torch's RNG, one Python step at a time.

They follow the well-known tutorial's ``Euler_Maruyama_sampler``, ``pc_sampler`` and
``ode_sampler`` (scipy ``solve_ivp`` with a numpy round trip per evaluation), plus the paper's
Milstein sampler written the same way. They are the baseline of the benchmarks and the
independent reference of the tests. Besides the tutorial's arguments they take ``shape``,
``x_T`` (the starting sample) and ``noise``: a function ``noise(x, step, lane)`` returning the
standard normals of that step (default ``torch.randn_like(x)``), through which a test can feed
them the fused samplers' noise stream.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy import integrate

from ..core.checks import default_device
from ..samplers import ODEResult
from ..sde import VESDE


def _functions(marginal_prob_std, diffusion_coeff):
    if isinstance(marginal_prob_std, VESDE):
        return marginal_prob_std.marginal_prob_std, marginal_prob_std.diffusion_coeff
    if diffusion_coeff is None:
        raise ValueError("pass diffusion_coeff with a marginal_prob_std function (or a VESDE alone)")
    return marginal_prob_std, diffusion_coeff


def _per_sample(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A (B,) tensor shaped to broadcast against x."""
    return v.reshape(-1, *([1] * (x.dim() - 1)))


def _start(x_T, marginal_prob_std, batch_size, shape, device) -> torch.Tensor:
    if x_T is not None:
        return x_T
    t = torch.ones(batch_size, device=device)
    x = torch.randn(batch_size, *shape, device=device)
    return x * _per_sample(torch.as_tensor(marginal_prob_std(t), device=device), x)


def _setup(marginal_prob_std, diffusion_coeff, batch_size, shape, device, x_T, num_steps, eps, float64_grid=False):
    """What the tutorial's SDE samplers start with: ``(diffusion_coeff, device, x, time_steps,
    step_size)``, x drawn from the prior unless given, and the grid ``linspace(1, eps, num_steps)``:
    ``torch.linspace`` (float32) as its ``Euler_Maruyama_sampler`` makes it, or ``np.linspace``
    (float64) as its ``pc_sampler`` does."""
    marginal_prob_std, diffusion_coeff = _functions(marginal_prob_std, diffusion_coeff)
    device = default_device(device)
    x = _start(x_T, marginal_prob_std, batch_size, shape, device)
    time_steps = (np.linspace(1.0, eps, num_steps) if float64_grid
                  else torch.linspace(1.0, eps, num_steps, device=device))
    return diffusion_coeff, device, x, time_steps, time_steps[0] - time_steps[1]


def _randn(x, step, lane):
    return torch.randn_like(x)


def em_sampler(score_model, marginal_prob_std, diffusion_coeff=None, batch_size=64, num_steps=500, device=None,
               eps=1e-3, *, shape=(1, 28, 28), x_T=None, noise=_randn) -> torch.Tensor:
    """The tutorial's Euler-Maruyama sampler; returns the last step's mean."""
    diffusion_coeff, device, x, time_steps, step_size = _setup(marginal_prob_std, diffusion_coeff, batch_size,
                                                               shape, device, x_T, num_steps, eps)
    with torch.no_grad():
        for k, time_step in enumerate(time_steps):
            batch_time_step = torch.ones(x.shape[0], device=device) * time_step
            g = _per_sample(torch.as_tensor(diffusion_coeff(batch_time_step), device=device), x)
            mean_x = x + g**2 * score_model(x, batch_time_step) * step_size
            x = mean_x + torch.sqrt(step_size) * g * noise(x, k, 0)
    return mean_x


def _time_derivative(diffusion_coeff, t: torch.Tensor) -> torch.Tensor:
    """dg/dt by autograd; diffusion_coeff must keep the graph."""
    with torch.enable_grad():
        t = t.detach().requires_grad_()
        g = diffusion_coeff(t)
        if not g.requires_grad:
            raise ValueError("milstein_sampler needs a differentiable diffusion_coeff, or diffusion_coeff_dt")
        return torch.autograd.grad(g.sum(), t)[0]


def milstein_sampler(score_model, marginal_prob_std, diffusion_coeff=None, batch_size=64, num_steps=500,
                     device=None, eps=1e-3, *, correction="time", diffusion_coeff_dt=None, shape=(1, 28, 28),
                     x_T=None, noise=_randn) -> torch.Tensor:
    """The paper's Milstein sampler, eager: EM plus ``1/2 g g' (dW**2 - dt)``, ``dW = sqrt(dt) z``.

    ``g' = dg/dt`` for ``correction="time"`` (from ``diffusion_coeff_dt``, a VESDE, or autograd),
    0 for ``"ito"``. Returns the last step's mean.
    """
    if isinstance(marginal_prob_std, VESDE) and diffusion_coeff_dt is None:
        diffusion_coeff_dt = marginal_prob_std.diffusion_coeff_dt
    diffusion_coeff, device, x, time_steps, step_size = _setup(marginal_prob_std, diffusion_coeff, batch_size,
                                                               shape, device, x_T, num_steps, eps)
    with torch.no_grad():
        for k, time_step in enumerate(time_steps):
            batch_time_step = torch.ones(x.shape[0], device=device) * time_step
            g = diffusion_coeff(batch_time_step)
            if correction == "ito":
                dg = torch.zeros_like(g)
            elif diffusion_coeff_dt is not None:
                dg = diffusion_coeff_dt(batch_time_step)
            else:
                dg = _time_derivative(diffusion_coeff, batch_time_step)
            g, dg = _per_sample(g, x), _per_sample(dg, x)
            mean_x = x + g**2 * score_model(x, batch_time_step) * step_size
            dw = torch.sqrt(step_size) * noise(x, k, 0)
            x = mean_x + g * dw + 0.5 * g * dg * (dw**2 - step_size)
    return mean_x


def pc_sampler(score_model, marginal_prob_std, diffusion_coeff=None, batch_size=64, num_steps=500, snr=0.16,
               device=None, eps=1e-3, *, noise_norm="fixed", shape=(1, 28, 28), x_T=None,
               noise=_randn) -> torch.Tensor:
    """The tutorial's predictor-corrector sampler: one Langevin step, then an EM step.

    ``noise_norm="fixed"`` is the tutorial's ``sqrt(d)``; ``"sampled"`` the batch mean of the
    norms of the drawn noise. Returns the last predictor step's mean.
    """
    diffusion_coeff, device, x, time_steps, step_size = _setup(marginal_prob_std, diffusion_coeff, batch_size,
                                                               shape, device, x_T, num_steps, eps, float64_grid=True)
    with torch.no_grad():
        for k, time_step in enumerate(time_steps):
            batch_time_step = torch.ones(x.shape[0], device=device) * time_step
            # Corrector step (Langevin MCMC)
            grad = score_model(x, batch_time_step)
            grad_norm = torch.norm(grad.reshape(grad.shape[0], -1), dim=-1).mean()
            z = noise(x, k, 1)
            if noise_norm == "fixed":
                noise_norm_value = math.sqrt(x[0].numel())
            else:
                noise_norm_value = torch.norm(z.reshape(z.shape[0], -1), dim=-1).mean()
            langevin_step_size = 2 * (snr * noise_norm_value / grad_norm) ** 2
            x = x + langevin_step_size * grad + torch.sqrt(2 * langevin_step_size) * z
            # Predictor step (Euler-Maruyama)
            g = _per_sample(torch.as_tensor(diffusion_coeff(batch_time_step), device=device), x)
            x_mean = x + g**2 * score_model(x, batch_time_step) * step_size
            x = x_mean + torch.sqrt(g**2 * step_size) * noise(x, k, 0)
    return x_mean


def ode_sampler(score_model, marginal_prob_std, diffusion_coeff=None, batch_size=64, atol=1e-5, rtol=1e-5,
                device=None, z=None, eps=1e-3, *, shape=(1, 28, 28), full_output=False):
    """The tutorial's probability-flow ODE sampler: scipy ``solve_ivp(method="RK45")`` on the
    flattened batch in float64, with a numpy round trip per score evaluation.

    Returns x(eps) in float64, or with ``full_output`` an :class:`~scoreops.samplers.ODEResult`.
    """
    marginal_prob_std, diffusion_coeff = _functions(marginal_prob_std, diffusion_coeff)
    device = default_device(device)
    init_x = _start(z, marginal_prob_std, batch_size, shape, device)
    x_shape = init_x.shape

    def score_eval_wrapper(sample, time_steps):
        sample = torch.tensor(sample, device=device, dtype=torch.float32).reshape(x_shape)
        time_steps = torch.tensor(time_steps, device=device, dtype=torch.float32).reshape((x_shape[0],))
        with torch.no_grad():
            score = score_model(sample, time_steps)
        return score.cpu().numpy().reshape((-1,)).astype(np.float64)

    def ode_func(t, x):
        time_steps = np.ones((x_shape[0],)) * t
        g = torch.as_tensor(diffusion_coeff(torch.tensor(t))).cpu().numpy()
        return -0.5 * (g**2) * score_eval_wrapper(x, time_steps)

    res = integrate.solve_ivp(ode_func, (1.0, eps), init_x.reshape(-1).cpu().numpy(), rtol=rtol, atol=atol,
                              method="RK45")
    x = torch.tensor(res.y[:, -1], device=device).reshape(x_shape)
    if not full_output:
        return x
    n_accepted = res.t.size - 1
    return ODEResult(x, res.nfev, n_accepted, (res.nfev - 2) // 6 - n_accepted)
