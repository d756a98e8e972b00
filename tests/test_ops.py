"""Every fused op on every backend against the plain-torch reference, on fresh random inputs of
odd sizes, dtypes and strides; torch.library.opcheck; torch.compile; and bad input."""
import math

import pytest
import torch
from conftest import ALL_BACKENDS, KERNEL_BACKENDS, skip_unless_runnable

from scoreops import ops
from scoreops.core import checks
from scoreops.core.checks import MAX_RK_STAGES
from scoreops.ops import torch_ops

SHAPES = [(1, 1), (5, 7), (1, 1000), (5, 4097), (5, 3, 32, 32), (2, 1, 28, 28)]
# Tolerances for a float32 computation rounded to the output dtype: one output ulp, and for
# float32 a few ulp of the noise transform (log/sin/cos differ by an ulp between libraries).
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5),
       torch.float16: dict(rtol=2e-3, atol=1e-3),
       torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2)}


def _coef(mode, shape, device):
    if mode == "scalar":
        return torch.rand(1, device=device)
    if mode == "per_sample":
        return torch.rand(shape[0], device=device)
    return torch.rand(shape, device=device)


def _reference_sde_step(x, s, a, b, c, seed, step, lane, offset, add_noise):
    """The update written out from its formula, with z from the reference stream."""
    bsz = x.shape[0]
    x2, s2 = x.float().reshape(bsz, -1).cpu(), s.float().reshape(bsz, -1).cpu()

    def bc(v):
        v = v.float().cpu()
        return v.reshape(1, 1) if v.numel() == 1 else v.reshape(bsz, -1)

    out = x2 + bc(a) * s2
    if add_noise:
        z = ops.philox_normal(bsz, x2.shape[1], seed=seed, step=step, lane=lane, sample_offset=offset,
                              backend="torch")
        out = out + bc(b) * z + bc(c) * (z * z - 1)
    return out.reshape(x.shape).to(x.dtype)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda v: str(v).replace("torch.", ""))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16],
                         ids=lambda v: str(v).replace("torch.", ""))
@pytest.mark.parametrize("coef_mode", ["scalar", "per_sample", "per_element"])
def test_sde_step_matches_reference(backend, device, shape, dtype, coef_mode, seed):
    skip_unless_runnable(backend, device)
    x = torch.randn(shape, device=device).to(dtype)
    s = torch.randn(shape, device=device).to(dtype)
    a, b, c = (_coef(coef_mode, shape, device) for _ in range(3))
    step, lane, offset = int(torch.randint(0, 1000, ())), int(torch.randint(0, 3, ())), 3
    for add_noise in (True, False):
        got = ops.sde_step(x, s, a, b, c, seed=seed, step=step, lane=lane, sample_offset=offset,
                           add_noise=add_noise, backend=backend)
        want = _reference_sde_step(x, s, a, b, c, seed, step, lane, offset, add_noise)
        assert got.shape == x.shape and got.dtype == dtype and got.device == x.device
        torch.testing.assert_close(got.cpu(), want, **TOL[dtype])
    assert torch.equal(got.cpu(), torch_ops.sde_step(x.cpu(), s.cpu(), a.cpu(), b.cpu(), c.cpu(),
                                                     checks.as_counter("seed", seed, torch.device("cpu")),
                                                     torch.tensor([step]), lane, offset, False))


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_sde_step_on_non_contiguous_views_and_in_place(backend, device, seed):
    skip_unless_runnable(backend, device)
    base = torch.randn(6, 3, 17, 19, device=device)
    x = base[::2].transpose(2, 3)  # strided and permuted
    s = torch.randn(19, 17, 3, 3, device=device).permute(3, 2, 0, 1)
    assert not x.is_contiguous() and not s.is_contiguous()
    a, b, c = torch.rand(3, device=device), 0.5, torch.rand(3, device=device)
    want = _reference_sde_step(x, s, ops.as_coef("a", a, x), ops.as_coef("b", b, x), ops.as_coef("c", c, x),
                               seed, 4, 0, 0, True)
    got = ops.sde_step(x, s, a, b, c, seed=seed, step=4, backend=backend)
    torch.testing.assert_close(got.cpu(), want, **TOL[torch.float32])
    before = base.clone()
    returned = ops.sde_step(x, s, a, b, c, seed=seed, step=4, inplace=True, backend=backend)
    assert returned is x
    torch.testing.assert_close(x.cpu(), want, **TOL[torch.float32])
    torch.testing.assert_close(base[1::2], before[1::2], rtol=0, atol=0)  # untouched rows stay


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (5, 4097), (5, 3, 32, 32)],
                         ids=lambda v: str(v).replace("torch.", ""))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16],
                         ids=lambda v: str(v).replace("torch.", ""))
