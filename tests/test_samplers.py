"""The drop-in samplers: the mixture they must reproduce, the eager reference given the same
noise, the noise stream's guarantees (backends, batch sizes, shards), the ODE against scipy,
and bad input."""
import math

import numpy as np
import pytest
import torch
from conftest import skip_unless_runnable
from mixture import GaussianMixture2D
from scipy.integrate import solve_ivp
from scipy.integrate._ivp.rk import RK45

import scoreops
from scoreops import samplers
from scoreops.core import checks, noise
from scoreops.evaluation import reference
from scoreops.samplers import reverse_sde, schedule
from scoreops.sde import VESDE, diffusion_coeff, marginal_prob_std

SDE = VESDE(25.0)
MIXTURE = GaussianMixture2D(sigma=SDE.sigma)


def gaussian_score(variance: float = 0.5):
    """Exact noised score of data N(0, variance I) under the VE SDE, for any sample shape."""
    def score(x, t):
        var = variance + SDE.marginal_prob_std(t) ** 2
        return (-x / var.reshape(-1, *([1] * (x.dim() - 1)))).to(x.dtype)
    return score


# The tutorial's own functions, as it writes them: torch.tensor cuts the autograd graph.
def tutorial_marginal_prob_std(t, sigma):
    t = torch.tensor(t, device="cpu")
    return torch.sqrt((sigma ** (2 * t) - 1.0) / 2.0 / np.log(sigma))


def tutorial_diffusion_coeff(t, sigma):
    return torch.tensor(sigma**t, device="cpu")


def tutorial_functions(sigma=25.0):
    return (lambda t: tutorial_marginal_prob_std(t, sigma)), (lambda t: tutorial_diffusion_coeff(t, sigma))


# --------------------------------------------------------------------------- the mixture
# 2000 samples pin the mode weights to +-0.05 (4.5 standard errors); 200 steps keep EM's
# discretisation bias well inside that.
N_SAMPLES, N_STEPS = 2000, 200
MIXTURE_RUNS = {
    "em": lambda seed: samplers.em_sample(MIXTURE, SDE, None, N_SAMPLES, N_STEPS, shape=(2,), seed=seed),
    "milstein-ito": lambda seed: samplers.milstein_sample(MIXTURE, SDE, None, N_SAMPLES, N_STEPS, correction="ito",
                                                          shape=(2,), seed=seed),
    "pc-fixed": lambda seed: samplers.pc_sample(MIXTURE, SDE, None, N_SAMPLES, N_STEPS, shape=(2,), seed=seed),
    "pc-sampled": lambda seed: samplers.pc_sample(MIXTURE, SDE, None, N_SAMPLES, N_STEPS, noise_norm="sampled",
                                                  shape=(2,), seed=seed),
    "pc-reverse-diffusion": lambda seed: samplers.pc_sample(MIXTURE, SDE, None, N_SAMPLES, N_STEPS,
                                                            predictor="reverse_diffusion", shape=(2,), seed=seed),
}


@pytest.mark.parametrize("name", list(MIXTURE_RUNS))
def test_sde_samplers_reproduce_the_mixture(name, seed):
    x = MIXTURE_RUNS[name](seed)
    assert x.shape == (N_SAMPLES, 2) and x.dtype == torch.float32
    MIXTURE.check_samples(x, what=f"{name} (seed {seed})")


def test_ode_sampler_reproduces_the_mixture_from_the_true_marginal(seed):
    """Started from exact samples of the noised marginal at t = 1, the flow ends on the mixture."""
    generator = torch.Generator().manual_seed(seed)
    x = samplers.ode_sample(MIXTURE, SDE, z=MIXTURE.sample(4000, t=1.0, generator=generator))
    MIXTURE.check_samples(x, what=f"ode (seed {seed})")


def test_ode_sampler_keeps_the_prior_mismatch(seed):
    """From the prior, the 0.3 mode loses 0.0056 of weight, as ode_sample's docstring states.

    The flow is deterministic, so the weight that the prior N(0, std(1)**2 I) puts on the
    preimage of mode 0 differs from the true marginal's by E_prior[1{mode 0} (1 - p1 / prior)].
    Importance weights p1 / prior measure it on one set of samples, with a small standard error;
    reweighted, the same samples must give the true weights.
    """
    n = 4000
    z = SDE.prior_sample(n, (2,), seed=seed, device="cpu")
    mode0 = (MIXTURE.assign(samplers.ode_sample(MIXTURE, SDE, z=z)) == 0).to(torch.float64)
    std1 = float(SDE.marginal_prob_std(1.0))
    log_prior = -0.5 * (z.to(torch.float64) ** 2).sum(1) / std1**2 - math.log(2 * math.pi * std1**2)
    ratio = (MIXTURE.log_prob(z, torch.ones(n)) - log_prior).exp()
    shift = mode0 * (1 - ratio)
    se = float(shift.std()) / math.sqrt(n) + 0.0002  # plus the stated figure's own error (n = 120000)
    assert abs(float(shift.mean()) - (-0.0056)) < 4.5 * se, f"weight shift {float(shift.mean()):.5f} (seed {seed})"
    w0 = float((mode0 * ratio).mean())
    assert abs(w0 - 0.3) < 4.5 * float((mode0 * ratio).std()) / math.sqrt(n), f"reweighted w0 {w0:.4f}"


