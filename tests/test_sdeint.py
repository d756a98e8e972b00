"""scoreops.sdeint: strong order on geometric Brownian motion, the update against a hand-written
loop, and bad input."""
import math
import types

import pytest
import torch

from scoreops.core import noise
from scoreops.samplers.ito_sde import sdeint

MU, SIGMA, PATHS = 0.5, 0.8, 4000


def gbm_drift(x, t):
    return MU * x


def gbm_diffusion(x, t):
    return SIGMA * x


def gbm_diffusion_dx(x, t):
    return torch.full_like(x, SIGMA)


def strong_error(method: str, steps: int, seed: int, **kw) -> float:
    """E|X_N - X(1)| for GBM from x0 = 1, against the exact solution on the same Brownian path."""
    x0 = torch.ones(PATHS, 1)
    ts = torch.linspace(0, 1, steps + 1)
    x1 = sdeint(gbm_drift, gbm_diffusion, x0, ts, method=method, seed=seed, **kw)[-1]
    dt = torch.diff(ts.to(torch.float64))
    # The increments the solver drew: dW_k = sqrt(dt_k) z_k, z_k from stream step k, lane 0.
    z = torch.stack([noise.philox_normal(seed, k, 0, PATHS, 1) for k in range(steps)]).to(torch.float64)
    w1 = (dt.sqrt()[:, None, None] * z).sum(0)
    exact = torch.exp((MU - SIGMA**2 / 2) + SIGMA * w1)
    return float((x1.to(torch.float64) - exact).abs().mean())


def fitted_order(method: str, seed: int, **kw) -> float:
    steps = [8, 16, 32, 64, 128]
    errors = [strong_error(method, n, seed, **kw) for n in steps]
    log_dt = torch.log(1 / torch.tensor(steps, dtype=torch.float64))
    log_err = torch.log(torch.tensor(errors, dtype=torch.float64))
    # Least-squares slope of log error against log step size.
    return float(torch.cov(torch.stack([log_dt, log_err]))[0, 1] / log_dt.var())


def test_strong_orders_on_geometric_brownian_motion(seed):
    """Milstein converges strongly with order 1, Euler-Maruyama with order 1/2.

    With 4000 paths each error is known to about 2%, so a fitted slope over 16x in step size
    to about 0.02; the windows allow for that and for the pre-asymptotic coarse steps.
    """
    em = fitted_order("euler", seed)
    milstein = fitted_order("milstein", seed, diffusion_dx=gbm_diffusion_dx)
    assert 0.4 < em < 0.6, f"Euler-Maruyama strong order {em:.3f} (seed {seed})"
    assert 0.9 < milstein < 1.1, f"Milstein strong order {milstein:.3f} (seed {seed})"


def test_autograd_derivative_equals_the_given_one(seed):
    x0 = torch.rand(6, 3) + 0.5
    ts = [0.0, 0.1, 0.25, 0.3]
    given = sdeint(gbm_drift, gbm_diffusion, x0, ts, method="milstein", diffusion_dx=gbm_diffusion_dx, seed=seed)
    by_autograd = sdeint(gbm_drift, gbm_diffusion, x0, ts, method="milstein", seed=seed)
    torch.testing.assert_close(by_autograd, given)