def test_sample_sq_norms_match_reference(backend, device, shape, dtype, seed):
    skip_unless_runnable(backend, device)
    s = (3 * torch.randn(shape, device=device)).to(dtype)
    for with_noise in (False, True):
        got = ops.sample_sq_norms(s, seed=seed, step=9, lane=2, with_noise=with_noise, backend=backend)
        s2 = s.float().reshape(shape[0], -1).cpu().double()
        z = ops.philox_normal(shape[0], s2.shape[1], seed=seed, step=9, lane=2, backend="torch").double()
        want = torch.stack([(s2 * s2).sum(1), (z * z).sum(1) if with_noise else torch.zeros(shape[0])], 1)
        assert got.shape == (shape[0], 2) and got.dtype == torch.float32
        torch.testing.assert_close(got.cpu().double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
@pytest.mark.parametrize("noise_norm", ["fixed", "sampled"])
@pytest.mark.parametrize("per_sample", [False, True])
def test_langevin_correct_matches_the_tutorial_formula(backend, device, noise_norm, per_sample, seed):
    skip_unless_runnable(backend, device)
    x = torch.randn(5, 3, 9, 9, device=device)
    # Per-sample score scales differ (so per_sample matters) but stay away from 0, where eps ~ 1/scale**2
    # makes the two terms large and their sum lose absolute digits.
    s = torch.randn_like(x) * (0.5 + torch.rand(5, 1, 1, 1, device=device))
    snr = 0.16
    got = ops.langevin_correct(x, s, snr, seed=seed, step=7, lane=1, noise_norm=noise_norm,
                               per_sample=per_sample, backend=backend)
    xc, sc = x.cpu().double(), s.cpu().double()
    z = ops.philox_normal(5, 243, seed=seed, step=7, lane=1, backend="torch").double().reshape(x.shape)
    grad_norm = sc.reshape(5, -1).norm(dim=1)
    z_norm = z.reshape(5, -1).norm(dim=1) if noise_norm == "sampled" else torch.full((5,), math.sqrt(243.0))
    if not per_sample:
        grad_norm, z_norm = grad_norm.mean().expand(5), z_norm.mean().expand(5)
    eps = (2 * (snr * z_norm / grad_norm) ** 2).reshape(5, 1, 1, 1)
    want = xc + eps * sc + torch.sqrt(2 * eps) * z
    torch.testing.assert_close(got.cpu().double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
@pytest.mark.parametrize("shape", [(1, 1), (5, 4097), (3, 3, 32, 32)], ids=lambda v: str(v).replace("torch.", ""))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16],
                         ids=lambda v: str(v).replace("torch.", ""))
def test_rk_combine_and_error_norm_match_reference(backend, device, shape, dtype):
    skip_unless_runnable(backend, device)
    y = torch.randn(shape, device=device).to(dtype)
    ks = [torch.randn(shape, device=device).to(dtype) for _ in range(7)]
    coeffs = torch.randn(7).tolist()
    coeffs[3] = 0.0  # Dormand-Prince rows have zeros; they must not change the result
    h = 0.0173
    got = ops.rk_combine(y, ks, coeffs, h, backend=backend)
    want = y.cpu().double() + h * sum(cj * k.cpu().double() for cj, k in zip(coeffs, ks))
    assert got.dtype == dtype and got.shape == y.shape
    torch.testing.assert_close(got.cpu(), want.to(dtype), **TOL[dtype])

    y_new = torch.randn(shape, device=device).to(dtype)
    e = torch.randn(7).tolist()
    atol, rtol = 1e-5, 1e-3
    err = h * sum(ej * k.cpu().double() for ej, k in zip(e, ks))
    scale = atol + rtol * torch.maximum(y.cpu().double().abs(), y_new.cpu().double().abs())
    want_norm = torch.sqrt(((err / scale) ** 2).mean())
    got_norm = ops.rk_error_norm(y, y_new, ks, e, h, atol, rtol, backend=backend)
    assert got_norm.dim() == 0 and got_norm.dtype == torch.float32
    torch.testing.assert_close(got_norm.cpu().double(), want_norm, rtol=1e-4, atol=0)