def test_time_correction_moves_the_mode_weights(seed):
    """The paper's correction="time" is biased: at 500 steps the 0.3 / 0.7 mixture comes out
    0.374 / 0.626, as milstein_sample's docstring states."""
    x = samplers.milstein_sample(MIXTURE, SDE, None, N_SAMPLES, 500, shape=(2,), seed=seed)
    w0 = float(MIXTURE.statistics(x)[0][0])
    se = math.sqrt(0.374 * 0.626 / N_SAMPLES) + 0.0024  # plus the stated figure's own error (n = 40000)
    assert abs(w0 - 0.374) < 4.5 * se, f"mode-0 weight {w0:.4f} (seed {seed})"


# --------------------------------------------------------------------------- against the eager reference
def stream_noise(seed):
    """The reference samplers' noise hook, drawing the fused samplers' stream."""
    def draw(x, step, lane):
        return noise.philox_normal(seed, step, lane, x.shape[0], x[0].numel()).reshape(x.shape)
    return draw


SHAPE, BATCH, STEPS = (2, 3), 5, 12


def _start(seed):
    return SDE.prior_sample(BATCH, SHAPE, seed=seed, device="cpu")


@pytest.mark.parametrize("correction", ["time", "ito"])
def test_em_and_milstein_match_the_reference(correction, seed):
    model = gaussian_score()
    x_T = _start(seed)
    want_em = reference.em_sampler(model, marginal_prob_std, diffusion_coeff, num_steps=STEPS, device="cpu",
                                   x_T=x_T, noise=stream_noise(seed))
    got_em = samplers.em_sample(model, SDE, None, BATCH, STEPS, shape=SHAPE, seed=seed)
    torch.testing.assert_close(got_em, want_em)
    # The reference takes dg/dt by autograd on the free function; the fused sampler in closed form.
    want = reference.milstein_sampler(model, marginal_prob_std, diffusion_coeff, num_steps=STEPS, device="cpu",
                                      correction=correction, x_T=x_T, noise=stream_noise(seed))
    got = samplers.milstein_sample(model, SDE, None, BATCH, STEPS, correction=correction, shape=SHAPE, seed=seed)
    torch.testing.assert_close(got, want)
    if correction == "time":
        assert not torch.allclose(got, got_em)


@pytest.mark.filterwarnings("ignore:To copy construct from a tensor")
def test_time_correction_with_plain_functions(seed):
    """dg/dt by autograd (free functions) and by central differences (the tutorial's, which cut
    the graph) give the closed-form result."""
    model = gaussian_score()
    want = samplers.milstein_sample(model, SDE, None, BATCH, STEPS, shape=SHAPE, seed=seed)
    for std_fn, g_fn in [(marginal_prob_std, diffusion_coeff), tutorial_functions()]:
        got = samplers.milstein_sample(model, std_fn, g_fn, BATCH, STEPS, shape=SHAPE, seed=seed)
        torch.testing.assert_close(got, want)


def test_ito_correction_equals_em(seed):
    model = gaussian_score()
    em = samplers.em_sample(model, SDE, None, BATCH, STEPS, shape=SHAPE, seed=seed)
    ito = samplers.milstein_sample(model, SDE, None, BATCH, STEPS, correction="ito", shape=SHAPE, seed=seed)
    assert torch.equal(em, ito)


@pytest.mark.parametrize("noise_norm", ["fixed", "sampled"])
def test_pc_matches_the_reference(noise_norm, seed):
    model = gaussian_score()
    want = reference.pc_sampler(model, SDE, None, num_steps=STEPS, device="cpu", noise_norm=noise_norm,
                                x_T=_start(seed), noise=stream_noise(seed))
    got = samplers.pc_sample(model, SDE, None, BATCH, STEPS, noise_norm=noise_norm, shape=SHAPE, seed=seed)
    torch.testing.assert_close(got, want)


