"""Carried Brownian walks (csrc/brownian.h, scoreops/kernels/brownian.py, the torch reference): the
steps of a descending walk share a carry buffer, so each draws the normals of one tree path (at
most L + 1 per element) instead of two (up to 2L).

Checked on every backend, on fresh random descending tables: the carried ops give the stateless
ops' z to the bit (sigma_step, and sde_step with Milstein's z*z - 1 term); the carry after each
step is, to the bit, b's part of the next step's stateless walk fed the backend's own node
normals; the normal counts; opcheck and torch.compile; bad input.
"""
from __future__ import annotations

import pytest
import torch
from conftest import ALL_BACKENDS, KERNEL_BACKENDS, skip_unless_runnable
from mixture import GaussianMixture2D

import scoreops
from scoreops import ops
from scoreops.core import brownian as br
from scoreops.core.checks import as_counter
from scoreops.sde import VESDE

L = 24
TOP = 1 << L
UNIT = torch.tensor([0.0, 1.0])  # coefficients (a, e) of sigma_step: the result is z itself


def random_walk_table(points: int, end_at_zero: bool) -> torch.Tensor:
    """A descending table from the top: random distinct coordinates, clustered towards 0 (as a
    Karras grid's), with leaf-wide steps and a step parting at the root among them; -1 ends a
    grid whose last point takes no noise."""
    inner = torch.randint(1, TOP, (points - 3,)) // torch.randint(1, 64, (points - 3,))
    q = set(inner.clamp(min=1).tolist()) | {TOP // 2, TOP // 2 - 1, 2, 1}
    table = [TOP] + sorted(q, reverse=True)
    return torch.tensor(table + ([-1] if end_at_zero else [0]))


def karras_table() -> tuple[torch.Tensor, int]:
    grid = scoreops.sigma_grid(VESDE(25.0), int(torch.randint(5, 13, ())))
    tree = br.BrownianTree.from_grid(grid)
    return tree.grid_table(grid), tree.depth


def tables():
    yield random_walk_table(9, end_at_zero=True), L
    yield random_walk_table(6, end_at_zero=False), L
    yield karras_table()


def noisy_steps(path: torch.Tensor) -> range:
    """The steps with two tree points: all but a last one ending at -1."""
    return range(len(path) - 1 - int(path[-1] < 0))


def walk_parts_with_normals_of(backend, seed, a, b, depth, batch, numel, offset):
    """The reference's two parts of the stateless walk from b down to a, fed the backend's node normals."""
    def normal(node):
        return ops.philox_normal(batch, numel, seed=seed, step=node, lane=br.BROWNIAN_LANE, sample_offset=offset,
                                 backend=backend)
    return br._walk_parts(a, b, depth, normal)


# --------------------------------------------------------------------------- the ops
@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_a_carried_walk_gives_the_stateless_increments_to_the_bit(backend, device, seed):
    skip_unless_runnable(backend, device)
    batch, numel, offset = 3, int(torch.randint(1, 90, ())), int(torch.randint(0, 100, ()))
    zeros, unit = torch.zeros(batch, numel, device=device), UNIT.to(device)
    for path, depth in tables():
        path = path.to(device)
        carry = torch.empty(batch * numel, device=device)
        checked = set(torch.randperm(len(noisy_steps(path)))[:3].tolist())
        for k in noisy_steps(path):
            kw = dict(seed=seed, step=k, sample_offset=offset, add_noise=True, path=path, depth=depth,
                      backend=backend)
            got = ops.sigma_step(zeros, [], unit, carry=carry, **kw)
            want = ops.sigma_step(zeros, [], unit, **kw)
            assert torch.equal(got, want), f"step {k} of {path.tolist()}"
            # The carry against the reference on a few steps: each takes up to 2L calls of
            # philox_normal, slow in Triton's interpreter.
            if k in checked and k + 2 < len(path) and path[k + 2] >= 0:
                a, b, c = int(path[k + 2]), int(path[k + 1]), int(path[k])
                _, part_b = walk_parts_with_normals_of(backend, seed, a, b, depth, batch, numel, offset)
                assert torch.equal(carry.view(batch, numel).cpu(), torch.as_tensor(part_b).expand(batch, numel).cpu()), \
                    f"carry after step {k} ({c} -> {b}), for {b} -> {a}"


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_a_carried_sde_walk_matches_the_stateless_steps(backend, device, seed):
    """x + a s + b z + c (z z - 1) in place along the walk, per-sample and per-element coefficients,
    an odd element count: the same bits as the stateless out-of-place step."""
    skip_unless_runnable(backend, device)
    path, depth = karras_table()
    path = path.to(device)
    x = torch.randn(4, 3, 7, device=device)
    carry = torch.empty(x.numel(), device=device)
    want = x.clone()
    for k in noisy_steps(path):
        s = torch.randn_like(x)
        a, b, c = torch.rand(4, device=device), torch.rand(4, 1, 1, device=device), torch.randn_like(x)
        kw = dict(seed=seed, step=k, sample_offset=1, path=path, depth=depth, backend=backend)
        want = ops.sde_step(want, s, a, b, c, **kw)
        got = ops.sde_step(x, s, a, b, c, carry=carry, inplace=True, **kw)
        assert got is x and torch.equal(x, want), f"step {k}"


def test_the_normal_counts():
    """At most L + 1 normals per element and step when carried, 1 + max(c + 1, L - tz(a)); never
    more than the stateless walk's."""
    for path, depth in tables():
        q = [int(v) for v in path if v >= 0]
        for q_from, q_to in zip(q, q[1:]):
            carried = br.normals_per_element(q_from, q_to, depth, carried=True)
            tz = depth if q_to == 0 else (q_to & -q_to).bit_length() - 1
            c = -1 if q_from == 1 << depth else br.shared_bits(q_to, q_from, depth)
            assert carried == 1 + max(c + 1, depth - tz) <= depth + 1, (q_from, q_to)
            assert carried <= br.normals_per_element(q_from, q_to, depth)
    with pytest.raises(ValueError, match="descends"):
        br.normals_per_element(5, 9, L, carried=True)


@pytest.mark.parametrize("backend,device", KERNEL_BACKENDS)
@pytest.mark.parametrize("name", ["sigma_step_carried", "sde_step_carried_"])
def test_opcheck(backend, device, name):
    skip_unless_runnable(backend, device)
    ops.resolve_backend(backend, device)
    x = torch.randn(3, 2, 5, 5, device=device)
    path = torch.tensor([TOP, 5_000_000, 4_000_000, 0, -1], device=device)
    counters = (as_counter("seed", 12345, x.device), as_counter("step", 1, x.device))
    carry = torch.randn(x.numel(), device=device)
    if name == "sigma_step_carried":
        args = (x, [torch.randn_like(x)], torch.randn(3, device=device), *counters, 2, path, L, carry)
    else:
        args = (x, torch.randn_like(x), torch.randn(3, device=device), torch.randn(1, device=device),
                torch.randn_like(x), *counters, 2, path, L, carry)
    torch.library.opcheck(ops.implementation(name, backend).default, args)


@pytest.mark.parametrize("backend,device", KERNEL_BACKENDS)
@pytest.mark.parametrize("name", ["sigma_step_carried", "sde_step_carried_"])
def test_a_carried_walk_under_torch_compile_fullgraph(backend, device, name, seed):
    skip_unless_runnable(backend, device)
    op = ops.implementation(name, ops.resolve_backend(backend, device))
    path, depth = karras_table()
    path = path.to(device)
    x, d = torch.randn(4, 37, device=device), torch.randn(4, 37, device=device)
    coefs = torch.randn(3, device=device)
    seed_t, steps = as_counter("seed", seed, x.device), torch.arange(3, device=device).reshape(3, 1)

    def walk(x, carry):
        for k in range(3):
            if name == "sigma_step_carried":
                x = op(x, [d], coefs, seed_t, steps[k], 0, path, depth, carry)
            else:
                x = x.clone()
                op(x, d, coefs[:1], coefs[1:2], coefs[2:], seed_t, steps[k], 0, path, depth, carry)
        return x
    carry = torch.empty(x.numel(), device=device)
    want = walk(x, carry)
    carry_compiled = torch.empty(x.numel(), device=device)
    got = torch.compile(walk, fullgraph=True, backend="aot_eager")(x, carry_compiled)
    assert torch.equal(got, want)
    assert torch.equal(carry_compiled, carry)


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_bad_carries_get_clear_errors(backend, device):
    skip_unless_runnable(backend, device)
    x = torch.zeros(2, 5, device=device)
    unit, path = UNIT.to(device), torch.tensor([TOP, 7, 3], device=device)
    kw = dict(seed=1, step=0, add_noise=True, depth=L, backend=backend)
    with pytest.raises(ValueError, match="needs a path"):
        ops.sigma_step(x, [], unit, carry=torch.empty(10, device=device), **{**kw, "depth": 0})
    with pytest.raises(TypeError, match="float32"):
        ops.sigma_step(x, [], unit, path=path, carry=torch.empty(10, dtype=torch.float64, device=device), **kw)
    with pytest.raises(ValueError, match="10 elements"):
        ops.sigma_step(x, [], unit, path=path, carry=torch.empty(9, device=device), **kw)
    with pytest.raises(ValueError, match="contiguous"):
        ops.sigma_step(x, [], unit, path=path, carry=torch.empty(5, 2, device=device).t(), **kw)
    with pytest.raises(ValueError, match="shares memory"):
        ops.sigma_step(x, [], unit, path=path, carry=x.view(-1), **kw)
    with pytest.raises(ValueError, match="shares memory"):
        ops.sde_step(x, x, 0.0, 1.0, path=path, carry=x.view(-1), **{**kw, "add_noise": True})
    with pytest.raises(ValueError, match="no gradient"):
        ops.sigma_step(x.requires_grad_(), [], unit, path=path, carry=torch.empty(10, device=device), **kw)


@pytest.mark.parametrize("backend,device", KERNEL_BACKENDS)
def test_the_raw_ops_refuse_a_carry_that_shares_memory(backend, device):
    skip_unless_runnable(backend, device)
    impl = ops.resolve_backend(backend, device)
    x, t = torch.zeros(2, 8, device=device), torch.zeros(2, 8, device=device)
    unit, path = UNIT.to(device), torch.tensor([TOP, 7, 3], device=device)
    counters = (as_counter("seed", 1, x.device), as_counter("step", 0, x.device))
    for carry in (x.view(-1), t.view(-1)):
        with pytest.raises(RuntimeError):
            ops.implementation("sigma_step_carried", impl)(x, [t], torch.zeros(3, device=device), *counters, 0,
                                                            path, L, carry)
    with pytest.raises(RuntimeError):
        ops.implementation("sde_step_carried_", impl)(x, t, unit[:1], unit[1:], unit[:1], *counters, 0, path, L,
                                                      t.view(-1))


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_a_step_reading_an_unwritten_carry_gives_nan(backend, device, seed):
    """A walk's carry starts as NaN: a step that reads it before a step wrote it shows."""
    skip_unless_runnable(backend, device)
    path = torch.tensor([TOP, 9_000_000, 5_000, 3], device=device)
    carry = torch.full((6,), float("nan"), device=device)
    z = ops.sigma_step(torch.zeros(2, 3, device=device), [], UNIT.to(device), seed=seed, step=1, add_noise=True,
                       path=path, depth=L, carry=carry, backend=backend)
    assert z.isnan().all()


def test_an_ascending_carried_step_is_refused_or_nan(seed):
    """The CPU kernel and the reference refuse it; the device kernels cannot raise and give NaN."""
    x, path = torch.zeros(2, 5), torch.tensor([3, 7])
    kw = dict(seed=seed, step=0, add_noise=True, path=path, depth=L)
    for backend in ("cpu", "torch"):
        with pytest.raises(ValueError, match="descend"):
            ops.sigma_step(x, [], UNIT, carry=torch.empty(10), backend=backend, **kw)
    if "triton" in ops.available_backends("cpu"):
        carry = torch.full((10,), 7.0)
        assert ops.sigma_step(x, [], UNIT, carry=carry, backend="triton", **kw).isnan().all()
        assert (carry == 7.0).all()


# --------------------------------------------------------------------------- the samplers
@pytest.mark.parametrize("name", ["euler_ancestral", "dpmpp_2m_sde", "dpmpp_3m_sde"])
def test_sigma_samplers_carry_only_without_autograd_and_give_the_same_samples(name, monkeypatch, seed):
    """Under no_grad the noisy steps are one carried walk; with autograd on they are stateless;
    the samples are the same bits."""
    from scoreops.samplers import sigma_space

    calls = []
    real = sigma_space.ops.implementation

    def implementation(op, backend):
        fn = real(op, backend)

        def call(*args):
            calls.append(op)
            return fn(*args)
        return call
    monkeypatch.setattr(sigma_space.ops, "implementation", implementation)
    sample = getattr(sigma_space, f"sample_{name}")
    sigmas = scoreops.sigma_grid(VESDE(25.0), 8)
    x = sigmas[0] * torch.randn(6, 5)

    def denoiser(x, sigma):  # data ~ N(0, I)
        return x / (1 + sigma[:, None] ** 2)
    with torch.no_grad():
        carried = sample(denoiser, x, sigmas, seed=seed, noise="brownian")
    assert "sigma_step_carried" in calls
    calls.clear()
    stateless = sample(denoiser, x.requires_grad_(), sigmas, seed=seed, noise="brownian")
    assert "sigma_step_carried" not in calls
    assert torch.equal(carried, stateless.detach())


T_SAMPLERS = {
    "em": lambda *a, **kw: scoreops.em_sample(*a, **kw),
    "milstein": lambda *a, **kw: scoreops.milstein_sample(*a, correction="ito", **kw),
    "pc": lambda *a, **kw: scoreops.pc_sample(*a, corrector_steps=1, **kw),
}


@pytest.mark.parametrize("name", list(T_SAMPLERS))
def test_t_grid_samplers_carry_the_stateless_bits_and_leave_their_inputs(name, monkeypatch, seed):
    """em, milstein and pc's predictor take the carried walk: the same samples as stateless
    steps, the caller's x(1) and every tensor the model was given left as they were."""
    from scoreops.samplers import loop as loop_module

    sde = VESDE(25.0)
    mixture = GaussianMixture2D(sigma=sde.sigma)
    given = []

    def score(x, t):
        given.append((x, x.clone()))
        return mixture(x, t)
    x_T = 25.0 * torch.randn(16, 2)
    before = x_T.clone()
    carried = T_SAMPLERS[name](score, sde, None, 16, 12, shape=(2,), x_T=x_T, seed=seed, noise="brownian")
    assert torch.equal(x_T, before)
    assert all(torch.equal(x, copy) for x, copy in given)

    real = loop_module.ops.implementation

    def stateless(op, backend):
        if op != "sde_step_carried_":
            return real(op, backend)
        step = real("sde_step", backend)
        return lambda x, s, a, b, c, seed, k, offset, path, depth, carry: x.copy_(
            step(x, s, a, b, c, seed, k, 0, offset, True, path, depth))
    monkeypatch.setattr(loop_module.ops, "implementation", stateless)
    assert torch.equal(T_SAMPLERS[name](mixture, sde, None, 16, 12, shape=(2,), x_T=x_T, seed=seed, noise="brownian"),
                       carried)