def _op_cases(device):
    x = torch.randn(3, 2, 5, 5, device=device)
    s = torch.randn_like(x)
    a, b, c = torch.rand(1, device=device), torch.rand(3, device=device), torch.rand(x.shape, device=device)
    seed = torch.tensor([12345], device=device)
    step = torch.tensor([3], device=device)
    ks = [torch.randn_like(x) for _ in range(3)]
    return {
        "philox_bits": (seed, step, 0, 0, 3, 50),
        "philox_normal": (seed, step, 1, 2, 3, 50),
        "sde_step": (x, s, a, b, c, seed, step, 0, 0, True),
        "sde_step_": (x.clone(), s, a, b, c, seed, step, 0, 0, True),
        "sample_sq_norms": (s, seed, step, 1, 0, True),
        "rk_combine": (x, ks, [0.5, 0.0, -1.25], 0.1),
        "rk_error_sq": (x, s, ks, [0.1, 0.2, -0.3], 0.1, 1e-5, 1e-5),
    }


@pytest.mark.parametrize("backend,device", KERNEL_BACKENDS)
@pytest.mark.parametrize("name", list(_op_cases("cpu")))
def test_opcheck(backend, device, name):
    skip_unless_runnable(backend, device)
    ops.resolve_backend(backend, device)  # loads the library that registers the op
    packet = ops.implementation(name, backend)
    torch.library.opcheck(packet.default, _op_cases(device)[name])


@pytest.mark.parametrize("backend,device", KERNEL_BACKENDS)
def test_ops_under_torch_compile_fullgraph(backend, device, seed):
    skip_unless_runnable(backend, device)
    step_op = ops.implementation("sde_step", ops.resolve_backend(backend, device))
    x = torch.randn(4, 37, device=device)
    s = torch.randn_like(x)
    a, b, c = (torch.rand(1, device=device) for _ in range(3))
    seed_t, step_t = torch.tensor([seed], device=device), torch.tensor([2], device=device)

    def two_steps(x, s):
        y = step_op(x, s, a, b, c, seed_t, step_t, 0, 0, True)
        return step_op(y, s, a, b, c, seed_t, step_t, 1, 0, False) * 2

    compiled = torch.compile(two_steps, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, s), two_steps(x, s))


# --------------------------------------------------------------------------- bad input
# --------------------------------------------------------------------------- gradients
def _grads(fn, inputs, weight):
    """d sum(weight * fn(*inputs)) / d inputs, by autograd."""
    inputs = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*inputs)
    return torch.autograd.grad((out * weight).sum(), inputs, allow_unused=True, materialize_grads=True)


@pytest.mark.parametrize("add_noise", [True, False])
@pytest.mark.parametrize("coef_mode", ["scalar", "per_sample", "per_element"])
@pytest.mark.parametrize("backend,device", KERNEL_BACKENDS)
def test_step_gradients_match_autograd_through_the_reference(backend, device, coef_mode, add_noise, seed):
    """The registered gradients of a kernel against torch's autograd through the torch
    reference: the same linear maths, so they agree to float32 rounding (the z of the noise
    terms is made again in the backward pass, to a few ulp of the reference's)."""
    skip_unless_runnable(backend, device)
    x, s = torch.randn(3, 37, device=device), torch.randn(3, 37, device=device)
    a, b, c = (_coef(coef_mode, (3, 37), device) for _ in range(3))
    weight = torch.randn(3, 37, device=device)

    def step(name):
        return lambda *t: ops.sde_step(*t, seed=seed, step=2, lane=1, sample_offset=5, add_noise=add_noise,
                                       backend=name)
    got = _grads(step(backend), (x, s, a, b, c), weight)
    want = _grads(step("torch"), (x, s, a, b, c), weight)
    for name, g, w in zip("xsabc", got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5, msg=lambda m, name=name: f"d/d{name}: {m}")