def test_reverse_diffusion_predictor_is_the_ancestral_step(seed):
    """With no corrector: x <- x + G**2 s + G z, G**2 = std(t)**2 - std(t - dt)**2, mean at the end."""
    model = gaussian_score()
    x = _start(seed)
    ts = torch.linspace(1.0, 1e-3, STEPS)
    dt = float(ts[0] - ts[1])
    draw = stream_noise(seed)
    for k, t in enumerate(ts.tolist()):
        var = SDE.marginal_prob_std(t) ** 2 - SDE.marginal_prob_std(max(t - dt, 0.0)) ** 2
        x = x + var * model(x, torch.full((BATCH,), t)) + (var.sqrt() * draw(x, k, 0) if k < STEPS - 1 else 0)
    got = samplers.pc_sample(model, SDE, None, BATCH, STEPS, corrector_steps=0, predictor="reverse_diffusion",
                             shape=SHAPE, seed=seed)
    torch.testing.assert_close(got, x)


@pytest.mark.filterwarnings("ignore:To copy construct from a tensor")
def test_tutorial_functions_are_accepted(seed):
    model = gaussian_score()
    std_fn, g_fn = tutorial_functions()
    for sample in (samplers.em_sample, samplers.pc_sample):
        want = sample(model, SDE, None, BATCH, STEPS, shape=SHAPE, seed=seed)
        torch.testing.assert_close(sample(model, std_fn, g_fn, BATCH, STEPS, shape=SHAPE, seed=seed), want)


LOG_SIGMA = math.log(25.0)
# std(t) and g(t) written in ways the tutorial's loop accepts, since it calls them with a batch
# of equal times: one value for the batch, NumPy, a column, or Python floats of one time.
SCHEDULE_STYLES = {
    "one value": (lambda t: SDE.marginal_prob_std(t[0]), lambda t: 25.0 ** t[0]),
    "numpy": (lambda t: np.sqrt((25.0 ** (2 * np.asarray(t)) - 1) / (2 * LOG_SIGMA)),
              lambda t: 25.0 ** np.asarray(t)),
    "column": (lambda t: SDE.marginal_prob_std(t)[:, None], lambda t: SDE.diffusion_coeff(t)[:, None]),
    "scalar only": (lambda t: math.sqrt((25.0 ** (2 * float(t)) - 1) / (2 * LOG_SIGMA)),
                    lambda t: 25.0 ** float(t)),
}


@pytest.mark.parametrize("style", list(SCHEDULE_STYLES))
def test_schedule_functions_in_other_styles_give_the_same_samples(style, seed):
    model = gaussian_score()
    std_fn, g_fn = SCHEDULE_STYLES[style]
    for sample in (samplers.em_sample, samplers.milstein_sample, samplers.pc_sample):
        want = sample(model, SDE, None, BATCH, STEPS, shape=SHAPE, seed=seed)
        torch.testing.assert_close(sample(model, std_fn, g_fn, BATCH, STEPS, shape=SHAPE, seed=seed), want)
    want = samplers.ode_sample(model, SDE, None, BATCH, shape=SHAPE, seed=seed)
    torch.testing.assert_close(samplers.ode_sample(model, std_fn, g_fn, BATCH, shape=SHAPE, seed=seed), want)


def test_a_constant_diffusion_has_no_time_correction(seed):
    model = gaussian_score()
    em = samplers.em_sample(model, SDE.marginal_prob_std, lambda t: 2, BATCH, STEPS, shape=SHAPE, seed=seed)
    milstein = samplers.milstein_sample(model, SDE.marginal_prob_std, lambda t: 2, BATCH, STEPS, shape=SHAPE,
                                        seed=seed)
    assert torch.equal(em, milstein)


# --------------------------------------------------------------------------- the noise stream's guarantees
SDE_SAMPLERS = {
    "em": samplers.em_sample,
    "milstein": samplers.milstein_sample,
    "pc": lambda *a, **k: samplers.pc_sample(*a, per_sample=True, **k),
}


@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("name", list(SDE_SAMPLERS))
def test_same_samples_on_every_backend(name, backend, seed):
    skip_unless_runnable(backend, "cpu")
    model = gaussian_score()
    want = SDE_SAMPLERS[name](model, SDE, None, 3, 6, shape=SHAPE, seed=seed, backend="torch")
    got = SDE_SAMPLERS[name](model, SDE, None, 3, 6, shape=SHAPE, seed=seed, backend=backend)
    torch.testing.assert_close(got, want)


