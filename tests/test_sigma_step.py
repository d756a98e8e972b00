"""sigma_step, the few-step samplers' fused update ``a*x + sum_k b_k*terms[k] + e*z``, on every
backend: against a float64 reference written from the formula with the stream's normals, on odd
shapes, dtypes and strides; its noise against sde_step's; batch invariance; opcheck; torch.compile;
gradients; and bad input."""
import importlib
import math

import pytest
import torch
from conftest import ALL_BACKENDS, KERNEL_BACKENDS, skip_unless_runnable

from scoreops import ops
from scoreops.core.checks import MAX_TERMS, as_counter
from scoreops.ops import torch_ops

SHAPES = [(1,), (3, 5), (2, 3, 7, 9), (5, 1027)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# A float32 sum of at most 10 products of O(1) values, rounded once to the output dtype: half an
# output ulp, and in float32 a few ulp of the sum and of the noise transform (log/sin/cos differ
# by an ulp between libraries).
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5),
       torch.float16: dict(rtol=2e-3, atol=1e-3),
       torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2)}


def _ids(v):
    return str(v).replace("torch.", "")


def _coefs(k: int, device) -> torch.Tensor:
    """(a, b_0, ..., b_{k-1}, e) of either sign, scaled so that the sum stays O(1)."""
    return (2 * torch.rand(k + 2, device=device) - 1) / math.sqrt(k + 2)


def _reference(x, terms, coefs, seed, step, lane, offset, add_noise) -> torch.Tensor:
    """The formula in float64 on the CPU, z the stream's normals (philox_normal)."""
    batch = x.shape[0]
    c = coefs.cpu().double()
    out = c[0] * x.cpu().double().reshape(batch, -1)
    for k, t in enumerate(terms):
        out = out + c[1 + k] * t.cpu().double().reshape(batch, -1)
    if add_noise:
        z = ops.philox_normal(batch, out.shape[1], seed=seed, step=step, lane=lane, sample_offset=offset,
                              backend="torch")
        out = out + c[-1] * z.double()
    return out.reshape(x.shape)


def _counters(seed: int, step: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    device = torch.device(device)
    return as_counter("seed", seed, device), as_counter("step", step, device)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("k", [0, 1, 3, 7])
def test_sigma_step_matches_the_formula(backend, device, shape, dtype, k, seed):
    skip_unless_runnable(backend, device)
    x = torch.randn(shape, device=device).to(dtype)
    terms = [torch.randn(shape, device=device).to(dtype) for _ in range(k)]
    coefs = _coefs(k, device)
    step, lane, offset = int(torch.randint(0, 1000, ())), int(torch.randint(0, 3, ())), 3
    for add_noise in (True, False):
        got = ops.sigma_step(x, terms, coefs, seed=seed, step=step, lane=lane, sample_offset=offset,
                             add_noise=add_noise, backend=backend)
        assert got.shape == x.shape and got.dtype == dtype and got.device == x.device and got.is_contiguous()
        want = _reference(x, terms, coefs, seed, step, lane, offset, add_noise)
        torch.testing.assert_close(got.cpu().double(), want, **TOL[dtype])
    # Without noise every backend rounds each product and sum in float32 in the same order, so
    # it agrees with the torch reference to the bit (e is ignored then, even a NaN).
    coefs[-1] = float("nan")
    got = ops.sigma_step(x, terms, coefs, seed=seed, step=step, backend=backend)
    want = torch_ops.sigma_step(x.cpu(), [t.cpu() for t in terms], coefs.cpu(), *_counters(seed, step, "cpu"), 0, 0,
                                False)
    assert torch.equal(got.cpu(), want)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=_ids)
