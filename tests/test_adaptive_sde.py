"""The adaptive SDE solver (Jolicoeur-Martineau et al. 2021): its fused second stage,
adaptive_sde_step, on every backend against a float64 reference written from the formula (odd
shapes, dtypes, strides, coefficient layouts), its noise against sde_step's, batch invariance,
opcheck and torch.compile; and adaptive_sde_sample on the Gaussian mixture, its batch invariance,
its NFE accounting and its errors."""
import math

import pytest
import torch
from conftest import ALL_BACKENDS, KERNEL_BACKENDS, skip_unless_runnable
from mixture import GaussianMixture2D

import scoreops
from scoreops import ops
from scoreops.core.checks import as_counter
from scoreops.sde import VESDE

SHAPES = [(1,), (3, 5), (2, 3, 7, 9), (5, 1027)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# x_high: a float32 sum of a few O(1) products rounded once to the output dtype (half an output
# ulp), and in float32 a few ulp of the noise transform.
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5),
       torch.float16: dict(rtol=2e-3, atol=1e-3),
       torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2)}
# err: the same inputs in every dtype, so only float32 rounding of x_high (relative 1e-7 of |x|,
# over delta >= rtol |x|) and of the sums.
ERR_TOL = dict(rtol=1e-4, atol=1e-5)
ATOL, RTOL = 0.01, 0.05
SDE = VESDE(25.0)


def _ids(v):
    return str(v).replace("torch.", "")


def _coef(layout: str, x: torch.Tensor):
    """A positive coefficient of the given layout (float, (B,), (B, 1, ...), or x's shape)."""
    if layout == "scalar":
        return float(torch.rand(())) + 0.1
    if layout == "per_sample":
        return torch.rand(x.shape[0], device=x.device) + 0.1
    if layout == "per_sample_view":
        return torch.rand(x.shape[0], *([1] * (x.dim() - 1)), device=x.device) + 0.1
    return torch.rand(x.shape, device=x.device) + 0.1


def _per_element(c, x) -> torch.Tensor:
    """A coefficient as float64 (B, D) on the CPU."""
    batch = x.shape[0]
    c = torch.as_tensor(c, dtype=torch.float64).cpu()
    if c.shape == x.shape:
        return c.reshape(batch, -1)
    return c.reshape(-1, 1).expand(batch, x[0].numel())


def _reference(x, x_low, x_prev, s, a, b, seed, step, lane, offset, atol, rtol):
    """The formula in float64 on the CPU, z the stream's normals (philox_normal)."""
    batch = x.shape[0]
    x2, low, prev, s2 = (t.cpu().double().reshape(batch, -1) for t in (x, x_low, x_prev, s))
    z = ops.philox_normal(batch, x2.shape[1], seed=seed, step=step, lane=lane, sample_offset=offset,
                          backend="torch").double()
    high = (x2 + low) / 2 + (_per_element(a, x) * s2 + _per_element(b, x) * z) / 2
    delta = torch.clamp_min(rtol * torch.maximum(low.abs(), prev.abs()), atol)
    err = (((low - high) / delta) ** 2).mean(dim=1).sqrt()
    return high.reshape(x.shape), err


def _inputs(shape, dtype, device):
    x = torch.randn(shape, device=device).to(dtype)
    return x, (x + 0.1 * torch.randn_like(x, dtype=torch.float32).to(dtype)), torch.randn_like(x), torch.randn_like(x)