def test_same_ode_samples_on_every_backend(seed):
    """At atol = rtol = 1e-5 float32 roundoff moves the error estimate by up to a percent, so a
    borderline step can be accepted on one backend and rejected on the other (in 1.7 % of
    30,000 seeds, by one to three steps): the step counts may differ, the samples agree to far
    below the tolerance (5.7e-6 at worst over those seeds)."""
    skip_unless_runnable("cpu", "cpu")
    x_T = _start(seed)
    want = samplers.ode_sample(gaussian_score(), SDE, z=x_T, backend="torch")
    got = samplers.ode_sample(gaussian_score(), SDE, z=x_T, backend="cpu")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request):
    """Run the test with 1 and with 2 torch threads, and restore the suite's count after."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.mark.parametrize("backend", ["torch", "cpu", "triton"])
@pytest.mark.parametrize("name", list(SDE_SAMPLERS))
def test_a_sample_does_not_depend_on_its_batch(name, backend, threads, seed):
    """With an elementwise (so batch-invariant) score model the stream and the fused steps are
    bit-exact whatever the batch size, the shard and the thread count, within one backend.
    7 samples of 1000 elements each: large enough that the C++ kernels split them between threads."""
    skip_unless_runnable(backend, "cpu")
    model, run, shape = gaussian_score(), SDE_SAMPLERS[name], (10, 100)
    full = run(model, SDE, None, 7, STEPS, shape=shape, seed=seed, backend=backend)
    head = run(model, SDE, None, 3, STEPS, shape=shape, seed=seed, backend=backend)
    tail = run(model, SDE, None, 4, STEPS, shape=shape, seed=seed, sample_offset=3, backend=backend)
    one = run(model, SDE, None, 1, STEPS, shape=shape, seed=seed, sample_offset=5, backend=backend)
    assert torch.equal(torch.cat([head, tail]), full)
    assert torch.equal(one, full[5:6])


@pytest.mark.parametrize("backend", ["torch", "cpu", "triton"])
@pytest.mark.parametrize("name", list(SDE_SAMPLERS))
def test_a_sample_does_not_depend_on_the_thread_count(name, backend, seed):
    """Each element's update reads only that element; the per-sample norms sum tiles in a fixed
    order: so with an elementwise score model 1 and 2 threads give the same bits."""
    skip_unless_runnable(backend, "cpu")
    before, got = torch.get_num_threads(), []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            got.append(SDE_SAMPLERS[name](gaussian_score(), SDE, None, 7, STEPS, shape=(10, 100), seed=seed,
                                          backend=backend))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(got[0], got[1])


def tutorial_plan(std, num_steps, batch, seed, predictor, float64_grid):
    """The plan of a run on the tutorial's time grid (no final denoise)."""
    ts, dts, t_end = reverse_sde.time_steps(std, num_steps, 1e-3, float64_grid, None, None, 7.0)
    return reverse_sde.make_plan(std, ts, dts, t_end, batch, torch.device("cpu"), torch.tensor([seed]), predictor,
                                 "time", False)


@pytest.mark.parametrize("batch", [1, 3, 257])
def test_plan_rows_start_on_16_byte_boundaries(batch, seed):
    """Triton specialises a kernel on each pointer's 16-byte alignment: if step k's coefficient,
    counter or time row were aligned differently from the warm-up steps', a CUDA-graph capture
    would meet a kernel variant not yet compiled. The copy a graph keeps must stay aligned too."""
    num_steps = 7
    plan = tutorial_plan(schedule.Schedule(SDE, None), num_steps, batch, seed, "milstein", False)
    ts = torch.linspace(1.0, 1e-3, num_steps)
    want = dict(t=ts[:, None].expand(num_steps, batch), a=SDE.diffusion_coeff(ts.double())[:, None] ** 2 *
                float(ts[0] - ts[1]), steps=torch.arange(num_steps)[:, None])
    for p in (plan, plan.clone()):
        for name in ("t", "a", "b", "c", "steps"):
            rows = getattr(p, name)
            assert all(rows[k].data_ptr() % 16 == 0 for k in range(num_steps)), name
        for name, value in want.items():
            torch.testing.assert_close(getattr(p, name), value.to(getattr(p, name).dtype))


def test_seed_none_follows_torch_manual_seed():
    model = gaussian_score()
    torch.manual_seed(1234)
    first = samplers.em_sample(model, SDE, None, BATCH, STEPS, shape=SHAPE)
    torch.manual_seed(1234)
    again = samplers.em_sample(model, SDE, None, BATCH, STEPS, shape=SHAPE)
    other = samplers.em_sample(model, SDE, None, BATCH, STEPS, shape=SHAPE)
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