@pytest.mark.parametrize("method", ["euler", "milstein"])
def test_update_matches_a_hand_written_loop(method, seed):
    """x + mu dt + G dW + [Milstein] 1/2 G G' (dW**2 - dt), on a nonlinear SDE and uneven grid."""
    def drift(x, t):
        return -x**3 + torch.sin(t * x)

    def diffusion(x, t):
        return 0.5 + 0.3 * torch.tanh(x) * (1 + t)

    def diffusion_dx(x, t):
        return 0.3 * (1 - torch.tanh(x) ** 2) * (1 + t)

    x0 = torch.randn(5, 2, 3)
    ts = torch.sort(torch.rand(9, dtype=torch.float64)).values
    x, want = x0.to(torch.float64), [x0]
    for k in range(len(ts) - 1):
        t, dt = ts[k], float(ts[k + 1] - ts[k])
        dw = math.sqrt(dt) * noise.philox_normal(seed, k, 0, 5, 6).reshape(x.shape).to(torch.float64)
        g = diffusion(x, t)
        correction = 0.5 * g * diffusion_dx(x, t) * (dw**2 - dt) if method == "milstein" else 0.0
        x = x + drift(x, t) * dt + g * dw + correction
        want.append(x.to(torch.float32))
    got = sdeint(drift, diffusion, x0, ts, method=method, seed=seed)
    assert got.shape == (len(ts), 5, 2, 3)
    torch.testing.assert_close(got, torch.stack(want), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", ["euler", "milstein"])
def test_half_precision_state_keeps_float32_coefficients(method, seed):
    """A bfloat16 state is rounded once per step, after the float32 update; G and a given G' are
    not rounded to bfloat16 first (G = 0.3001 is not a bfloat16 number)."""
    x0 = torch.zeros(2, 500, dtype=torch.bfloat16)
    dt = 0.01

    def diffusion(x, t):
        return torch.full(x.shape, 0.3001, dtype=torch.float32) + 0.01 * x.float()

    def diffusion_dx(x, t):
        return torch.full(x.shape, 0.01, dtype=torch.float32)

    # The torch backend draws exactly noise.philox_normal's z (a kernel's may differ by an ulp
    # and so flip a rounding tie to bfloat16).
    got = sdeint(lambda x, t: torch.zeros_like(x), diffusion, x0, [0.0, dt], method=method, seed=seed,
                 diffusion_dx=diffusion_dx, backend="torch")[-1]
    z = noise.philox_normal(seed, 0, 0, 2, 500)
    g = torch.full_like(z, 0.3001)
    # sde_step's float32 update: x + b z + c (z**2 - 1), b = G sqrt(dt), c = G G' dt / 2 (G' = 0.01).
    c = g * 0.01 * (dt / 2) if method == "milstein" else 0.0
    want = (g * math.sqrt(dt) * z + c * (z * z - 1)).to(torch.bfloat16)
    assert got.dtype == torch.bfloat16
    # G rounded to bfloat16 (0.30078125) first would move about 40 % of the elements.
    assert torch.equal(got, want)


@pytest.mark.parametrize("kw, error, match", [
    (dict(method="heun"), ValueError, "method"),
    (dict(ts=[0.0]), ValueError, "ts"),
    (dict(ts=[0.0, 0.5, 0.5]), ValueError, "ts"),
    (dict(ts=[1.0, 0.0]), ValueError, "ts"),
    (dict(ts=[[0.0, 1.0]]), ValueError, "ts"),
    (dict(x0=torch.tensor(1.0)), ValueError, "x0"),
    (dict(x0=torch.ones(3, dtype=torch.int64)), TypeError, "x0"),
    (dict(drift=lambda x, t: torch.ones(7)), ValueError, "drift returned shape"),
    (dict(drift=lambda x, t: 1.0), TypeError, "drift must return a tensor"),
    (dict(diffusion=lambda x, t: x.reshape(-1)[:2]), ValueError, "diffusion returned shape"),
    (dict(method="milstein", diffusion_dx=1.0), TypeError, "diffusion_dx"),
    (dict(sample_offset=1.5), ValueError, "sample_offset"),
    (dict(sample_offset=2**32 - 2), ValueError, "would repeat sample 0"),
    (dict(drift=lambda x, t: x / (t - 0.5)), RuntimeError, "NaN or Inf, first at t = 1 "),
])
def test_bad_input(kw, error, match):
    args = dict(drift=gbm_drift, diffusion=gbm_diffusion, x0=torch.ones(3), ts=[0.0, 0.5, 1.0], seed=0)
    with pytest.raises(error, match=match):
        sdeint(**{**args, **kw})


def test_package_exports_the_function_after_any_import_order():
    import scoreops.samplers.ito_sde  # noqa: F401  binds the submodule on the package, as any import of it does
    for _ in range(2):
        assert scoreops.sdeint is sdeint
        assert not any(isinstance(getattr(scoreops, name), types.ModuleType) for name in scoreops.__all__)


def test_the_path_carries_no_gradients_rather_than_wrong_ones(seed):
    x0 = torch.ones(2, 3, requires_grad=True)
    path = sdeint(lambda x, t: -x, lambda x, t: 0.1 * torch.ones_like(x), x0, torch.linspace(0, 1, 6), seed=seed)
    assert not path.requires_grad
    with pytest.raises(RuntimeError, match="does not require grad"):
        path[-1].sum().backward()
    assert x0.grad is None
    torch.testing.assert_close(path, sdeint(lambda x, t: -x, lambda x, t: 0.1 * torch.ones_like(x), x0.detach(),
                                            torch.linspace(0, 1, 6), seed=seed))