# --------------------------------------------------------------------------- the op
@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
def test_op_matches_the_formula(backend, device, shape, dtype, seed):
    skip_unless_runnable(backend, device)
    x, x_low, x_prev, s = _inputs(shape, dtype, device)
    layouts = ["scalar", "per_sample", "per_sample_view", "per_element"]
    a, b = (_coef(layouts[int(torch.randint(0, 4, ()))], x) for _ in range(2))
    step, lane, offset = int(torch.randint(0, 1000, ())), int(torch.randint(0, 3, ())), 3
    high, err = ops.adaptive_sde_step(x, x_low, x_prev, s, a, b, seed=seed, step=step, lane=lane, sample_offset=offset,
                                      atol=ATOL, rtol=RTOL, backend=backend)
    assert high.shape == x.shape and high.dtype == dtype and high.device == x.device and high.is_contiguous()
    assert err.shape == (shape[0],) and err.dtype == torch.float32 and err.device == x.device
    want_high, want_err = _reference(x, x_low, x_prev, s, a, b, seed, step, lane, offset, ATOL, RTOL)
    torch.testing.assert_close(high.cpu().double(), want_high, **TOL[dtype])
    torch.testing.assert_close(err.cpu().double(), want_err, **ERR_TOL)
    assert (want_err > 0).all()  # not a trivial comparison of zeros (a random error is 0 with probability 0)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=_ids)
def test_op_on_non_contiguous_views(backend, device, dtype, seed):
    skip_unless_runnable(backend, device)
    base = torch.randn(6, 3, 17, 19, device=device).to(dtype)
    x = base[::2].transpose(2, 3)
    x_low = torch.randn(19, 17, 3, 3, device=device).to(dtype).permute(3, 2, 0, 1)
    x_prev = torch.randn(3, 3, 19, 34, device=device).to(dtype)[..., ::2]
    s = x.clone()
    a = torch.rand(3, 2, device=device)[:, 0]
    b = torch.rand(x.shape, device=device).transpose(1, 2).contiguous().transpose(1, 2)
    assert not any(t.is_contiguous() for t in (x, x_low, x_prev, a, b))
    high, err = ops.adaptive_sde_step(x, x_low, x_prev, s, a, b, seed=seed, step=4, lane=1, sample_offset=2,
                                      atol=ATOL, rtol=RTOL, backend=backend)
    want_high, want_err = _reference(x, x_low, x_prev, s, a, b, seed, 4, 1, 2, ATOL, RTOL)
    torch.testing.assert_close(high.cpu().double(), want_high, **TOL[dtype])
    torch.testing.assert_close(err.cpu().double(), want_err, **ERR_TOL)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_the_noise_is_the_first_stages(backend, device, seed):
    """With x = x_low = s = 0 and b = 2, x_high is z itself: sde_step's z with the same key, to the bit."""
    skip_unless_runnable(backend, device)
    zeros = torch.zeros(4, 3, 11, device=device)
    key = dict(seed=seed, step=17, lane=2, sample_offset=9, backend=backend)
    z = ops.sde_step(zeros, zeros, 0.0, 1.0, 0.0, **key)
    high, err = ops.adaptive_sde_step(zeros, zeros, zeros, zeros, 0.0, 2.0, atol=1.0, rtol=RTOL, **key)
    assert torch.equal(high, z)
    torch.testing.assert_close(err, (z * z).reshape(4, -1).mean(1).sqrt())  # x_low - x_high = -z, delta = atol = 1


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_a_samples_result_does_not_depend_on_its_batch(backend, device, seed):
    skip_unless_runnable(backend, device)
    x, x_low, x_prev, s = _inputs((5, 2, 33), torch.float32, device)
    a, b = torch.rand(5, device=device), torch.rand(5, device=device)
    key = dict(seed=seed, step=3, lane=0, atol=ATOL, rtol=RTOL, backend=backend)
    full = ops.adaptive_sde_step(x, x_low, x_prev, s, a, b, sample_offset=10, **key)
    for lo, hi in ((0, 1), (2, 5), (4, 5)):
        part = ops.adaptive_sde_step(x[lo:hi], x_low[lo:hi], x_prev[lo:hi], s[lo:hi], a[lo:hi], b[lo:hi],
                                     sample_offset=10 + lo, **key)
        assert torch.equal(part[0], full[0][lo:hi]) and torch.equal(part[1], full[1][lo:hi]), (lo, hi)
    other = ops.adaptive_sde_step(x[2:3], x_low[2:3], x_prev[2:3], s[2:3], a[2:3], b[2:3], sample_offset=10, **key)
    assert not torch.equal(other[0], full[0][2:3])  # the offset does matter: another sample's noise


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_nan_and_empty_inputs(backend, device, seed):
    skip_unless_runnable(backend, device)
    x, x_low, x_prev, s = _inputs((3, 10), torch.float32, device)
    x_prev[1, 4] = float("nan")
    _, err = ops.adaptive_sde_step(x, x_low, x_prev, s, 0.5, 0.5, seed=seed, step=0, atol=ATOL, rtol=RTOL,
                                   backend=backend)
    assert torch.isnan(err[1]) and torch.isfinite(err[[0, 2]]).all()
    for shape in ((0, 3), (2, 0)):
        empty = torch.empty(shape, device=device)
        high, err = ops.adaptive_sde_step(empty, empty, empty, empty, 0.5, 0.5, seed=seed, step=0, atol=ATOL,
                                          rtol=RTOL, backend=backend)
        assert high.shape == shape and err.shape == (shape[0],) and (err == 0).all()