def test_defaults_are_the_tutorials():
    """device=None is the CPU here; the default sample shape is MNIST's."""
    x = samplers.em_sample(gaussian_score(), SDE, batch_size=2, num_steps=2, seed=0)
    assert x.shape == (2, 1, 28, 28) and x.device.type == "cpu"


def test_x_T_sets_batch_shape_and_dtype(seed):
    x_T = _start(seed).to(torch.bfloat16)
    x = samplers.em_sample(gaussian_score(), SDE, None, 99, STEPS, shape=(9,), x_T=x_T, seed=seed)
    assert x.shape == x_T.shape and x.dtype == torch.bfloat16


def test_non_finite_samples_name_the_step(seed):
    def model(x, t):
        s = gaussian_score()(x, t)
        return torch.where(t.reshape(-1, 1, 1) < 0.5, torch.nan, s)
    first_bad = int((torch.linspace(1.0, 1e-3, STEPS) < 0.5).nonzero()[0])
    with pytest.raises(RuntimeError, match=f"pc_sample: the samples contain NaN or Inf; first at step {first_bad} "):
        samplers.pc_sample(model, SDE, None, BATCH, STEPS, shape=SHAPE, seed=seed)
    with pytest.raises(RuntimeError, match="ode_sample: the score or the state became NaN"):
        samplers.ode_sample(model, SDE, None, BATCH, shape=SHAPE, seed=seed)
    with pytest.raises(RuntimeError, match="first at step 0 .*infinite where a score is all zero"):
        samplers.pc_sample(lambda x, t: torch.zeros_like(x), SDE, None, BATCH, STEPS, shape=SHAPE, seed=seed)


# --------------------------------------------------------------------------- the ODE against scipy
def test_dormand_prince_tableau_is_scipys():
    np.testing.assert_allclose(samplers.DP_C, RK45.C, rtol=1e-15)
    np.testing.assert_allclose(samplers.DP_B, RK45.B, rtol=1e-15)
    np.testing.assert_allclose(samplers.DP_E, RK45.E, rtol=1e-15)
    for i, row in enumerate(samplers.DP_A):
        np.testing.assert_allclose(row, RK45.A[i, :i], rtol=1e-15)


def _accurate_flow(z: torch.Tensor) -> torch.Tensor:
    """The mixture's probability-flow ODE from t = 1 to 1e-3, solved in float64 to 1e-11."""
    def velocity(t, y):
        x = torch.from_numpy(y).reshape(z.shape)
        score = MIXTURE.score(x, torch.full((z.shape[0],), t, dtype=torch.float64))
        return (-0.5 * float(SDE.diffusion_coeff(t)) ** 2 * score).reshape(-1).numpy()
    y1 = solve_ivp(velocity, (1.0, 1e-3), z.to(torch.float64).reshape(-1).numpy(), method="DOP853", rtol=1e-11,
                   atol=1e-11).y[:, -1]
    return torch.from_numpy(y1).reshape(z.shape)


def test_ode_nfe_and_accuracy_match_solve_ivp(seed):
    """Same method and step control as scipy's RK45, so over a few small problems the nfe and
    the error against an accurate solution agree with solve_ivp's.

    Per problem they need not be equal: the state is float32 here and float64 in scipy, and the
    rounding flips an accept/reject decision now and then (in about one problem in six, at
    +-6 nfe per flip, rarely more), after which the step sequences and the errors differ. Over
    150 seeds the summed nfe differed by at most 9%, and the ratio of the summed errors had
    median 1.0, 99th percentile 1.8 and maximum 2.0.
    """
    generator = torch.Generator().manual_seed(seed)
    nfe, nfe_scipy, error, error_scipy = 0, 0, 0.0, 0.0
    for _ in range(4):
        z = MIXTURE.sample(16, t=1.0, generator=generator)
        want = reference.ode_sampler(MIXTURE, SDE, None, atol=1e-5, rtol=1e-5, device="cpu", z=z, full_output=True)
        got = samplers.ode_sample(MIXTURE, SDE, None, atol=1e-5, rtol=1e-5, z=z, full_output=True)
        assert isinstance(got, samplers.ODEResult) and got.samples.shape == z.shape
        assert got.nfe == 2 + 6 * (got.n_accepted + got.n_rejected)
        exact = _accurate_flow(z)
        nfe, nfe_scipy = nfe + got.nfe, nfe_scipy + want.nfe
        error += float((got.samples.to(torch.float64) - exact).abs().max())
        error_scipy += float((want.samples - exact).abs().max())
    assert abs(nfe - nfe_scipy) <= 0.15 * nfe_scipy, (nfe, nfe_scipy)
    assert error <= 3 * error_scipy, (error, error_scipy)


