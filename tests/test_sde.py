"""scoreops.sde: the VE SDE's functions against their formulas, and the prior sample."""
import functools
import math

import numpy as np
import pytest
import torch
from conftest import skip_unless_runnable

from scoreops import ops
from scoreops.core import noise
from scoreops.sde import PRIOR_LANE, VESDE, diffusion_coeff, diffusion_coeff_dt, marginal_prob_std, prior_sample


def _times(n=257):
    return torch.rand(n, dtype=torch.float64)


@pytest.mark.parametrize("sigma", [25.0, 2.5])
def test_functions_match_their_formulas(sigma):
    t = _times()
    tn = t.numpy()
    want_std = np.sqrt((sigma ** (2 * tn) - 1) / (2 * np.log(sigma)))
    np.testing.assert_allclose(marginal_prob_std(t, sigma).numpy(), want_std, rtol=1e-12)
    np.testing.assert_allclose(diffusion_coeff(t, sigma).numpy(), sigma**tn, rtol=1e-12)
    np.testing.assert_allclose(diffusion_coeff_dt(t, sigma).numpy(), np.log(sigma) * sigma**tn, rtol=1e-12)


def test_std_is_the_integral_of_g_squared():
    """std(t)**2 = int_0^t g(s)**2 ds: the perturbation kernel of dx = g dw."""
    t = torch.linspace(0, 1, 20001, dtype=torch.float64)
    g2 = diffusion_coeff(t) ** 2
    integral = torch.cat([torch.zeros(1, dtype=torch.float64),
                          torch.cumulative_trapezoid(g2, t)])
    torch.testing.assert_close(marginal_prob_std(t) ** 2, integral, rtol=1e-6, atol=1e-9)


def test_time_derivative_matches_autograd():
    t = _times().requires_grad_()
    (dg,) = torch.autograd.grad(diffusion_coeff(t).sum(), t)
    torch.testing.assert_close(diffusion_coeff_dt(t.detach()), dg)


def test_tutorial_partial_and_vesde_agree():
    t = _times().to(torch.float32)
    sde = VESDE(7.0)
    std_fn = functools.partial(marginal_prob_std, sigma=7.0)
    g_fn = functools.partial(diffusion_coeff, sigma=7.0)
    torch.testing.assert_close(std_fn(t), sde.marginal_prob_std(t))
    torch.testing.assert_close(g_fn(t), sde.diffusion_coeff(t))
    assert std_fn(t).dtype == torch.float32 and std_fn(t).shape == t.shape


def test_float_input_gives_a_tensor():
    out = marginal_prob_std(0.5)
    assert isinstance(out, torch.Tensor) and out.dim() == 0
    assert math.isclose(float(out), math.sqrt((25.0 - 1) / (2 * math.log(25.0))), rel_tol=1e-6)
    assert float(marginal_prob_std(0.0)) == 0.0


@pytest.mark.parametrize("sigma", [1.0, 0.5, -3.0, float("nan"), float("inf"), "25", True])
def test_bad_sigma(sigma):
    with pytest.raises(ValueError, match="sigma"):
        VESDE(sigma)
    with pytest.raises(ValueError, match="sigma"):
        marginal_prob_std(0.5, sigma)


def test_prior_sample_is_std1_times_the_stream(seed):
    sde = VESDE(25.0)
    x = sde.prior_sample(5, (3, 2, 7), seed=seed, device="cpu", backend="torch")
    z = noise.philox_normal(seed, 0, PRIOR_LANE, 5, 42)
    assert x.shape == (5, 3, 2, 7) and x.dtype == torch.float32
    torch.testing.assert_close(x.reshape(5, -1), z * float(sde.marginal_prob_std(1.0)))


def test_prior_sample_does_not_depend_on_the_batch(seed):
    big = prior_sample(marginal_prob_std, 9, (2,), seed=seed, device="cpu")
    small = prior_sample(marginal_prob_std, 4, (2,), seed=seed, device="cpu")
    shard = prior_sample(marginal_prob_std, 5, (2,), seed=seed, sample_offset=4, device="cpu")
    torch.testing.assert_close(big, torch.cat([small, shard]), rtol=0, atol=0)


def test_prior_sample_statistics(seed):
    x = prior_sample(marginal_prob_std, 20000, (2,), seed=seed, device="cpu").to(torch.float64)
    std1 = float(marginal_prob_std(1.0))
    # Mean and variance of 40000 normals, within 5 standard errors.
    assert abs(x.mean()) < 5 * std1 / math.sqrt(x.numel())
    assert abs(x.var() / std1**2 - 1) < 5 * math.sqrt(2 / x.numel())


def test_prior_noise_is_not_loop_noise(seed):
    """x(1) takes its own lane: it must not reuse the predictor's or a corrector's step-0 noise."""
    prior = noise.philox_normal(seed, 0, PRIOR_LANE, 4, 8)
    for lane in (noise.LANE_PREDICTOR, noise.corrector_lane(0), noise.corrector_lane(1)):
        assert not torch.allclose(prior, noise.philox_normal(seed, 0, lane, 4, 8))


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_prior_lane_on_every_backend(backend, seed):
    """The reserved lane, the largest int32, reaches every kernel unchanged."""
    skip_unless_runnable(backend, "cpu")
    got = ops.philox_normal(3, 10, seed=seed, lane=PRIOR_LANE, backend=backend)
    torch.testing.assert_close(got, noise.philox_normal(seed, 0, PRIOR_LANE, 3, 10))


@pytest.mark.parametrize("args, kw, error, match", [
    ((2, 3), {}, TypeError, "shape must be a sequence of ints"),
    ((2, (1, 0)), {}, ValueError, "non-empty sequence of positive ints"),
    ((0, (1, 2)), {}, ValueError, "batch_size must be an int >= 1"),
    ((2, (1, 2)), {"sample_offset": 2**32 - 1}, ValueError, "would repeat sample 0"),
    ((2, (1, 2)), {"device": "meta"}, ValueError, "meta device"),
])
def test_bad_prior_sample_input(args, kw, error, match):
    with pytest.raises(error, match=match):
        VESDE().prior_sample(*args, seed=0, **kw)
