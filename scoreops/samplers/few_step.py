"""The few-step samplers with the tutorial's leading arguments: ``heun_sample``, ``dpmpp_2m_sample``, ...

Each takes ``(score_model, marginal_prob_std, diffusion_coeff, batch_size, num_steps, device, eps)``
and the keywords of :func:`scoreops.em_sample`, builds a sigma grid and a denoiser from them
(:func:`score_to_denoiser`), and runs the sigma-space sampler of :mod:`.sigma_space`.
``num_steps`` counts steps (sigma intervals), not score evaluations: with ``denoise=True`` (the
default) the grid has ``num_steps`` noise levels from std(1) down to std(eps), then the final
denoise to sigma = 0; with ``denoise=False`` it has ``num_steps + 1`` levels and the sampler stops
at std(eps). Either way every sampler here takes ``num_steps`` score evaluations, except Heun
(``2 num_steps - 1`` with the denoise, ``2 num_steps`` without).
"""
from __future__ import annotations

import inspect

import torch

from ..core.checks import check_bool, check_choice, check_int
from ..sde import prior_sample
from . import sigma_space
from .denoiser import score_to_denoiser
from .inputs import check_eps, compiled, sampling_device, seed_tensor
from .schedule import SIGMA_SCHEDULES, Schedule


def sigma_grid(marginal_prob_std, num_steps: int = 20, eps: float = 1e-3, *, schedule: str = "karras",
               rho: float = 7.0, denoise: bool = True) -> torch.Tensor:
    """The noise levels a few-step sampler of this module walks, float64 (CPU).

    Args:
        marginal_prob_std: ``std(t)``, a :class:`~scoreops.sde.VESDE` or a function.
        num_steps: steps (sigma intervals), >= 1.
        eps: the last time; the grid's smallest nonzero level is std(eps).
        schedule: ``"karras"`` (rho), ``"log_sigma"`` or ``"uniform_t"`` (the tutorial's t grid).
        rho: Karras et al.'s exponent.
        denoise: end with sigma = 0 (the final denoise) after ``num_steps`` levels; else
            ``num_steps + 1`` levels ending at std(eps).
    Returns:
        (num_steps + 1,) decreasing noise levels.
    """
    num_steps = check_int("num_steps", num_steps, 1)
    check_choice("schedule", schedule, SIGMA_SCHEDULES)
    levels = Schedule(marginal_prob_std, None).sigmas(schedule, num_steps + (0 if denoise else 1), check_eps(eps),
                                                      rho)
    return torch.cat([levels, levels.new_zeros(1)]) if denoise else levels


def _sample(core, score_model, marginal_prob_std, diffusion_coeff, batch_size, num_steps, device, eps, *, schedule,
            sigmas, rho, denoise, shape, seed, x_T, sample_offset, backend, cuda_graph, progress, compile, **options):
    """The wrappers' common body: grid, denoiser and starting sample, then the sigma-space sampler."""
    score_model = compiled(score_model, compile)
    for name in ("noise", "brownian_tol"):
        if name in options and name not in inspect.signature(core).parameters:
            raise ValueError(f"{core.__name__} takes no {name}=: it draws no noise over the grid's intervals; "
                             f"the samplers that do are {', '.join(_NOISY)}")
    denoise = check_bool("denoise", denoise)
    if sigmas is None:
        grid = sigma_grid(marginal_prob_std, num_steps, eps, schedule=schedule, rho=rho, denoise=denoise)
    else:
        grid = sigma_space.check_sigmas(sigmas)
        if denoise and grid[-1] > 0:
            grid = torch.cat([grid, grid.new_zeros(1)])
    device = sampling_device(device, x_T, "x_T")
    seed = seed_tensor(seed, device)
    if x_T is None:
        # x at sigmas[0] from the prior stream: std(1) * z for the built-in grids.
        top = float(grid[0])
        x_T = prior_sample(lambda t: torch.full_like(torch.as_tensor(t, dtype=torch.float64), top), batch_size,
                           shape, seed=seed, sample_offset=sample_offset, device=device, backend=backend)
    denoiser = score_to_denoiser(score_model, marginal_prob_std)
    with torch.no_grad():
        return core(denoiser, x_T.to(device), grid, seed=seed, sample_offset=sample_offset, backend=backend,
                    progress=progress, cuda_graph=cuda_graph, **options)