def test_ode_returns_the_samples_by_default(seed):
    x_T = _start(seed)
    x = samplers.ode_sample(gaussian_score(), SDE, z=x_T)
    assert isinstance(x, torch.Tensor) and x.shape == x_T.shape
    # Data N(0, 0.5 I): the flow maps x(1) to x(1) * sqrt(0.5 / (0.5 + std(1)**2)).
    torch.testing.assert_close(x, x_T * math.sqrt(0.5 / (0.5 + SDE.marginal_prob_std(1.0) ** 2)),
                               rtol=1e-3, atol=1e-3)


# --------------------------------------------------------------------------- bad input
def _em(**kw):
    args = dict(score_model=gaussian_score(), marginal_prob_std=SDE, batch_size=2, num_steps=3, shape=SHAPE, seed=0)
    return samplers.em_sample(**{**args, **kw})


@pytest.mark.parametrize("kw, error, match", [
    (dict(num_steps=1), ValueError, "num_steps"),
    (dict(num_steps=2.5), ValueError, "num_steps"),
    (dict(eps=0.0), ValueError, "eps"),
    (dict(eps=1.0), ValueError, "eps"),
    (dict(eps=float("nan")), ValueError, "eps"),
    (dict(batch_size=0), ValueError, "batch_size"),
    (dict(shape=(3, 0)), ValueError, "shape"),
    (dict(shape=5), TypeError, "shape"),
    (dict(sample_offset=-1), ValueError, "sample_offset"),
    (dict(sample_offset=2**32 - 1), ValueError, "would repeat sample 0"),  # batch 2: samples 2**32 - 1 and 0
    (dict(seed=2**64), ValueError, "seed must fit in 64 bits"),
    (dict(seed=-(2**63) - 1), ValueError, "seed must fit in 64 bits"),
    (dict(seed=1.0), TypeError, "seed must be an int"),
    (dict(cuda_graph=True), ValueError, "cuda_graph"),
    (dict(cuda_graph="yes"), ValueError, "cuda_graph"),
    (dict(backend="numpy"), ValueError, "backend"),
    (dict(diffusion_coeff=diffusion_coeff), ValueError, "VESDE"),
    (dict(marginal_prob_std=25.0), TypeError, "marginal_prob_std"),
    (dict(x_T=torch.zeros(2, 3, dtype=torch.int64)), TypeError, "x_T must be float32"),
    (dict(x_T=[[0.0, 1.0]]), TypeError, "x_T must be a torch.Tensor"),
    (dict(x_T=torch.tensor([[0.0, float("nan")]])), ValueError, "x_T contains NaN"),
    (dict(device="meta"), ValueError, "meta device"),
    (dict(eps=1 - 1e-9), ValueError, "too close to 1"),
    (dict(marginal_prob_std=lambda t: torch.ones(3), diffusion_coeff=diffusion_coeff), ValueError,
     "marginal_prob_std\\(t\\) must return one value per time"),
    (dict(marginal_prob_std=lambda t: -torch.ones_like(t), diffusion_coeff=diffusion_coeff), ValueError,
     "marginal_prob_std\\(1\\) must be one positive"),
    (dict(score_model=lambda x, t: x[:, :1]), ValueError, "score_model returned shape"),
    (dict(score_model=lambda x, t: x.double()), TypeError, "score_model returned torch.float64"),
    (dict(score_model=lambda x, t: x.tolist()), TypeError, "score_model must return a tensor"),
    (dict(score_model=lambda x, t: torch.nn.functional.conv2d(x, torch.ones(1, 1, 3, 3)), shape=(2,)), ValueError,
     "do shape and dtype match the model"),
])
def test_bad_sde_sampler_input(kw, error, match):
    with pytest.raises(error, match=match):
        _em(**kw)


def test_numpy_scalars_are_accepted_as_numbers():
    assert torch.equal(_em(batch_size=np.int64(2), num_steps=np.int32(3), eps=np.float32(1e-3), seed=np.int64(5)),
                       _em(seed=5))