@pytest.mark.parametrize("backend,device", KERNEL_BACKENDS)
def test_corrector_and_stage_gradients_match_autograd_through_the_reference(backend, device, seed):
    skip_unless_runnable(backend, device)
    x, s = torch.randn(4, 3, 5, device=device), torch.randn(4, 3, 5, device=device)
    k2 = torch.randn(4, 3, 5, device=device)
    weight = torch.randn(4, 3, 5, device=device)
    for fn in (lambda name: lambda x, s: ops.langevin_correct(x, s, 0.16, seed=seed, step=1, noise_norm="sampled",
                                                              backend=name),
               lambda name: lambda x, s: ops.rk_combine(x, [s, k2], [0.3, -1.5], 0.25, backend=name)):
        for g, w in zip(_grads(fn(backend), (x, s), weight), _grads(fn("torch"), (x, s), weight), strict=True):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    got = _grads(lambda s: ops.sample_sq_norms(s, seed=seed, backend=backend), (s,), weight[:, :2, 0])
    want = _grads(lambda s: ops.sample_sq_norms(s, seed=seed, backend="torch"), (s,), weight[:, :2, 0])
    torch.testing.assert_close(got[0], want[0])


@pytest.mark.parametrize("backend,device", KERNEL_BACKENDS)
def test_half_precision_step_gradients(backend, device, seed):
    """In float16/bfloat16 the gradients come back in the inputs' dtype, rounded once from float32."""
    skip_unless_runnable(backend, device)
    for dtype in (torch.float16, torch.bfloat16):
        x, s = (torch.randn(2, 9, device=device).to(dtype) for _ in range(2))
        a = torch.rand(2, device=device)
        weight = torch.randn(2, 9, device=device).to(dtype)
        fn = [lambda *t, name=name: ops.sde_step(*t, 0.5, seed=seed, step=0, backend=name)
              for name in (backend, "torch")]
        for g, w in zip(_grads(fn[0], (x, s, a), weight), _grads(fn[1], (x, s, a), weight), strict=True):
            assert g.dtype == w.dtype
            torch.testing.assert_close(g, w, **({} if g.dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)))


def test_inplace_step_under_autograd_records_a_copy(seed):
    x = torch.randn(3, 4)
    s = torch.randn(3, 4, requires_grad=True)
    out = ops.sde_step(x, s, 0.5, 0.1, seed=seed, step=0, inplace=True, backend="cpu")
    assert out is x
    out.sum().backward()
    torch.testing.assert_close(s.grad, torch.full_like(s, 0.5))


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_one_stage_limit_on_every_backend(backend, device):
    skip_unless_runnable(backend, device)
    y = torch.randn(2, 5, device=device)
    assert len(ops.rk_combine(y, [y] * MAX_RK_STAGES, [0.5] * MAX_RK_STAGES, 0.1, backend=backend)) == 2
    with pytest.raises(ValueError, match=f"at most {MAX_RK_STAGES} Runge-Kutta stages"):
        ops.rk_combine(y, [y] * (MAX_RK_STAGES + 1), [0.5] * (MAX_RK_STAGES + 1), 0.1, backend=backend)
    if backend in ("cpu", "cuda"):  # the registered op checks it too
        with pytest.raises(ValueError, match=f"at most {MAX_RK_STAGES} Runge-Kutta stages"):
            torch.ops.scoreops.rk_combine(y, [y] * (MAX_RK_STAGES + 1), [0.5] * (MAX_RK_STAGES + 1), 0.1)