def test_sigma_step_on_non_contiguous_views(backend, device, dtype, seed):
    skip_unless_runnable(backend, device)
    base = torch.randn(6, 3, 17, 19, device=device).to(dtype)
    x = base[::2].transpose(2, 3)  # strided and permuted
    terms = [torch.randn(19, 17, 3, 3, device=device).to(dtype).permute(3, 2, 0, 1),
             torch.randn(3, 3, 19, 34, device=device).to(dtype)[..., ::2],
             x.clone()]
    coefs = _coefs(3, device)
    assert not x.is_contiguous() and not any(t.is_contiguous() for t in terms[:2])
    got = ops.sigma_step(x, terms, coefs, seed=seed, step=4, lane=1, sample_offset=2, add_noise=True,
                         backend=backend)
    assert got.is_contiguous() and got.shape == x.shape
    torch.testing.assert_close(got.cpu().double(), _reference(x, terms, coefs, seed, 4, 1, 2, True), **TOL[dtype])
    # A strided coefficient tensor is read in its logical order.
    strided = torch.stack([coefs, torch.full_like(coefs, float("nan"))], 1)[:, 0]
    assert not strided.is_contiguous()
    assert torch.equal(ops.sigma_step(x, terms, strided, seed=seed, step=4, lane=1, sample_offset=2, add_noise=True,
                                      backend=backend), got)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_noise_is_what_sde_step_draws_with_the_same_key(backend, device, seed):
    """``1*x + e*z`` and sde_step's ``x + 0*0 + e*z + 0*(z*z - 1)`` round alike in float32."""
    skip_unless_runnable(backend, device)
    x = torch.randn(4, 3, 11, device=device)
    e = float(torch.rand(())) + 0.5
    coefs = torch.tensor([1.0, e], device=device)
    key = dict(seed=seed, step=17, lane=2, sample_offset=9, backend=backend)
    got = ops.sigma_step(x, [], coefs, add_noise=True, **key)
    want = ops.sde_step(x, torch.zeros_like(x), 0.0, e, 0.0, add_noise=True, **key)
    assert torch.equal(got, want)
    assert not torch.equal(got, x)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
@pytest.mark.parametrize("add_noise", [True, False])
def test_a_samples_update_does_not_depend_on_its_batch(backend, device, add_noise, seed):
    """Sample i of a batch at sample_offset o is the same as the one-sample batch at o + i."""
    skip_unless_runnable(backend, device)
    x = torch.randn(5, 2, 33, device=device)
    terms = [torch.randn_like(x) for _ in range(2)]
    coefs = _coefs(2, device)
    key = dict(seed=seed, step=3, lane=0, add_noise=add_noise, backend=backend)
    full = ops.sigma_step(x, terms, coefs, sample_offset=10, **key)
    for lo, hi in ((0, 1), (2, 5), (4, 5)):
        part = ops.sigma_step(x[lo:hi], [t[lo:hi] for t in terms], coefs, sample_offset=10 + lo, **key)
        assert torch.equal(part, full[lo:hi]), (lo, hi)
    if add_noise:  # and the offset does matter: another sample's noise
        assert not torch.equal(ops.sigma_step(x[2:3], [t[2:3] for t in terms], coefs, sample_offset=10, **key),
                               full[2:3])


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_the_most_terms_and_empty_inputs(backend, device, seed):
    skip_unless_runnable(backend, device)
    x = torch.randn(3, 10, device=device)
    terms = [torch.randn_like(x) for _ in range(MAX_TERMS)]
    coefs = _coefs(MAX_TERMS, device)
    got = ops.sigma_step(x, terms, coefs, seed=seed, step=1, add_noise=True, backend=backend)
    torch.testing.assert_close(got.cpu().double(), _reference(x, terms, coefs, seed, 1, 0, 0, True), **TOL[x.dtype])
    empty = torch.empty(0, 3, device=device)
    out = ops.sigma_step(empty, [empty], _coefs(1, device), seed=seed, add_noise=True, backend=backend)
    assert out.shape == empty.shape and out.device == empty.device


@pytest.mark.parametrize("device", [pytest.param("cpu", id="triton-interp"),
                                    pytest.param("cuda", id="triton-cuda", marks=pytest.mark.cuda)])
def test_triton_tiles_crossing_samples_and_partial_groups(device, seed, monkeypatch):
    # 4 (sample, group) pairs per program: tiles hold the end of one sample, with its partial
    # group (37 = 4 * 9 + 1 elements), and the start of the next.
    skip_unless_runnable("triton", device)
    ops.resolve_backend("triton", device)
    monkeypatch.setattr(importlib.import_module("scoreops.kernels.sigma_step"), "BLOCK_PAIRS", 4)
    x = torch.randn(3, 37, device=device)
    terms = [torch.randn_like(x) for _ in range(3)]
    coefs = _coefs(3, device)
    got = torch.ops.scoreops.triton_sigma_step(x, terms, coefs, *_counters(seed, 5, device), 1, 7, True)
    torch.testing.assert_close(got.cpu().double(), _reference(x, terms, coefs, seed, 5, 1, 7, True),
                               **TOL[torch.float32])