def test_a_half_precision_scorenet_samples_from_a_half_precision_start(seed):
    from scoreops.training.models import ScoreNet, model_options

    net = ScoreNet(SDE.marginal_prob_std, **model_options("digits", channels=[8, 16], embed_dim=16)).eval()
    x_T = SDE.prior_sample(2, (1, 8, 8), seed=seed)
    want = samplers.em_sample(net, SDE, x_T=x_T, num_steps=4, seed=seed)
    got = samplers.em_sample(net.half(), SDE, x_T=x_T.half(), num_steps=4, seed=seed)
    assert got.dtype == torch.float16
    # float16 rounding of the net and the state: 2.1e-3 of the largest value at worst over 10 seeds.
    torch.testing.assert_close(got.float(), want, rtol=5e-3, atol=5e-3 * want.abs().max().item())


def test_a_device_named_with_or_without_its_index_is_the_same_device():
    # Tensors on "cpu:0" report "cpu" (and on "cuda" report "cuda:<current>"): the stream's
    # seed and step tensors must be found on the data's device either way.
    assert torch.equal(_em(device="cpu:0"), _em(device="cpu"))
    assert checks.canonical_device("cpu:0") == torch.device("cpu")
    assert checks.canonical_device("cuda:1") == torch.device("cuda", 1)


def test_cuda_without_an_index_means_the_current_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert checks.canonical_device("cuda") == torch.device("cuda", 3)


@pytest.mark.parametrize("kw, match", [
    (dict(snr=0.0), "snr"), (dict(snr=-0.16), "snr"), (dict(snr=float("nan")), "snr"),
    (dict(noise_norm="l2"), "noise_norm"), (dict(predictor="heun"), "predictor"),
    (dict(correction="space"), "correction"), (dict(corrector_steps=-1), "corrector_steps"),
    (dict(per_sample="yes"), "per_sample must be True or False"),
])
def test_bad_pc_input(kw, match):
    with pytest.raises(ValueError, match=match):
        samplers.pc_sample(gaussian_score(), SDE, None, 2, 3, shape=SHAPE, seed=0, **kw)


@pytest.mark.parametrize("kw, match", [
    (dict(atol=0.0), "atol"), (dict(rtol=-1e-5), "rtol"), (dict(atol=float("inf")), "atol"), (dict(eps=2.0), "eps"),
    (dict(rtol=1e-12), "finer than the steps' float32 arithmetic"),
    (dict(atol=1e-11), "finer than the steps' float32 arithmetic"),
])
def test_bad_ode_input(kw, match):
    with pytest.raises(ValueError, match=match):
        samplers.ode_sample(gaussian_score(), SDE, None, 2, shape=SHAPE, seed=0, **kw)


@pytest.mark.parametrize("score, z, error, match", [
    (lambda x, t: torch.full_like(x, float("inf")), None, RuntimeError, "score at t = 1 is NaN or Inf"),
    (lambda x, t: torch.full_like(x, float("nan")), None, RuntimeError, "score at t = 1 is NaN or Inf"),
    (lambda x, t: -x, torch.tensor([[float("nan"), 0.0, 1.0]]), ValueError, "z contains NaN"),
])
def test_non_finite_ode_input_is_named(score, z, error, match):
    with pytest.raises(error, match=match):
        samplers.ode_sample(score, SDE, None, 2, z=z, shape=SHAPE, seed=0)


def test_bad_milstein_correction():
    with pytest.raises(ValueError, match="correction"):
        samplers.milstein_sample(gaussian_score(), SDE, None, 2, 3, correction="x", shape=SHAPE, seed=0)


def test_pc_uses_the_tutorials_float64_grid_and_em_its_float32_grid(seed):
    """The tutorial's pc_sampler makes its grid with np.linspace (float64), its EM sampler with
    torch.linspace (float32); the model sees float32 times either way."""
    std = schedule.Schedule(SDE, None)
    em = tutorial_plan(std, 500, 1, seed, "euler_maruyama", False)
    pc = tutorial_plan(std, 500, 1, seed, "euler_maruyama", True)
    grid32, grid64 = torch.linspace(1.0, 1e-3, 500), np.linspace(1.0, 1e-3, 500)
    assert torch.equal(em.t[:, 0], grid32) and torch.equal(pc.t[:, 0], torch.from_numpy(grid64).float())
    # g at the times the model sees; dt from the grid's own dtype.
    for plan, dt in ((em, float(grid32[0] - grid32[1])), (pc, grid64[0] - grid64[1])):
        g = SDE.diffusion_coeff(plan.t[:, 0].double())
        torch.testing.assert_close(plan.a[:, 0], (g**2 * dt).float(), rtol=0, atol=0)


