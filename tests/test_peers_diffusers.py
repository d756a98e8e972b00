"""benchmarks/peers_diffusers.py: diffusers' schedulers on a VE denoiser, checked against scoreops's
samplers on the exact-score Gaussian mixture (same denoiser, start and grid), and against the
mixture itself for the stochastic ones. Skipped where diffusers is not installed."""
from __future__ import annotations

import pytest
import torch
from conftest import benchmark_module
from mixture import GaussianMixture2D
from peers import k_diffusion_sampling

import scoreops
from scoreops.samplers import sigma_space
from scoreops.samplers.denoiser import score_to_denoiser
from scoreops.sde import VESDE

P = benchmark_module("peers_diffusers")

SDE = VESDE(25.0)
MIXTURE = GaussianMixture2D(sigma=SDE.sigma)
MIXTURE_DENOISER = score_to_denoiser(MIXTURE, SDE)
ENDS = scoreops.sigma_grid(SDE, 2)  # [std(1), std(eps), 0]: the benchmark's ends
SIGMA_MAX, SIGMA_MIN = float(ENDS[0]), float(ENDS[1])
# The schedulers build their grids and coefficients in float32; their result differs from
# scoreops's by ~1e-5 of max|x|, every structural difference below by > 5e-3 of it.
TOL = 2e-4

SCHEDULERS, WHY = P.diffusers_schedulers()
needs_diffusers = pytest.mark.skipif(SCHEDULERS is None, reason=WHY or "")

# runner -> scoreops's sampler with the same orders: diffusers' EDM DPM-Solver lowers only the
# step to sigma = 0 (which returns D), k-diffusion's rule; UniPC lowers min(order, N - i) at any N.
DETERMINISTIC = {
    "edm_euler": lambda x, s: sigma_space.sample_euler(MIXTURE_DENOISER, x, s),
    "edm_dpmpp_2m": lambda x, s: sigma_space.sample_dpmpp_2m(MIXTURE_DENOISER, x, s, lower_order_final=False),
    "unipc_2": lambda x, s: sigma_space.sample_unipc(MIXTURE_DENOISER, x, s, order=2, variant="bh2"),
    "unipc_3": lambda x, s: sigma_space.sample_unipc(MIXTURE_DENOISER, x, s, order=3, variant="bh2"),
}


class Recorder:
    """The mixture's denoiser, recording the noise level of every call."""

    def __init__(self):
        self.sigmas: list[float] = []

    def __call__(self, x, sigma):
        assert sigma.shape == (x.shape[0],) and sigma.dtype == torch.float32 and (sigma == sigma[0]).all()
        self.sigmas.append(float(sigma[0]))
        return MIXTURE_DENOISER(x, sigma)


def start(batch: int = 64) -> torch.Tensor:
    return SIGMA_MAX * torch.randn(batch, 2)


