"""diffusers' schedulers as samplers of a VE denoiser, for the quality benchmark.

Every runner has one signature, ``run(denoiser, x_T, sigma_max, sigma_min, num_steps, seed)``:

- ``denoiser(x, sigma)``: the model's D, predicting x0 from x at noise level sigma, a (B,)
  float32 tensor (a scoreops score model through :func:`scoreops.score_to_denoiser`);
- ``x_T``: the starting sample at ``sigma_max`` (``sigma_max * z``), shape (B, ...);
- ``sigma_max``, ``sigma_min``: the ends of the grid (the benchmark passes std(1) and std(eps));
- ``num_steps``: the scheduler's ``num_inference_steps``;
- ``seed``: seeds the CPU ``torch.Generator`` the stochastic schedulers draw their noise from.

It returns the samples, shape of ``x_T``, float32. Each runner walks the scheduler's own loop as
diffusers' pipelines do (``set_timesteps``, ``scale_model_input``, the model, ``step``); the
caller counts NFE by wrapping ``denoiser``. Per run: ``num_steps`` denoiser calls for every
runner but ``sde_ve_pc``, which takes ``2 num_steps`` (one corrector and one predictor call per
step); see :data:`NFE_PER_STEP`.

How diffusers' VP or EDM-parametrised schedulers walk a VE grid:

- EDM schedulers (``edm_*``) expect a raw network output F and form ``c_skip x + c_out F``
  (EDM preconditioning with their ``sigma_data``); the network given to them sees
  ``c_in x`` and ``c_noise``, and returns ``F = (D(x, sigma) - c_skip x) / c_out``, so their
  denoised output is D itself. Their grid is Karras et al.'s (rho = 7) from ``sigma_max`` to
  ``sigma_min``, then 0; the step to 0 returns D (Euler's step and the first-order DPM-Solver
  step both reduce to it).
- UniPC (``unipc_*``) is written for the VP parametrisation; with ``use_karras_sigmas`` and the
  ends in its config it walks the same Karras grid in sigma = sqrt(1 - abar) / sqrt(abar), on
  the state ``x_vp = x / sqrt(1 + sigma**2)``, with data prediction (``prediction_type="sample"``):
  its update divided by alpha is the VE update, so it is UniPC on this grid exactly.
- ``ScoreSdeVeScheduler`` (``sde_ve_pc``) takes the score ``(D(x, sigma) - x) / sigma**2`` on its
  own geometric grid between the same ends, and returns the last predictor step's mean (the step
  from ``sigma_min`` to 0 is Tweedie's ``x + sigma_min**2 s``), as its pipeline does before clamping.
"""
from __future__ import annotations

import functools
import importlib
import math
import types
import warnings
from collections.abc import Callable

import torch

try:
    from .peers import version
except ImportError:  # run as a script: python benchmarks/bench_quality.py
    from peers import version

INSTALL_HINT = "pip install -r requirements-bench.txt"
GRID_RTOL = 1e-5  # the schedulers build their grids in float32


def diffusers_version() -> str | None:
    """The installed diffusers version, or None."""
    return version("diffusers")


def diffusers_schedulers() -> tuple[types.ModuleType | None, str | None]:
    """diffusers' ``schedulers`` package: ``(module, None)``, or ``(None, why it is missing)``."""
    if diffusers_version() is None:
        return None, f"diffusers not installed ({INSTALL_HINT})"
    try:
        return importlib.import_module("diffusers.schedulers"), None
    except ImportError as e:
        return None, f"diffusers' schedulers do not import: {e}"


def _schedulers() -> types.ModuleType:
    module, why = diffusers_schedulers()
    if module is None:
        raise RuntimeError(why)
    return module


def karras_sigmas(sigma_max: float, sigma_min: float, num_steps: int, rho: float = 7.0) -> torch.Tensor:
    """Karras et al.'s grid of ``num_steps`` levels from sigma_max to sigma_min, then 0; float64."""
    ramp = torch.linspace(0, 1, num_steps, dtype=torch.float64)
    hi, lo = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return torch.cat([(hi + ramp * (lo - hi)) ** rho, torch.zeros(1, dtype=torch.float64)])


def _check_args(x_T: torch.Tensor, sigma_max: float, sigma_min: float, num_steps: int, least: int = 1) -> None:
    if not 0 < sigma_min < sigma_max < math.inf:
        raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < least:
        raise ValueError(f"num_steps must be an int >= {least}, got {num_steps!r}")
    if x_T.dim() < 1 or x_T.shape[0] == 0:
        raise ValueError(f"x_T must be a non-empty batch (B, ...), got shape {tuple(x_T.shape)}")