# --------------------------------------------------------------------------- noise-level grids and the final denoise
@pytest.mark.parametrize("name", ["em", "pc"])
def test_sde_samplers_on_a_karras_grid_reproduce_the_mixture(name, seed):
    """100 steps on the Karras grid, then the Tweedie denoise: the mixture's weights and variances."""
    fn = {"em": samplers.em_sample, "pc": samplers.pc_sample}[name]
    x = fn(MIXTURE, SDE, None, N_SAMPLES, 100, schedule="karras", denoise=True, shape=(2,), seed=seed)
    MIXTURE.check_samples(x, what=f"{name} on the Karras grid (seed {seed})")


def test_the_final_denoise_is_tweedies_formula_at_the_last_time(seed):
    """denoise=True adds x + std(t_end)**2 s(x, t_end) to the same noise path, t_end = std's inverse
    at the grid's last level; an explicit sigmas grid is the same as the schedule it lists."""
    score = gaussian_score()
    levels = scoreops.sigma_grid(SDE, 6, schedule="log_sigma", denoise=False)
    plain = samplers.em_sample(score, SDE, None, 4, 6, schedule="log_sigma", shape=SHAPE, seed=seed)
    listed = samplers.em_sample(score, SDE, None, 4, sigmas=levels, shape=SHAPE, seed=seed)
    assert torch.equal(plain, listed)
    got = samplers.em_sample(score, SDE, None, 4, 6, schedule="log_sigma", denoise=True, shape=SHAPE, seed=seed)
    t_end = SDE.time_of_std(levels[-1:]).float().expand(4)
    want = plain + float(levels[-1]) ** 2 * score(plain, t_end)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_noise_level_grids_of_the_sde_samplers_are_checked():
    with pytest.raises(ValueError, match="positive"):
        samplers.em_sample(gaussian_score(), SDE, None, 2, sigmas=[9.0, 1.0, 0.0], shape=SHAPE, seed=0)
    with pytest.raises(ValueError, match="strictly decreasing"):
        samplers.pc_sample(gaussian_score(), SDE, None, 2, sigmas=[9.0, 9.0, 1.0], shape=SHAPE, seed=0)
    with pytest.raises(ValueError, match="schedule"):
        samplers.milstein_sample(gaussian_score(), SDE, None, 2, 3, schedule="linear", shape=SHAPE, seed=0)


def test_compiled_models_are_made_once_per_model_and_mode(monkeypatch):
    made = []
    monkeypatch.setattr(torch, "compile", lambda model, mode=None: made.append((model, mode)) or ("compiled", mode))
    model, other = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    assert samplers.inputs.compiled(model, False) is model
    assert samplers.inputs.compiled(model, True) == ("compiled", None)
    assert samplers.inputs.compiled(model, "default") == ("compiled", None)
    assert samplers.inputs.compiled(model, "max-autotune-no-cudagraphs") == ("compiled", "max-autotune-no-cudagraphs")
    samplers.inputs.compiled(other, True)
    assert made == [(model, None), (model, "max-autotune-no-cudagraphs"), (other, None)]
    assert "_scoreops_compiled" not in dict(model.named_modules()) and len(model.state_dict()) == 2
    with pytest.raises(ValueError, match="compile must be True, False or one of"):
        samplers.inputs.compiled(model, "fast")


@pytest.mark.parametrize("name", ["em_sample", "pc_sample", "ode_sample", "heun_sample", "dpmpp_2m_sde_sample",
                                  "adaptive_sde_sample"])
def test_samplers_sample_with_the_compiled_model(name, monkeypatch, seed):
    """compile=True hands the score model to torch.compile (stubbed: it records the model and
    counts the wrapper's calls) and samples with what it returns."""
    mixture = GaussianMixture2D()
    seen = []

    class Compiled(torch.nn.Module):
        calls = 0

        def forward(self, x, t):
            Compiled.calls += 1
            return mixture.score(x, t)

    monkeypatch.setattr(torch, "compile", lambda model, mode=None: seen.append(model) or Compiled())
    model = torch.nn.Module()  # a module, so compiled() keeps its compiled form
    model.forward = lambda x, t: mixture.score(x, t)
    fn = getattr(scoreops, name)
    steps = {"ode_sample": (), "adaptive_sde_sample": ()}.get(name, (8,))
    kw = dict(shape=(2,), seed=seed & 0xFFFF, device="cpu")
    args = (model, VESDE(25.0), None, 16, *steps)
    if name == "adaptive_sde_sample":
        kw["rtol"] = 0.1
    got = fn(*args, compile=True, **kw)
    assert seen == [model] and Compiled.calls > 0
    torch.testing.assert_close(got, fn(*args, **kw))
    fn(*args, compile=True, **kw)
    assert seen == [model], "the compiled model must be reused, not compiled again"