@pytest.mark.parametrize("backend,device", KERNEL_BACKENDS)
def test_opcheck(backend, device):
    skip_unless_runnable(backend, device)
    ops.resolve_backend(backend, device)  # loads the library that registers the op
    x, x_low, x_prev, s = _inputs((3, 2, 5, 5), torch.float32, device)
    counters = (as_counter("seed", 12345, torch.device(device)), as_counter("step", 3, torch.device(device)))
    for a in (torch.rand(3, device=device), torch.rand(x.shape, device=device)):
        args = (x, x_low, x_prev, s, a, torch.rand(1, device=device), *counters, 1, 2, ATOL, RTOL)
        torch.library.opcheck(ops.implementation("adaptive_sde_step", backend).default, args)


@pytest.mark.parametrize("backend,device", KERNEL_BACKENDS)
def test_under_torch_compile_fullgraph(backend, device, seed):
    skip_unless_runnable(backend, device)
    impl = ops.resolve_backend(backend, device)
    step_op, sde_op = ops.implementation("adaptive_sde_step", impl), ops.implementation("sde_step", impl)
    x = torch.randn(4, 37, device=device)
    s = torch.randn_like(x)
    a, b, zero = torch.rand(4, device=device), torch.rand(4, device=device), torch.zeros(1, device=device)
    seed_t, step_t = as_counter("seed", seed, x.device), as_counter("step", 2, x.device)

    def attempt(x, s):
        x_low = sde_op(x, s, a, b, zero, seed_t, step_t, 0, 0, True)
        high, err = step_op(x, x_low, x, s * 0.5, a, b, seed_t, step_t, 0, 0, ATOL, RTOL)
        return torch.where((err <= 1)[:, None], high, x), err

    compiled = torch.compile(attempt, fullgraph=True, backend="aot_eager")
    for got, want in zip(compiled(x, s), attempt(x, s)):
        torch.testing.assert_close(got, want)


def test_op_bad_input():
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match="rtol"):
        ops.adaptive_sde_step(x, x, x, x, 0.1, 0.1, seed=0, step=0, atol=0.0, rtol=0.0)
    with pytest.raises(ValueError, match="atol"):
        ops.adaptive_sde_step(x, x, x, x, 0.1, 0.1, seed=0, step=0, atol=-1.0, rtol=0.1)
    with pytest.raises(ValueError, match="x_prev"):
        ops.adaptive_sde_step(x, x, x[:2], x, 0.1, 0.1, seed=0, step=0, atol=0.0, rtol=0.1)
    with pytest.raises(TypeError, match="x_low"):
        ops.adaptive_sde_step(x, x.double(), x, x, 0.1, 0.1, seed=0, step=0, atol=0.0, rtol=0.1)
    with pytest.raises(ValueError, match="a must be"):
        ops.adaptive_sde_step(x, x, x, x, torch.ones(4), 0.1, seed=0, step=0, atol=0.0, rtol=0.1)
    # The registered C++ op checks its arguments too.
    ops.resolve_backend("cpu", "cpu")
    one, counter = torch.ones(1), torch.zeros(1, dtype=torch.int64)
    with pytest.raises(ValueError, match="rtol"):
        torch.ops.scoreops.adaptive_sde_step(x, x, x, x, one, one, counter, counter, 0, 0, 0.0, -1.0)
    with pytest.raises(ValueError, match="x_low"):
        torch.ops.scoreops.adaptive_sde_step(x, x[:, :2], x, x, one, one, counter, counter, 0, 0, 0.0, 0.1)