def _wrapper(core, name: str, nfe: str):
    """The tutorial-style sampler of the sigma-space sampler ``core``."""
    def sample(score_model, marginal_prob_std, diffusion_coeff=None, batch_size=64, num_steps=20, device=None,
               eps=1e-3, *, schedule="karras", sigmas=None, rho=7.0, denoise=True, shape=(1, 28, 28), seed=None,
               x_T=None, sample_offset=0, backend="auto", cuda_graph="auto", progress=False, compile=False,
               **options):
        return _sample(core, score_model, marginal_prob_std, diffusion_coeff, batch_size, num_steps, device, eps,
                       schedule=schedule, sigmas=sigmas, rho=rho, denoise=denoise, shape=shape, seed=seed, x_T=x_T,
                       sample_offset=sample_offset, backend=backend, cuda_graph=cuda_graph, progress=progress,
                       compile=compile, **options)

    sample.__name__ = sample.__qualname__ = name
    sample.__doc__ = f"""{core.__doc__.strip().splitlines()[0]}

    The tutorial-style form of :func:`scoreops.samplers.sigma_space.{core.__name__}`.
    Score evaluations: {nfe}.

    Args:
        score_model, marginal_prob_std, batch_size, device, eps, shape, seed, x_T, sample_offset,
            backend, progress: as :func:`scoreops.em_sample` (x_T starts at sigmas[0]).
        diffusion_coeff: accepted for the tutorial's argument order, and not used.
        num_steps: steps (sigma intervals), >= 1; see :func:`sigma_grid`.
        schedule, rho, denoise: the grid, see :func:`sigma_grid`. ``denoise=True`` ends with
            D(x, std(eps)) = x + std(eps)**2 s(x, eps), Tweedie's formula.
        sigmas: an explicit decreasing grid instead (a 0 is appended when ``denoise``).
        cuda_graph: True captures the whole loop, score model included, as one CUDA graph on
            first use and replays it after; ``"auto"`` does so on CUDA with a graph-safe backend
            (falling back to the plain loop if capture fails); see
            :func:`scoreops.samplers.sigma_space.{core.__name__}`.
        compile: False, True or a ``torch.compile`` mode: sample with the score model compiled
            once per model and mode (:func:`scoreops.samplers.inputs.compiled`).
        **options: the sampler's own, see :func:`scoreops.samplers.sigma_space.{core.__name__}`.
    Returns:
        The samples, (B, *shape).
    """
    return sample


heun_sample = _wrapper(sigma_space.sample_heun, "heun_sample", "2 num_steps - 1 (2 num_steps with denoise=False)")
euler_sample = _wrapper(sigma_space.sample_euler, "euler_sample", "num_steps")
euler_ancestral_sample = _wrapper(sigma_space.sample_euler_ancestral, "euler_ancestral_sample", "num_steps")
dpmpp_2m_sample = _wrapper(sigma_space.sample_dpmpp_2m, "dpmpp_2m_sample", "num_steps")
dpmpp_2m_sde_sample = _wrapper(sigma_space.sample_dpmpp_2m_sde, "dpmpp_2m_sde_sample", "num_steps")
dpmpp_3m_sde_sample = _wrapper(sigma_space.sample_dpmpp_3m_sde, "dpmpp_3m_sde_sample", "num_steps")
ipndm_sample = _wrapper(sigma_space.sample_ipndm, "ipndm_sample", "num_steps")
unipc_sample = _wrapper(sigma_space.sample_unipc, "unipc_sample", "num_steps")
# The wrappers whose sampler takes noise="iid" | "brownian".
_NOISY = ("euler_ancestral_sample", "dpmpp_2m_sde_sample", "dpmpp_3m_sde_sample")