# --------------------------------------------------------------------------- opcheck and compile
@pytest.mark.parametrize("backend,device", KERNEL_BACKENDS)
@pytest.mark.parametrize("add_noise", [True, False])
@pytest.mark.parametrize("k", [0, 3])
def test_opcheck(backend, device, add_noise, k):
    skip_unless_runnable(backend, device)
    ops.resolve_backend(backend, device)  # loads the library that registers the op
    x = torch.randn(3, 2, 5, 5, device=device)
    args = (x, [torch.randn_like(x) for _ in range(k)], _coefs(k, device), *_counters(12345, 3, device), 1, 2,
            add_noise)
    torch.library.opcheck(ops.implementation("sigma_step", backend).default, args)


@pytest.mark.parametrize("backend,device", KERNEL_BACKENDS)
def test_sigma_steps_under_torch_compile_fullgraph(backend, device, seed):
    skip_unless_runnable(backend, device)
    step_op = ops.implementation("sigma_step", ops.resolve_backend(backend, device))
    x = torch.randn(4, 37, device=device)
    d = torch.randn_like(x)
    c1, c2 = _coefs(1, device), _coefs(2, device)
    seed_t, step_t = _counters(seed, 2, device)

    def two_steps(x, d):
        y = step_op(x, [d], c1, seed_t, step_t, 0, 0, True)
        return step_op(y, [d, x], c2, seed_t, step_t, 1, 0, False) * 2

    compiled = torch.compile(two_steps, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, d), two_steps(x, d))


# --------------------------------------------------------------------------- gradients
def _grads(fn, x, terms, coefs, weight):
    """d sum(weight * fn(x, terms, coefs)) / d (x, *terms, coefs), by autograd."""
    leaves = [t.detach().clone().requires_grad_() for t in (x, *terms, coefs)]
    out = fn(leaves[0], leaves[1:-1], leaves[-1])
    return torch.autograd.grad((out * weight).sum(), leaves)