def test_bad_inputs_get_clear_errors():
    x = torch.randn(4, 3)
    s = torch.randn(4, 3)
    call = dict(seed=1, step=0, backend="torch")
    with pytest.raises(ValueError, match="score has shape"):
        ops.sde_step(x, torch.randn(4, 2), 0.1, 0.1, **call)
    with pytest.raises(TypeError, match="score has dtype"):
        ops.sde_step(x, s.double().float().half(), 0.1, 0.1, **call)
    with pytest.raises(TypeError, match="x must be float32"):
        ops.sde_step(x.long(), s.long(), 0.1, 0.1, **call)
    with pytest.raises(TypeError, match="x must be float32"):
        ops.sde_step(x.to(torch.complex64), s, 0.1, 0.1, **call)
    with pytest.raises(TypeError, match="x must be float32"):
        ops.sde_step(x.double(), s.double(), 0.1, 0.1, **call)
    with pytest.raises(ValueError, match="b must be one value, one per sample"):
        ops.sde_step(x, s, 0.1, torch.rand(5), **call)
    # 4 values, but laid out along x's last dimensions: not one per sample.
    with pytest.raises(ValueError, match=r"a must be .* got shape \(1, 2, 2\)"):
        ops.sde_step(torch.randn(4, 2, 2), torch.randn(4, 2, 2), torch.rand(1, 2, 2), 0.1, **call)
    with pytest.raises(TypeError, match="a must be a real floating"):
        ops.sde_step(x, s, torch.ones(4, dtype=torch.int64), 0.1, **call)
    with pytest.raises(TypeError, match="seed must be an int"):
        ops.sde_step(x, s, 0.1, 0.1, seed=1.5, step=0, backend="torch")
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.sde_step(x, s, 0.1, 0.1, seed=1, step=0, backend="gpu")
    with pytest.raises(RuntimeError, match="backend='cuda' is not available"):
        ops.sde_step(x, s, 0.1, 0.1, seed=1, step=0, backend="cuda")
    with pytest.raises(ValueError, match="noise_norm"):
        ops.langevin_correct(x, s, 0.16, seed=1, step=0, noise_norm="norm", backend="torch")
    with pytest.raises(ValueError, match="snr"):
        ops.langevin_correct(x, s, -0.1, seed=1, step=0, backend="torch")
    with pytest.raises(ValueError, match="one coefficient per stage"):
        ops.rk_combine(x, [s, s], [1.0], 0.1, backend="torch")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_device_mismatch_is_refused():
    x = torch.randn(4, 3, device="cuda")
    with pytest.raises(ValueError, match="score is on cpu"):
        ops.sde_step(x, torch.randn(4, 3), 0.1, 0.1, seed=1, step=0)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_empty_inputs_return_at_once(backend, device):
    skip_unless_runnable(backend, device)
    x = torch.empty(0, 3, 4, device=device)
    out = ops.sde_step(x, x.clone(), 0.1, 0.2, 0.3, seed=1, step=0, backend=backend)
    assert out.shape == x.shape
    assert ops.sample_sq_norms(torch.empty(3, 0, device=device), backend=backend).abs().sum() == 0


@pytest.mark.parametrize("backend,device", KERNEL_BACKENDS)
def test_in_place_step_refuses_a_partially_overlapping_score(backend, device):
    skip_unless_runnable(backend, device)
    buf = torch.randn(129, device=device)
    x, s = buf[:128].view(2, 64), buf[1:].view(2, 64)  # contiguous, shifted by one element
    # ATen's message (cpu, cuda) or the Triton wrapper's.
    with pytest.raises(RuntimeError, match="refer to a single memory location|partly overlaps"):
        ops.sde_step(x, s, 0.1, 0.2, seed=1, step=0, inplace=True, backend=backend)
    x = torch.randn(3, 8, device=device)
    want = ops.sde_step(x, x, 0.1, 0.2, seed=1, step=0, backend=backend)
    torch.testing.assert_close(ops.sde_step(x, x, 0.1, 0.2, seed=1, step=0, inplace=True, backend=backend), want)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_per_sample_coefficients_as_a_column(backend, device, seed):
    skip_unless_runnable(backend, device)
    x, s = torch.randn(3, 2, 5, device=device), torch.randn(3, 2, 5, device=device)
    a, b, c = (torch.rand(3, device=device) for _ in range(3))
    want = ops.sde_step(x, s, a, b, c, seed=seed, step=1, backend=backend)
    got = ops.sde_step(x, s, a[:, None, None], b[:, None], c, seed=seed, step=1, backend=backend)
    assert torch.equal(got, want)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_error_norm_is_nan_when_a_state_is(backend, device):
    skip_unless_runnable(backend, device)
    y, ks = torch.randn(2, 9, device=device), [torch.randn(2, 9, device=device)]
    y_new = y + 0.1 * ks[0]
    nan_at = torch.zeros_like(y)
    nan_at[1, 4] = float("nan")
    for y_a, y_b in ((y + nan_at, y_new), (y, y_new + nan_at)):
        assert ops.rk_error_norm(y_a, y_b, ks, [0.5], 0.1, 1e-5, 1e-5, backend=backend).isnan()