def _check_karras(scheduler, sigma_max: float, sigma_min: float, num_steps: int) -> None:
    """The scheduler must walk the Karras grid (and end at 0): a different grid is a different sampler."""
    got = scheduler.sigmas.to(torch.float64).cpu()
    want = karras_sigmas(sigma_max, sigma_min, num_steps)
    if got.shape != want.shape or not torch.allclose(got, want, rtol=GRID_RTOL, atol=0.0):
        raise RuntimeError(f"{type(scheduler).__name__} walks {got.tolist()}, not the Karras grid {want.tolist()}")


def _batch(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A scheduler's 0-d sigma as the denoiser's (B,) float32 tensor on x's device."""
    return sigma.to(device=x.device, dtype=torch.float32).expand(x.shape[0])


def edm_network(scheduler, denoiser: Callable) -> Callable:
    """The raw network ``F(c_in x, c_noise)`` whose EDM-preconditioned output, under ``scheduler``'s
    ``sigma_data``, is ``denoiser``: ``F = (D(x, sigma) - c_skip x) / c_out``, x = input / c_in.

    sigma is the scheduler's current level (``c_noise = log(sigma) / 4`` is that level, rounded).
    """
    sd2 = scheduler.config.sigma_data ** 2

    def network(x_in: torch.Tensor, c_noise) -> torch.Tensor:
        sigma = scheduler.sigmas[scheduler.step_index]
        c_in = 1 / (sigma**2 + sd2) ** 0.5
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * sd2**0.5 / (sigma**2 + sd2) ** 0.5
        x = x_in / c_in.to(x_in.device)
        return (denoiser(x, _batch(sigma, x)) - c_skip.to(x.device) * x) / c_out.to(x.device)
    return network


def _edm(scheduler, denoiser, x_T, sigma_max, sigma_min, num_steps, seed) -> torch.Tensor:
    """The EDM pipelines' loop: scale the input, call the network, step."""
    _check_args(x_T, sigma_max, sigma_min, num_steps)
    scheduler.set_timesteps(num_steps, device=x_T.device)
    _check_karras(scheduler, sigma_max, sigma_min, num_steps)
    network = edm_network(scheduler, denoiser)
    generator = torch.Generator().manual_seed(seed)
    x = x_T.to(torch.float32)
    for t in scheduler.timesteps:
        out = network(scheduler.scale_model_input(x, t), t)
        x = scheduler.step(out, t, x, generator=generator).prev_sample
    return x


def edm_euler(denoiser, x_T, sigma_max, sigma_min, num_steps, seed) -> torch.Tensor:
    """``EDMEulerScheduler`` (no churn): Euler on the Karras grid. NFE: num_steps."""
    scheduler = _schedulers().EDMEulerScheduler(sigma_min=sigma_min, sigma_max=sigma_max, rho=7.0,
                                                sigma_schedule="karras", final_sigmas_type="zero")
    return _edm(scheduler, denoiser, x_T, sigma_max, sigma_min, num_steps, seed)


def edm_dpmsolver(denoiser, x_T, sigma_max, sigma_min, num_steps, seed, *,
                  algorithm_type: str = "dpmsolver++") -> torch.Tensor:
    """``EDMDPMSolverMultistepScheduler``, order 2, midpoint: DPM-Solver++(2M), or with
    ``algorithm_type="sde-dpmsolver++"`` its SDE variant (k-diffusion's eta = 1).

    Its orders: the first step 1, then 2; the step to 0 is first order, i.e. returns D (with
    ``final_sigmas_type="zero"`` diffusers lowers it whatever ``lower_order_final`` says, and lowers
    no other step at order 2). NFE: num_steps.
    """
    scheduler = _schedulers().EDMDPMSolverMultistepScheduler(
        sigma_min=sigma_min, sigma_max=sigma_max, rho=7.0, sigma_schedule="karras", solver_order=2,
        algorithm_type=algorithm_type, solver_type="midpoint", lower_order_final=True, euler_at_final=False,
        final_sigmas_type="zero")
    return _edm(scheduler, denoiser, x_T, sigma_max, sigma_min, num_steps, seed)


def unipc(denoiser, x_T, sigma_max, sigma_min, num_steps, seed, *, order: int = 2,
          variant: str = "bh2") -> torch.Tensor:
    """``UniPCMultistepScheduler`` with data prediction on the Karras grid, through the VP state
    ``x / sqrt(1 + sigma**2)``; ``lower_order_final`` (order min(order, N - i) at step i, so the
    step to 0 returns D). ``seed`` is unused (UniPC is deterministic). NFE: num_steps.

    ``variant="bh1"`` is refused: at the step to sigma = 0, B(h) = -h is infinite and diffusers'
    first-order predictor multiplies it by its zero correction, which gives NaN.
    """
    if variant != "bh2":
        raise ValueError(f"only variant='bh2' runs to sigma = 0 in diffusers {diffusers_version()}, got {variant!r}")
    _check_args(x_T, sigma_max, sigma_min, num_steps)
    scheduler = _schedulers().UniPCMultistepScheduler(
        solver_order=order, solver_type=variant, predict_x0=True, prediction_type="sample", lower_order_final=True,
        use_karras_sigmas=True, sigma_min=sigma_min, sigma_max=sigma_max, final_sigmas_type="zero")
    with warnings.catch_warnings():
        # Its set_timesteps calls np.array on a tensor, which NumPy 2 flags; harmless here.
        warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
        scheduler.set_timesteps(num_steps, device=x_T.device)
    _check_karras(scheduler, sigma_max, sigma_min, num_steps)
    # Its integer timesteps repeat where the grid leaves the VP training range: index by position.
    scheduler.set_begin_index(0)
    x = x_T.to(torch.float32) / (1 + sigma_max**2) ** 0.5
    for i, t in enumerate(scheduler.timesteps):
        sigma = scheduler.sigmas[i]
        x_ve = scheduler.scale_model_input(x, t) * float((1 + sigma**2) ** 0.5)
        x = scheduler.step(denoiser(x_ve, _batch(sigma, x)), t, x).prev_sample
    return x  # at sigma = 0 the VP and VE states agree


def sde_ve_pc(denoiser, x_T, sigma_max, sigma_min, num_steps, seed, *, snr: float = 0.15) -> torch.Tensor:
    """``ScoreSdeVeScheduler``: per step one Langevin corrector step, then the reverse-diffusion
    predictor, on its geometric grid; the score is ``(D(x, sigma) - x) / sigma**2``. Returns the
    last predictor's mean. NFE: 2 num_steps. num_steps >= 2 (with 1 its predictor's grid is
    sigma_min alone).
    """
    _check_args(x_T, sigma_max, sigma_min, num_steps, least=2)
    scheduler = _schedulers().ScoreSdeVeScheduler(sigma_min=sigma_min, sigma_max=sigma_max, snr=snr, correct_steps=1)
    scheduler.set_timesteps(num_steps, device=x_T.device)
    scheduler.set_sigmas(num_steps)
    generator = torch.Generator().manual_seed(seed)  # a CPU generator: step_correct draws on the CPU

    def score(x, sigma):
        s = _batch(sigma, x)
        return (denoiser(x, s) - x) / (s * s).reshape(-1, *([1] * (x.dim() - 1)))

    x = x_T.to(torch.float32)
    for i, t in enumerate(scheduler.timesteps):
        sigma = scheduler.sigmas[i]
        x = scheduler.step_correct(score(x, sigma), x, generator=generator).prev_sample
        out = scheduler.step_pred(score(x, sigma), t, x, generator=generator)
        x, mean = out.prev_sample, out.prev_sample_mean
    return mean


#: name -> runner; every one is ``run(denoiser, x_T, sigma_max, sigma_min, num_steps, seed)``.
RUNNERS: dict[str, Callable[..., torch.Tensor]] = {
    "edm_euler": edm_euler,
    "edm_dpmpp_2m": edm_dpmsolver,
    "edm_dpmpp_2m_sde": functools.partial(edm_dpmsolver, algorithm_type="sde-dpmsolver++"),
    "unipc_2": functools.partial(unipc, order=2),
    "unipc_3": functools.partial(unipc, order=3),
    "sde_ve_pc": sde_ve_pc,
}
#: Denoiser calls per step of each runner (a run of N steps costs N times this).
NFE_PER_STEP = {name: 2 if name == "sde_ve_pc" else 1 for name in RUNNERS}


def steps_for(name: str, budget: int) -> int:
    """The most steps of runner ``name`` within ``budget`` denoiser calls."""
    return budget // NFE_PER_STEP[name]