# --------------------------------------------------------------------------- the sampler
MIXTURE = GaussianMixture2D(sigma=SDE.sigma)
PAIRS = 256


def mixture_pairs(x, t):
    """The mixture's score on samples of shape (PAIRS, 2): PAIRS independent 2-D points each."""
    return MIXTURE(x.reshape(-1, 2), t.repeat_interleave(x.shape[1])).reshape(x.shape)


def gaussian_score(x, t):
    """Exact noised score of data N(0, 0.5 I): elementwise, so batch-invariant to the bit."""
    var = 0.5 + SDE.marginal_prob_std(t) ** 2
    return (-x / var.reshape(-1, *([1] * (x.dim() - 1)))).to(x.dtype)


@pytest.mark.parametrize("backend,rtol", [("cpu", 0.01), ("torch", 0.05)])
def test_sampler_reproduces_the_mixture(backend, rtol, seed):
    """16 samples of 256 independent mixture points (4096 points, weights to +-0.03 at 4.5
    standard errors): the error is an RMS over 512 dimensions, as over an image's pixels.

    In two dimensions the method is biased: whether an attempt is accepted depends on its z, so
    accepted steps carry selected noise. With one 2-D point per sample (2000 samples, rtol 0.01)
    the weights 0.3 / 0.7 come out near 0.38 / 0.62 and the modes about twice as wide; the
    docstring of adaptive_sde_sample says so.
    """
    result = scoreops.adaptive_sde_sample(mixture_pairs, SDE, batch_size=16, shape=(PAIRS, 2), seed=seed, rtol=rtol,
                                          full_output=True, backend=backend)
    assert result.samples.shape == (16, PAIRS, 2) and result.samples.dtype == torch.float32
    MIXTURE.check_samples(result.samples.reshape(-1, 2), what=f"adaptive_sde (seed {seed})")
    assert 20 < result.nfe < 1000


def test_sampler_is_batch_invariant_and_idle_samples_stay_put(seed):
    """Sample j's result depends only on (seed, sample_offset + j), not on its batch; and samples
    that are done idle unchanged, so checking for the end every attempt or every 8 is the same."""
    kw = dict(shape=(3, 5), seed=seed, rtol=0.05, backend="cpu")
    full = scoreops.adaptive_sde_sample(gaussian_score, SDE, batch_size=5, sample_offset=4, **kw)
    parts = [scoreops.adaptive_sde_sample(gaussian_score, SDE, batch_size=hi - lo, sample_offset=4 + lo, **kw)
             for lo, hi in ((0, 1), (1, 3), (3, 5))]
    assert torch.equal(torch.cat(parts), full)
    assert torch.equal(scoreops.adaptive_sde_sample(gaussian_score, SDE, batch_size=5, sample_offset=4,
                                                    check_every=1, **kw), full)
    x_T = SDE.marginal_prob_std(torch.ones(1)) * torch.randn(5, 3, 5)
    given = scoreops.adaptive_sde_sample(gaussian_score, SDE, x_T=x_T, sample_offset=4, **kw)
    assert given.shape == full.shape and not torch.equal(given, full)


def test_sampler_backends_agree(seed):
    """The torch reference and the C++ kernels give the same samples to float32 rounding, as long
    as no accept decision falls within rounding of E = 1 (not the case for a few samples here)."""
    kw = dict(batch_size=4, shape=(64,), seed=seed, rtol=0.05)
    cpu = scoreops.adaptive_sde_sample(gaussian_score, SDE, backend="cpu", full_output=True, **kw)
    ref = scoreops.adaptive_sde_sample(gaussian_score, SDE, backend="torch", full_output=True, **kw)
    same = (cpu.accepted == ref.accepted) & (cpu.rejected == ref.rejected)
    assert same.sum() >= 3
    torch.testing.assert_close(cpu.samples[same], ref.samples[same], rtol=1e-4, atol=1e-4)