@pytest.mark.parametrize("backend,device", KERNEL_BACKENDS)
@pytest.mark.parametrize("add_noise", [True, False])
@pytest.mark.parametrize("k", [0, 3])
def test_gradients_match_autograd_through_the_reference(backend, device, add_noise, k, seed):
    """The registered gradients against torch's autograd through the torch reference (the same
    linear maths; the backward pass makes z again, to a few ulp of the reference's)."""
    skip_unless_runnable(backend, device)
    x = torch.randn(3, 37, device=device)
    terms = [torch.randn_like(x) for _ in range(k)]
    coefs = _coefs(k, device)
    weight = torch.randn_like(x)

    def step(name):
        return lambda x, terms, coefs: ops.sigma_step(x, terms, coefs, seed=seed, step=2, lane=1, sample_offset=5,
                                                      add_noise=add_noise, backend=name)
    got = _grads(step(backend), x, terms, coefs, weight)
    want = _grads(step("torch"), x, terms, coefs, weight)
    names = ["x", *(f"terms[{j}]" for j in range(k)), "coefs"]
    for name, g, w in zip(names, got, want, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-4, msg=lambda m, name=name: f"d/d{name}: {m}")
    # The formula itself: d/dx = a * weight, d/de = sum(weight * z) or 0.
    torch.testing.assert_close(got[0].double(), (coefs[0] * weight).double(), rtol=1e-6, atol=1e-6)
    z = ops.philox_normal(3, 37, seed=seed, step=2, lane=1, sample_offset=5, backend="torch").to(device)
    want_e = (weight.double() * z.double()).sum() if add_noise else torch.zeros((), dtype=torch.float64)
    torch.testing.assert_close(got[-1][-1].double().cpu(), want_e.cpu(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend,device", KERNEL_BACKENDS)
def test_half_precision_gradients_keep_the_inputs_dtypes(backend, device, seed):
    skip_unless_runnable(backend, device)
    for dtype in (torch.float16, torch.bfloat16):
        x = torch.randn(2, 9, device=device).to(dtype)
        terms = [torch.randn_like(x)]
        coefs = _coefs(1, device)
        weight = torch.randn(2, 9, device=device).to(dtype)
        fn = [lambda x, t, c, name=name: ops.sigma_step(x, t, c, seed=seed, add_noise=True, backend=name)
              for name in (backend, "torch")]
        for g, w in zip(_grads(fn[0], x, terms, coefs, weight), _grads(fn[1], x, terms, coefs, weight), strict=True):
            assert g.dtype == w.dtype
            torch.testing.assert_close(g, w, **({} if g.dtype == torch.float32 else TOL[dtype]))


# --------------------------------------------------------------------------- bad input
def _bad_calls(device):
    """(what the message must say, exception type, x, terms, coefs) of the inputs every layer refuses."""
    x = torch.randn(4, 3, device=device)
    t = torch.randn_like(x)
    c = _coefs(2, device)
    return [
        (r"coefs must have shape \(4,\)", ValueError, x, [t, t], c[:3]),
        (r"coefs must have shape \(4,\)", ValueError, x, [t, t], c.reshape(2, 2)),
        (r"coefs must be (a )?float32", TypeError, x, [t, t], c.double()),
        (r"coefs must be (a )?float32", TypeError, x, [t, t], c.half()),
        (f"at most {MAX_TERMS} terms", ValueError, x, [t] * (MAX_TERMS + 1), _coefs(MAX_TERMS + 1, device)),
        (r"terms\[1\] has shape", ValueError, x, [t, torch.randn(4, 2, device=device)], c),
        (r"terms\[1\] has shape", ValueError, x, [t, t.reshape(3, 4)], c),
        (r"terms\[0\] has dtype", TypeError, x, [t.half(), t], c),
        # The dispatch layer names the dtypes it takes, the C++ op the one of x.
        (r"terms\[1\] (must be float32|has dtype)", TypeError, x, [t, t.double()], c),
        (r"x must be float32", TypeError, x.double(), [t.double(), t.double()], c),
        (r"x must have a leading batch dimension", ValueError, x[0, 0], [t[0, 0], t[0, 0]], c),
    ]


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_bad_inputs_get_clear_errors(backend, device):
    skip_unless_runnable(backend, device)
    for match, error, x, terms, coefs in _bad_calls(device):
        with pytest.raises(error, match=match):
            ops.sigma_step(x, terms, coefs, seed=1, backend=backend)
    x = torch.randn(4, 3, device=device)
    with pytest.raises(ValueError, match="coefs is on meta but x is on"):
        ops.sigma_step(x, [], torch.ones(2, device="meta"), seed=1, backend=backend)
    with pytest.raises(TypeError, match="coefs must be a float32 tensor"):
        ops.sigma_step(x, [], [1.0, 0.0], seed=1, backend=backend)


@pytest.mark.parametrize("backend,device", KERNEL_BACKENDS)
def test_registered_ops_check_their_inputs_too(backend, device):
    """The raw ops are public (torch.ops.scoreops.*), so they refuse bad input themselves."""
    skip_unless_runnable(backend, device)
    ops.resolve_backend(backend, device)
    op = ops.implementation("sigma_step", backend)
    seed_t, step_t = _counters(1, 0, device)
    for match, error, x, terms, coefs in _bad_calls(device):
        with pytest.raises(error, match=match):
            op(x, terms, coefs, seed_t, step_t, 0, 0, True)
    x = torch.randn(4, 3, device=device)
    # A meta coefs sends an eager call of the C++ op to its fake kernel, which refuses it too.
    with pytest.raises(ValueError, match="coefs is on meta|one device"):
        op(x, [], torch.ones(2, device="meta"), seed_t, step_t, 0, 0, True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_coefs_on_another_device_are_refused(backend):
    x = torch.randn(4, 3, device="cuda")
    with pytest.raises(ValueError, match="coefs is on cpu but x is on cuda"):
        ops.sigma_step(x, [x], torch.ones(3), seed=1, backend=backend)
    with pytest.raises(ValueError, match="coefs is on cpu but x is on cuda"):
        ops.implementation("sigma_step", backend)(x, [x], torch.ones(3), *_counters(1, 0, "cuda"), 0, 0, True)