def close(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| relative to max |want|."""
    return float((got - want).abs().max() / want.abs().max())


def test_without_diffusers_the_loader_and_runners_say_why(monkeypatch):
    monkeypatch.setattr(P, "diffusers_version", lambda: None)
    module, why = P.diffusers_schedulers()
    assert module is None and why.startswith("diffusers not installed") and P.INSTALL_HINT in why
    with pytest.raises(RuntimeError, match="diffusers not installed"):
        P.edm_euler(MIXTURE_DENOISER, start(), SIGMA_MAX, SIGMA_MIN, 4, 0)


@needs_diffusers
@pytest.mark.parametrize("name", ["edm_euler", "edm_dpmpp_2m", "edm_dpmpp_2m_sde", "unipc_2", "unipc_3"])
@pytest.mark.parametrize("steps", [1, 4, 13])
def test_karras_runners_call_the_model_once_per_level_of_scoreops_grid(name, steps, seed):
    grid = scoreops.sigma_grid(SDE, steps, schedule="karras")
    model = Recorder()
    x = P.RUNNERS[name](model, start(8), SIGMA_MAX, SIGMA_MIN, steps, seed)
    assert x.shape == (8, 2) and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert len(model.sigmas) == steps * P.NFE_PER_STEP[name] == P.steps_for(name, steps) * P.NFE_PER_STEP[name]
    torch.testing.assert_close(torch.tensor(model.sigmas, dtype=torch.float64), grid[:-1], rtol=1e-5, atol=0)


@needs_diffusers
@pytest.mark.parametrize("name", list(DETERMINISTIC))
@pytest.mark.parametrize("steps", [1, 2, 4, 13])
def test_deterministic_schedulers_equal_scoreops_on_the_same_grid(name, steps, seed):
    x = start()
    got = P.RUNNERS[name](MIXTURE_DENOISER, x, SIGMA_MAX, SIGMA_MIN, steps, seed)
    want = DETERMINISTIC[name](x, scoreops.sigma_grid(SDE, steps, schedule="karras"))
    assert close(got, want) < TOL, f"{name}, {steps} steps: off by {close(got, want):.2e} of max|x|"


@needs_diffusers
@pytest.mark.parametrize("steps", [3, 6])
def test_edm_dpmsolver_keeps_second_order_on_the_last_step_above_zero(steps):
    # scoreops's default lower_order_final (the official DPM-Solver's, below 10 steps) is first
    # order there; diffusers' EDM scheduler is not, whatever its lower_order_final says.
    x, grid = start(), scoreops.sigma_grid(SDE, steps, schedule="karras")
    got = P.RUNNERS["edm_dpmpp_2m"](MIXTURE_DENOISER, x, SIGMA_MAX, SIGMA_MIN, steps, 0)
    lowered = sigma_space.sample_dpmpp_2m(MIXTURE_DENOISER, x, grid, lower_order_final=True)
    assert close(got, lowered) > 100 * TOL


@needs_diffusers
@pytest.mark.parametrize("steps", [4, 13])
def test_edm_sde_dpmsolver_equals_k_diffusion_given_its_noise(steps, seed):
    k = k_diffusion_sampling()
    x = start()
    got = P.RUNNERS["edm_dpmpp_2m_sde"](MIXTURE_DENOISER, x, SIGMA_MAX, SIGMA_MIN, steps, seed)
    # diffusers draws torch.randn(x.shape) from a CPU generator seeded by seed, once per step.
    generator = torch.Generator().manual_seed(seed)
    want = k.sample_dpmpp_2m_sde(MIXTURE_DENOISER, x, scoreops.sigma_grid(SDE, steps).to(torch.float32),
                                 eta=1.0, disable=True,
                                 noise_sampler=lambda s, s_next: torch.randn(x.shape, generator=generator))
    assert close(got, want) < TOL, f"off by {close(got, want):.2e} of max|x|"


@needs_diffusers
@pytest.mark.parametrize("name,steps", [("edm_dpmpp_2m_sde", 30), ("sde_ve_pc", 100)])
def test_stochastic_schedulers_reproduce_the_mixture(name, steps, seed):
    x = P.RUNNERS[name](MIXTURE_DENOISER, start(2000), SIGMA_MAX, SIGMA_MIN, steps, seed)
    # Weights, means and variances within 4.5 standard errors of an exact sample of 2000.
    MIXTURE.check_samples(x, what=f"{name}, {steps} steps (seed {seed})")


@needs_diffusers
@pytest.mark.parametrize("name", ["edm_dpmpp_2m_sde", "sde_ve_pc"])
def test_stochastic_runners_follow_their_seed(name, seed):
    x, run = start(16), P.RUNNERS[name]
    a, b = (run(MIXTURE_DENOISER, x, SIGMA_MAX, SIGMA_MIN, 4, s) for s in (seed, seed))
    c = run(MIXTURE_DENOISER, x, SIGMA_MAX, SIGMA_MIN, 4, seed + 1)
    assert torch.equal(a, b) and not torch.equal(a, c)


@needs_diffusers
def test_pc_calls_the_model_twice_per_step_on_its_geometric_grid(seed):
    model = Recorder()
    P.sde_ve_pc(model, start(8), SIGMA_MAX, SIGMA_MIN, 5, seed)
    # corrector and predictor at each level of sigma_min (sigma_max / sigma_min)**t, t = 1 .. 1e-5
    t = torch.linspace(1, 1e-5, 5, dtype=torch.float64)
    levels = SIGMA_MIN * (SIGMA_MAX / SIGMA_MIN) ** t
    torch.testing.assert_close(torch.tensor(model.sigmas, dtype=torch.float64), levels.repeat_interleave(2),
                               rtol=1e-5, atol=0)


@needs_diffusers
def test_bad_arguments_raise_one_line_errors():
    x = start(4)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        P.edm_euler(MIXTURE_DENOISER, x, SIGMA_MIN, SIGMA_MAX, 4, 0)
    with pytest.raises(ValueError, match="num_steps must be an int >= 1"):
        P.unipc(MIXTURE_DENOISER, x, SIGMA_MAX, SIGMA_MIN, 0, 0)
    with pytest.raises(ValueError, match="num_steps must be an int >= 2"):
        P.sde_ve_pc(MIXTURE_DENOISER, x, SIGMA_MAX, SIGMA_MIN, 1, 0)
    with pytest.raises(ValueError, match="bh2"):
        P.unipc(MIXTURE_DENOISER, x, SIGMA_MAX, SIGMA_MIN, 4, 0, variant="bh1")