def test_nfe_accounting(seed):
    """The model's calls, counted by a wrapper: 2 per attempt (a multiple of check_every) plus the
    final denoise; per sample 2 per attempt while its t > eps, plus 1."""
    calls = []

    def counting(x, t):
        calls.append(t.clone())
        return gaussian_score(x, t)

    eps = 1e-3
    result = scoreops.adaptive_sde_sample(counting, SDE, batch_size=6, shape=(40,), seed=seed, rtol=0.05, eps=eps,
                                          check_every=4, full_output=True, backend="cpu")
    assert result.nfe == len(calls) == 2 * result.attempts + 1
    assert result.attempts % 4 == 0
    first_stage = torch.stack(calls[:-1:2])  # (attempts, B) times of the Euler-Maruyama stage
    active = (first_stage.double() - eps > 1e-6).sum(0)
    assert torch.equal(active, result.accepted + result.rejected)
    assert result.nfe_per_sample == pytest.approx(float((2 * active + 1).double().mean()))
    assert result.nfe_per_sample <= result.nfe
    assert (calls[-1] == eps).all() and (result.accepted > 0).all()
    # Every sample's accepted steps take it from t = 1 to eps: the times of its accepted
    # attempts' second stages (t - h) decrease to eps.
    second_stage = torch.stack(calls[1:-1:2]).double()
    assert torch.allclose(second_stage.min(0).values, torch.full((6,), eps, dtype=torch.float64), atol=1e-6)


def test_sampler_errors():
    kw = dict(batch_size=2, shape=(3,), seed=0, backend="cpu")
    for bad, match in ((dict(rtol=0.0), "rtol"), (dict(rtol=float("nan")), "rtol"), (dict(atol=-0.1), "atol"),
                       (dict(h_init=0.0), "h_init"), (dict(h_init=1.0), "h_init"), (dict(check_every=0), "check_every"),
                       (dict(max_attempts=0), "max_attempts"), (dict(eps=1.0), "eps"),
                       (dict(full_output="yes"), "full_output"), (dict(backend="gpu"), "backend")):
        with pytest.raises(ValueError, match=match):
            scoreops.adaptive_sde_sample(gaussian_score, SDE, **{**kw, **bad})
    with pytest.raises(ValueError, match="diffusion_coeff"):
        scoreops.adaptive_sde_sample(gaussian_score, SDE.marginal_prob_std, **kw)
    with pytest.raises(RuntimeError, match="max_attempts = 5"):
        scoreops.adaptive_sde_sample(gaussian_score, SDE, max_attempts=5, **kw)
    with pytest.raises(ValueError, match="shape"):
        scoreops.adaptive_sde_sample(lambda x, t: x[:, :2], SDE, **kw)

    def nan_later(x, t):
        return gaussian_score(x, t) * (math.nan if float(t.max()) < 0.9 else 1.0)

    with pytest.raises(RuntimeError, match="NaN or Inf"):
        scoreops.adaptive_sde_sample(nan_later, SDE, **kw)


def test_tutorial_functions_and_progress(seed, capsys):
    """The tutorial's marginal_prob_std / diffusion_coeff pair (diffusion_coeff called on device
    times) gives what the VESDE gives; progress=True draws a bar and changes nothing."""
    kw = dict(batch_size=3, shape=(8,), seed=seed, rtol=0.05, backend="cpu")
    want = scoreops.adaptive_sde_sample(gaussian_score, SDE, **kw)
    got = scoreops.adaptive_sde_sample(gaussian_score, lambda t: SDE.marginal_prob_std(t),
                                       lambda t: torch.tensor(25.0) ** t, progress=True, **kw)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert "adaptive_sde" in capsys.readouterr().err