def test_a_meta_tensor_among_the_arguments_is_refused():
    """One meta argument sends an eager call to the fake kernel, past the C++ device checks."""
    ops.resolve_backend("cpu", "cpu")  # loads scoreops._C
    x = torch.randn(2, 3)
    seed, step = torch.tensor([1]), torch.tensor([0])
    meta = torch.ones(1, device="meta")
    with pytest.raises(ValueError, match="one device"):
        torch.ops.scoreops.sde_step(x, x, meta, meta, meta, seed, step, 0, 0, True)
    with pytest.raises(ValueError, match="one device"):
        torch.ops.scoreops.sde_step_(x, x.clone(), meta, meta, meta, seed, step, 0, 0, True)
    with pytest.raises(ValueError, match="one device"):
        torch.ops.scoreops.rk_combine(x, [x.to("meta")], [1.0], 0.1)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=lambda v: str(v).replace("torch.", ""))
def test_ops_on_views_one_element_off_the_vector_alignment(backend, device, dtype, seed):
    """Contiguous views whose data starts one element into their storage: vectorised paths must
    check pointer alignment, not only the row length (64 is a multiple of every vector width)."""
    skip_unless_runnable(backend, device)

    def shifted(*shape, dtype=dtype):
        return torch.randn(1 + math.prod(shape), device=device).to(dtype)[1:].view(shape)

    x, s, a = shifted(2, 64), shifted(2, 64), shifted(2, 64, dtype=torch.float32).abs()
    got = ops.sde_step(x, s, a, 0.3, a, seed=seed, step=3, backend=backend)
    want = _reference_sde_step(x, s, a, torch.tensor([0.3]), a, seed, 3, 0, 0, True)
    torch.testing.assert_close(got.cpu(), want, **TOL[dtype])

    norms = ops.sample_sq_norms(s, backend=backend)
    torch.testing.assert_close(norms[:, 0].cpu().double(), s.cpu().double().square().sum(1), rtol=1e-5, atol=1e-5)

    ks = [shifted(2, 64), shifted(2, 64)]
    got = ops.rk_combine(x, ks, [0.5, -1.5], 0.1, backend=backend)
    want = x.cpu().double() + 0.1 * (0.5 * ks[0].cpu().double() - 1.5 * ks[1].cpu().double())
    torch.testing.assert_close(got.cpu(), want.to(dtype), **TOL[dtype])


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_registered_ops_decide_the_coefficient_layout_by_shape(backend, device):
    """The raw ops apply the dispatch layer's rule: (1, 2, 2) holds B = 4 values for x of shape
    (4, 2, 2), but laid out along x's last dimensions, so it is neither per sample nor per element."""
    skip_unless_runnable(backend, device)
    ops.resolve_backend(backend, device)
    x = torch.randn(4, 2, 2, device=device)
    seed, step = torch.tensor([1], device=device), torch.tensor([0], device=device)
    one, column = torch.ones(1, device=device), torch.arange(4.0, device=device).reshape(4, 1, 1)
    step_op = ops.implementation("sde_step", backend)
    with pytest.raises(ValueError, match=r"a must be one value, one per sample .* got shape \(?\[?1, 2, 2"):
        step_op(x, x, torch.ones(1, 2, 2, device=device), one, one, seed, step, 0, 0, False)
    got = step_op(x, torch.ones_like(x), column, one, one, seed, step, 0, 0, False)
    torch.testing.assert_close(got.cpu(), (x + column).cpu())


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
@pytest.mark.parametrize("coef_mode", ["scalar", "per_sample", "per_element"])
def test_noise_free_step_in_place_on_contiguous_data(backend, device, coef_mode, seed):
    """The mean x + a*s written into x itself (the CPU kernel streams it without staging buffers)."""
    skip_unless_runnable(backend, device)
    x, s = torch.randn(3, 2 * 1024 + 5, device=device), torch.randn(3, 2 * 1024 + 5, device=device)
    a = _coef(coef_mode, x.shape, device)
    want = x.cpu().double() + ops.as_coef("a", a, x).cpu().double().reshape(-1, 1 if a.numel() <= 3 else x.shape[1]) \
        * s.cpu().double()
    got = ops.sde_step(x, s, a, 0.5, seed=seed, step=0, add_noise=False, inplace=True, backend=backend)
    assert got is x
    torch.testing.assert_close(x.cpu().double(), want, **TOL[torch.float32])
