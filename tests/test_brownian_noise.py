"""Brownian-tree noise in the fused sigma_step (csrc/brownian.h, scoreops/kernels/brownian.py, the
torch reference) and in the stochastic sigma-space samplers (``noise="brownian"``).

The op: every backend against scoreops.core.brownian's reference; to the bit against the
reference's walk fed the backend's own node normals (the normals themselves differ between
backends by the ulp of their log/sin/cos, so across backends the increments agree to a few ulp
and to the bit only between the C++ CPU and CUDA kernels, which share philox.h); batch
invariance; opcheck, torch.compile and the gradient of e; bad input. The samplers: a fine grid
through the coarse grid's points reproduces the coarse increments through the samplers' own op
calls; the same distribution on the mixture; 20 and 40 steps with one seed give close samples;
CUDA-graph replay copies the path table; clear errors. The same for sde_step with a path (Milstein's
z*z term included) and the t-grid samplers em/milstein/pc (noise="brownian", the tree in t).
"""
from __future__ import annotations

import math

import pytest
import torch
from conftest import ALL_BACKENDS, KERNEL_BACKENDS, skip_unless_runnable
from mixture import GaussianMixture2D
from sampler_spies import WalkOnCPU, record_ops

import scoreops
from scoreops import ops
from scoreops.core import brownian as br
from scoreops.core.checks import as_counter
from scoreops.samplers import cuda_graph, reverse_sde, sigma_space
from scoreops.samplers import loop as loop_module
from scoreops.samplers.loop import Loop
from scoreops.samplers.denoiser import score_to_denoiser
from scoreops.sde import VESDE

SDE = VESDE(25.0)
MIXTURE = GaussianMixture2D(sigma=SDE.sigma)
L = 24
TOP = 1 << L
# (q_from, q_to): whole range, one leaf at either end, forward in time, parting at the root with
# odd ends (the most normals), a partial group and both directions.
PAIRS = [(TOP, 0), (0, TOP), (1, 0), (TOP, TOP - 1), (8_388_609, 8_388_607), (9_876_543, 1_234_567), (3, TOP),
         (123_456, 77)]
NOISY_SAMPLERS = ["euler_ancestral", "dpmpp_2m_sde", "dpmpp_3m_sde"]
# A float32 sum of at most 2L = 48 weighted O(1) normals whose squared weights sum to 1: a few
# ulp of 1, plus the ulp by which the backends' normals differ.
ATOL = 2e-6


def increment(backend, seed, q_from, q_to, batch=3, numel=37, offset=5, depth=L, step=0):
    """z alone from the op: ``0 * 0 + 1 * z`` is z exactly."""
    path = torch.tensor([q_from, q_to] if step == 0 else [0] * step + [q_from, q_to])
    return ops.sigma_step(torch.zeros(batch, numel), [], torch.tensor([0.0, 1.0]), seed=seed, step=step,
                          sample_offset=offset, add_noise=True, path=path, depth=depth, backend=backend)


def walk_with_normals_of(backend, seed, q_from, q_to, batch=3, numel=37, offset=5):
    """The reference's walk fed this backend's own node normals (its philox_normal on the tree's lane)."""
    def normal(node):
        return ops.philox_normal(batch, numel, seed=seed, step=node, lane=br.BROWNIAN_LANE, sample_offset=offset,
                                 backend=backend)
    z = br._walk(min(q_from, q_to), max(q_from, q_to), L, normal)
    return z if q_to > q_from else -z


# --------------------------------------------------------------------------- the op
@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_increments_match_the_tree_reference(backend, device, seed):
    skip_unless_runnable(backend, device)
    pairs = PAIRS + [tuple(torch.randint(0, TOP + 1, (2,)).tolist()) for _ in range(3)]
    for q_from, q_to in pairs:
        if q_from == q_to:
            continue
        got = increment(backend, seed, q_from, q_to).cpu()
        want = br.brownian_increment(seed, q_from, q_to, L, 3, 37, 5)
        torch.testing.assert_close(got, want, rtol=0, atol=ATOL, msg=lambda m: f"{q_from} -> {q_to}: {m}")
        assert torch.equal(got, walk_with_normals_of(backend, seed, q_from, q_to).cpu()), (q_from, q_to)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_the_step_reads_its_interval_of_the_table(backend, device, seed):
    """z of step k is the increment from path[k] to path[k + 1], combined as a x + b t + e z."""
    skip_unless_runnable(backend, device)
    grid = scoreops.sigma_grid(SDE, 9)
    tree = br.BrownianTree.from_grid(grid)
    path = tree.grid_table(grid).to(device)
    x, t = torch.randn(4, 3, 11, device=device), torch.randn(4, 3, 11, device=device)
    coefs = torch.randn(3, device=device)
    for k in (0, 4, 7):
        got = ops.sigma_step(x, [t], coefs, seed=seed, step=k, sample_offset=2, add_noise=True, path=path,
                             depth=tree.depth, backend=backend)
        z = br.brownian_increment(seed, int(path[k]), int(path[k + 1]), tree.depth, 4, 33, 2).reshape(x.shape)
        want = coefs[0].double() * x.double() + coefs[1].double() * t.double() + coefs[2].double() * z.double().to(device)
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    # Without add_noise the path is ignored.
    plain = ops.sigma_step(x, [t], coefs, seed=seed, step=3, backend=backend)
    assert torch.equal(ops.sigma_step(x, [t], coefs, seed=seed, step=3, path=path, depth=tree.depth,
                                      backend=backend), plain)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_a_samples_increment_does_not_depend_on_its_batch(backend, device, seed):
    skip_unless_runnable(backend, device)
    full = increment(backend, seed, 9_876_543, 1_234_567, batch=5, numel=70, offset=10)
    for lo, hi in ((0, 1), (2, 5), (4, 5)):
        part = increment(backend, seed, 9_876_543, 1_234_567, batch=hi - lo, numel=70, offset=10 + lo)
        assert torch.equal(part, full[lo:hi]), (lo, hi)
    assert not torch.equal(increment(backend, seed, 9_876_543, 1_234_567, batch=1, numel=70, offset=10), full[2:3])


@pytest.mark.cuda
def test_cpu_and_cuda_kernels_agree_to_the_bit(seed):
    skip_unless_runnable("cuda", "cuda")
    for q_from, q_to in PAIRS:
        cpu = increment("cpu", seed, q_from, q_to, batch=4, numel=1027)
        x = torch.zeros(4, 1027, device="cuda")
        path = torch.tensor([q_from, q_to], device="cuda")
        gpu = ops.sigma_step(x, [], torch.tensor([0.0, 1.0], device="cuda"), seed=seed, step=0, sample_offset=5,
                             add_noise=True, path=path, depth=L, backend="cuda")
        assert torch.equal(gpu.cpu(), cpu), (q_from, q_to)


def _counters(seed, step, device):
    return as_counter("seed", seed, torch.device(device)), as_counter("step", step, torch.device(device))


@pytest.mark.parametrize("backend,device", KERNEL_BACKENDS)
def test_opcheck_with_a_path(backend, device):
    skip_unless_runnable(backend, device)
    ops.resolve_backend(backend, device)
    x = torch.randn(3, 2, 5, 5, device=device)
    path = torch.tensor([TOP, 5_000_000, 0, -1], device=device)
    args = (x, [torch.randn_like(x)], torch.randn(3, device=device), *_counters(12345, 1, device), 0, 2, True,
            path, L)
    torch.library.opcheck(ops.implementation("sigma_step", backend).default, args)


@pytest.mark.parametrize("backend,device", KERNEL_BACKENDS)
def test_brownian_steps_under_torch_compile_fullgraph(backend, device, seed):
    skip_unless_runnable(backend, device)
    step_op = ops.implementation("sigma_step", ops.resolve_backend(backend, device))
    x = torch.randn(4, 37, device=device)
    c = torch.randn(3, device=device)
    path = torch.tensor([TOP, 3_000_000, 0], device=device)
    seed_t = as_counter("seed", seed, x.device)
    steps = torch.tensor([[0], [1]], device=device)

    def two_steps(x):
        y = step_op(x, [x], c, seed_t, steps[0], 0, 0, True, path, L)
        return step_op(y, [x], c, seed_t, steps[1], 0, 0, True, path, L)

    compiled = torch.compile(two_steps, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(x), two_steps(x))


@pytest.mark.parametrize("backend,device", KERNEL_BACKENDS)
def test_the_gradient_of_e_is_taken_against_the_brownian_z(backend, device, seed):
    skip_unless_runnable(backend, device)
    x = torch.randn(3, 37, device=device, requires_grad=True)
    coefs = torch.randn(2, device=device, requires_grad=True)
    path = torch.tensor([TOP, 4_000_000], device=device)
    weight = torch.randn(3, 37, device=device)
    out = ops.sigma_step(x, [], coefs, seed=seed, sample_offset=1, add_noise=True, path=path, depth=L,
                         backend=backend)
    grad_x, grad_c = torch.autograd.grad((out * weight).sum(), [x, coefs])
    z = br.brownian_increment(seed, TOP, 4_000_000, L, 3, 37, 1).to(device)
    torch.testing.assert_close(grad_x, coefs.detach()[0] * weight)
    torch.testing.assert_close(grad_c[1], (weight * z).sum(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_bad_paths_get_clear_errors(backend, device):
    skip_unless_runnable(backend, device)
    x = torch.randn(2, 5, device=device)
    c = torch.ones(2, device=device)

    def call(path, depth=L, step=0):
        return ops.sigma_step(x, [], c, seed=1, step=step, add_noise=True, path=path, depth=depth, backend=backend)

    with pytest.raises(TypeError, match="path must be an int64 tensor"):
        call(torch.tensor([1.0, 0.0], device=device))
    with pytest.raises(ValueError, match="path must be a 1-D table of at least 2"):
        call(torch.tensor([1], device=device))
    with pytest.raises(ValueError, match="path is on meta but x is on"):
        call(torch.tensor([1, 0], device="meta"))
    with pytest.raises(ValueError, match=r"depth must be (in \[0, 32\]|an int >= 0)"):
        call(torch.tensor([1, 0], device=device), depth=33)
    # Values are read by the kernels: the CPU kernel and the reference refuse them, the Triton
    # and CUDA kernels (which cannot raise on the device) give NaN.
    bad = [(torch.tensor([5, -1], device=device), 0), (torch.tensor([5, 5], device=device), 0),
           (torch.tensor([TOP + 1, 0], device=device), 0), (torch.tensor([5, 0], device=device), 1)]
    for path, step in bad:
        if backend in ("cpu", "torch"):
            with pytest.raises(ValueError, match="no interval|must differ|must be distinct|must lie in"):
                call(path, step=step)
        else:
            assert torch.isnan(call(path, step=step)).all()


# --------------------------------------------------------------------------- the samplers
class Recorder:
    """The sampler's op, recording every noisy call's z (the same call with x = 0 and coefs (0, 1));
    its carried twin (:meth:`carried`) records the z of the Brownian walk's steps, on a copy of the carry."""

    def __init__(self, op):
        self.op, self.z = op, []

    def __call__(self, x, terms, coefs, seed, step, lane, offset, add_noise, path=None, depth=0):
        if add_noise:
            unit = torch.tensor([0.0, 1.0], device=x.device)
            self.z.append(self.op(torch.zeros_like(x), [], unit, seed, step, lane, offset, True, path, depth))
        return self.op(x, terms, coefs, seed, step, lane, offset, add_noise, path, depth)

    def carried(self, op):
        def step(x, terms, coefs, seed, step, offset, path, depth, carry):
            unit = torch.tensor([0.0, 1.0], device=x.device)
            self.z.append(op(torch.zeros_like(x), [], unit, seed, step, offset, path, depth, carry.clone()))
            return op(x, terms, coefs, seed, step, offset, path, depth, carry)
        return step


@pytest.fixture
def recorder(monkeypatch):
    """One Recorder per sampler run, for both of its step ops."""
    return record_ops(monkeypatch, sigma_space, Recorder, "sigma_step_carried")


@pytest.mark.parametrize("name", NOISY_SAMPLERS)
def test_a_fine_grid_through_the_coarse_points_walks_the_same_path(name, recorder, seed):
    """Karras grids of 2N - 1 and N levels: each coarse increment is the sqrt(dt)-weighted sum of
    the two fine ones, as the samplers draw them."""
    core = getattr(sigma_space, f"sample_{name}")
    denoiser = score_to_denoiser(MIXTURE, SDE)
    coarse, fine = scoreops.sigma_grid(SDE, 7), scoreops.sigma_grid(SDE, 13)
    x = torch.randn(16, 2) * float(coarse[0])
    for grid in (coarse, fine):
        core(denoiser, x, grid, seed=seed, noise="brownian")
    zc, zf = recorder[0].z, recorder[1].z
    assert len(zc) == 6 and len(zf) == 12  # every step but the final denoise
    tree = br.BrownianTree.from_grid(fine)
    t = tree.time(tree.grid_table(fine)[:-1])
    for i, z in enumerate(zc):
        dt = [float(t[2 * i + k] - t[2 * i + k + 1]) for k in (0, 1)]
        summed = (math.sqrt(dt[0]) * zf[2 * i].double() + math.sqrt(dt[1]) * zf[2 * i + 1].double()) / math.sqrt(sum(dt))
        torch.testing.assert_close(summed, z.double(), rtol=0, atol=2e-5, msg=lambda m: f"coarse step {i}: {m}")
    # ... which i.i.d. noise does not.
    core(denoiser, x, coarse, seed=seed)
    assert not torch.allclose(recorder[2].z[1], zc[1], atol=0.1)


N_SAMPLES = 2000
MIXTURE_STEPS = {"euler_ancestral": 100}


@pytest.mark.parametrize("name", NOISY_SAMPLERS)
def test_brownian_noise_reproduces_the_mixture(name, seed):
    wrapper = getattr(scoreops, f"{name}_sample")
    x = wrapper(MIXTURE, SDE, None, N_SAMPLES, MIXTURE_STEPS.get(name, 30), shape=(2,), seed=seed, noise="brownian")
    MIXTURE.check_samples(x, what=f"{name}, brownian noise (seed {seed})")


@pytest.mark.parametrize("name", NOISY_SAMPLERS)
def test_one_seed_gives_close_samples_at_20_and_40_steps(name, seed):
    """The issue's claim: with one path, refining the grid moves the samples little; with i.i.d.
    noise they are unrelated draws. Measured ratio of the mean distances about 0.1; asserted < 0.3."""
    wrapper = getattr(scoreops, f"{name}_sample")

    def distance(kind):
        a, b = (wrapper(MIXTURE, SDE, None, 1000, n, shape=(2,), seed=seed, noise=kind) for n in (20, 40))
        return float((a - b).norm(dim=1).mean())

    iid, brownian = distance("iid"), distance("brownian")
    assert brownian < 0.3 * iid, (brownian, iid)


@pytest.mark.parametrize("backend,device", KERNEL_BACKENDS)
def test_kernel_backends_follow_the_torch_backend(backend, device, seed):
    skip_unless_runnable(backend, device)
    sigmas = scoreops.sigma_grid(SDE, 5)
    x = (torch.randn(6, 9) * float(sigmas[0])).to(device)
    den = score_to_denoiser(_elementwise_score, SDE)
    want = sigma_space.sample_dpmpp_3m_sde(den, x, sigmas, seed=seed, noise="brownian", backend="torch")
    got = sigma_space.sample_dpmpp_3m_sde(den, x, sigmas, seed=seed, noise="brownian", backend=backend)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


def _elementwise_score(x, t):
    """The exact score of N(0.3, 0.5) per element."""
    var = 0.5 + SDE.marginal_prob_std(t).to(x.dtype) ** 2
    return (0.3 - x) / var.reshape(-1, *[1] * (x.dim() - 1))


def test_a_samples_path_does_not_depend_on_its_batch(seed):
    def run(batch, offset):
        return scoreops.dpmpp_2m_sde_sample(_elementwise_score, SDE, None, batch, 6, shape=(5,), seed=seed,
                                            sample_offset=offset, noise="brownian")
    assert torch.equal(torch.cat([run(3, 0), run(4, 3)]), run(7, 0))


def test_without_noise_brownian_changes_nothing(seed):
    sigmas = scoreops.sigma_grid(SDE, 6)
    x = torch.randn(8, 2) * float(sigmas[0])
    den = score_to_denoiser(MIXTURE, SDE)
    for core in (sigma_space.sample_euler_ancestral, sigma_space.sample_dpmpp_2m_sde):
        assert torch.equal(core(den, x, sigmas, eta=0.0, seed=seed, noise="brownian"),
                           core(den, x, sigmas, eta=0.0, seed=seed))


def test_a_replayed_graph_copies_the_new_grids_path(monkeypatch, seed):
    monkeypatch.setattr(cuda_graph, "GraphedWalk", WalkOnCPU)
    monkeypatch.setattr(cuda_graph, "use_graph", lambda cuda_graph, *args: cuda_graph is not False)
    WalkOnCPU.captures = 0
    den = score_to_denoiser(GaussianMixture2D(sigma=SDE.sigma), SDE)
    grid, other = scoreops.sigma_grid(SDE, 6), scoreops.sigma_grid(SDE, 6, schedule="log_sigma")
    try:
        with torch.no_grad():
            sigma_space.sample_euler_ancestral(den, torch.randn(9, 2) * 9, grid, seed=seed, cuda_graph=True,
                                               noise="brownian")
            x = torch.randn(9, 2) * float(other[0])
            replayed = sigma_space.sample_euler_ancestral(den, x, other, seed=seed, cuda_graph=True, noise="brownian")
            plain = sigma_space.sample_euler_ancestral(den, x, other, seed=seed, cuda_graph=False, noise="brownian")
            assert WalkOnCPU.captures == 1
            assert torch.equal(replayed, plain)
            # The noise kind is control: i.i.d. noise captures anew.
            sigma_space.sample_euler_ancestral(den, x, other, seed=seed, cuda_graph=True)
            assert WalkOnCPU.captures == 2
    finally:
        cuda_graph.clear_graph_cache()


def test_bad_noise_arguments_get_clear_errors():
    sigmas = scoreops.sigma_grid(SDE, 6)
    x = torch.randn(4, 2) * float(sigmas[0])
    den = score_to_denoiser(MIXTURE, SDE)
    with pytest.raises(ValueError, match=r"noise must be one of \('iid', 'brownian'\), got 'tree'"):
        sigma_space.sample_euler_ancestral(den, x, sigmas, noise="tree")
    with pytest.raises(ValueError, match="tol must be"):
        sigma_space.sample_dpmpp_2m_sde(den, x, sigmas, noise="brownian", brownian_tol=-1.0)
    with pytest.raises(ValueError, match="snap to the same tree point"):
        sigma_space.sample_dpmpp_3m_sde(den, x, sigmas, noise="brownian", brownian_tol=1.0)
    for wrapper in (scoreops.heun_sample, scoreops.dpmpp_2m_sample, scoreops.unipc_sample):
        with pytest.raises(ValueError, match="takes no noise=: it draws no noise over the grid's intervals"):
            wrapper(MIXTURE, SDE, None, 4, 5, shape=(2,), noise="brownian")


# --------------------------------------------------------------------------- sde_step with a path
def sde_increment_step(backend, seed, path, depth, x, s, a, b, c, step=0, offset=3, inplace=False):
    return ops.sde_step(x.clone() if inplace else x, s, a, b, c, seed=seed, step=step, sample_offset=offset,
                        path=path, depth=depth, inplace=inplace, backend=backend)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_sde_step_with_a_path_matches_the_reference(backend, device, seed):
    """``x + a s + b z + c (z z - 1)`` with z the tree's increment from path[step] to path[step + 1],
    for every coefficient layout, out of place and in place."""
    skip_unless_runnable(backend, device)
    grid = torch.linspace(1.0, 1e-3, 9, dtype=torch.float64)
    tree = br.BrownianTree.from_grid(grid)
    path = tree.grid_table(grid).to(device)
    x, s = torch.randn(4, 3, 11, device=device), torch.randn(4, 3, 11, device=device)
    layouts = [torch.randn(1, device=device), torch.randn(4, device=device), torch.randn(4, 3, 11, device=device)]
    view = {1: (1, 1, 1), 4: (4, 1, 1), 132: (4, 3, 11)}
    for k, (a, b, c) in zip((0, 4, 7), [layouts, layouts[::-1], layouts[1:] + layouts[:1]], strict=True):
        z = br.brownian_increment(seed, int(path[k]), int(path[k + 1]), tree.depth, 4, 33, 3).reshape(x.shape)
        z = z.double().to(device)
        a64, b64, c64 = (v.double().reshape(view[v.numel()]) for v in (a, b, c))
        want = x.double() + a64 * s.double() + b64 * z + c64 * (z * z - 1.0)
        for inplace in (False, True):
            got = sde_increment_step(backend, seed, path, tree.depth, x, s, a, b, c, step=k, inplace=inplace)
            torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5, msg=lambda m: f"step {k}: {m}")
    # Without add_noise the path is ignored.
    plain = ops.sde_step(x, s, 0.5, 1.0, 0.2, seed=seed, step=3, add_noise=False, backend=backend)
    assert torch.equal(ops.sde_step(x, s, 0.5, 1.0, 0.2, seed=seed, step=3, add_noise=False, path=path,
                                    depth=tree.depth, backend=backend), plain)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_milsteins_square_takes_the_same_brownian_z(backend, device, seed):
    """``b z`` and ``c (z z - 1)`` read one z: the c-term alone is the b-term alone squared, less 1,
    and both are the tree's increment, not the stream's normal."""
    skip_unless_runnable(backend, device)
    path = torch.tensor([TOP, 9_876_543, 1_234_567], device=device)
    zeros = torch.zeros(3, 37, device=device)

    def only(b, c):
        return ops.sde_step(zeros, zeros, 0.0, b, c, seed=seed, step=1, sample_offset=2, path=path, depth=L,
                            backend=backend)

    z = br.brownian_increment(seed, 9_876_543, 1_234_567, L, 3, 37, 2).to(device)
    torch.testing.assert_close(only(1.0, 0.0), z, rtol=0, atol=ATOL)
    torch.testing.assert_close(only(0.0, 1.0), only(1.0, 0.0) ** 2 - 1.0, rtol=0, atol=4 * ATOL)
    iid = ops.sde_step(zeros, zeros, 0.0, 1.0, 0.0, seed=seed, step=1, sample_offset=2, backend=backend)
    assert not torch.allclose(iid, z, atol=0.1)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_an_sde_steps_increment_does_not_depend_on_its_batch(backend, device, seed):
    skip_unless_runnable(backend, device)
    path = torch.tensor([7, 3_000_001, TOP], device=device)
    x, s = torch.randn(5, 70, device=device), torch.randn(5, 70, device=device)

    def rows(lo, hi):
        return ops.sde_step(x[lo:hi], s[lo:hi], 0.3, 0.9, 0.1, seed=seed, step=1, sample_offset=10 + lo, path=path,
                            depth=L, backend=backend)
    full = rows(0, 5)
    for lo, hi in ((0, 1), (2, 5), (4, 5)):
        assert torch.equal(rows(lo, hi), full[lo:hi]), (lo, hi)


@pytest.mark.parametrize("backend,device", KERNEL_BACKENDS)
@pytest.mark.parametrize("name", ["sde_step", "sde_step_"])
def test_sde_step_opcheck_with_a_path(backend, device, name):
    skip_unless_runnable(backend, device)
    ops.resolve_backend(backend, device)
    x = torch.randn(3, 2, 5, 5, device=device)
    path = torch.tensor([TOP, 5_000_000, 0, -1], device=device)
    args = (x, torch.randn_like(x), torch.randn(3, device=device), torch.randn(1, device=device),
            torch.randn_like(x), *_counters(12345, 1, device), 0, 2, True, path, L)
    torch.library.opcheck(ops.implementation(name, backend).default, args)


@pytest.mark.parametrize("backend,device", KERNEL_BACKENDS)
def test_brownian_sde_steps_under_torch_compile_fullgraph(backend, device, seed):
    skip_unless_runnable(backend, device)
    step_op = ops.implementation("sde_step", ops.resolve_backend(backend, device))
    x, s = torch.randn(4, 37, device=device), torch.randn(4, 37, device=device)
    a, b, c = (torch.randn(1, device=device) for _ in range(3))
    path = torch.tensor([TOP, 3_000_000, 0], device=device)
    seed_t = as_counter("seed", seed, x.device)
    steps = torch.tensor([[0], [1]], device=device)

    def two_steps(x):
        y = step_op(x, s, a, b, c, seed_t, steps[0], 0, 0, True, path, L)
        return step_op(y, s, a, b, c, seed_t, steps[1], 0, 0, True, path, L)

    compiled = torch.compile(two_steps, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(x), two_steps(x))


@pytest.mark.parametrize("backend,device", KERNEL_BACKENDS)
def test_the_gradients_of_b_and_c_are_taken_against_the_brownian_z(backend, device, seed):
    skip_unless_runnable(backend, device)
    x, s = torch.randn(3, 37, device=device), torch.randn(3, 37, device=device)
    b = torch.randn(3, device=device, requires_grad=True)
    c = torch.randn(1, device=device, requires_grad=True)
    path = torch.tensor([TOP, 4_000_000], device=device)
    weight = torch.randn(3, 37, device=device)
    out = ops.sde_step(x, s, 0.5, b, c, seed=seed, step=0, sample_offset=1, path=path, depth=L, backend=backend)
    grad_b, grad_c = torch.autograd.grad((out * weight).sum(), [b, c])
    z = br.brownian_increment(seed, TOP, 4_000_000, L, 3, 37, 1).to(device)
    torch.testing.assert_close(grad_b, (weight * z).sum(dim=1), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grad_c, (weight * (z * z - 1)).sum().reshape(1), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_sde_step_refuses_bad_paths(backend, device):
    skip_unless_runnable(backend, device)
    x = torch.randn(2, 5, device=device)

    def call(path, depth=L, step=0):
        return ops.sde_step(x, x, 0.1, 1.0, seed=1, step=step, path=path, depth=depth, backend=backend)

    with pytest.raises(TypeError, match="path must be an int64 tensor"):
        call(torch.tensor([1.0, 0.0], device=device))
    with pytest.raises(ValueError, match="path must be a 1-D table of at least 2"):
        call(torch.tensor([1], device=device))
    with pytest.raises(ValueError, match=r"depth must be (in \[0, 32\]|an int >= 0)"):
        call(torch.tensor([1, 0], device=device), depth=33)
    for path, step in [(torch.tensor([5, -1], device=device), 0), (torch.tensor([5, 0], device=device), 1)]:
        if backend in ("cpu", "torch"):
            with pytest.raises(ValueError, match="no interval|must differ|must be distinct|must lie in"):
                call(path, step=step)
        else:
            assert torch.isnan(call(path, step=step)).all()


# --------------------------------------------------------------------------- the t-grid samplers
T_SAMPLERS = {
    "em": lambda *a, **kw: scoreops.em_sample(*a, **kw),
    "milstein": lambda *a, **kw: scoreops.milstein_sample(*a, correction="ito", **kw),
    "pc": lambda *a, **kw: scoreops.pc_sample(*a, **kw),
}


class SdeRecorder:
    """The loop's sde_step, recording every noisy call's z (the same call on zeros with (a, b, c) = (0, 1, 0));
    its carried twin (:meth:`carried`) records the z of the Brownian walk's steps, on a copy of the carry."""

    def __init__(self, op):
        self.op, self.z = op, []

    def __call__(self, x, s, a, b, c, seed, step, lane, offset, add_noise, path=None, depth=0):
        if add_noise:
            zero, one = torch.zeros(1, device=x.device), torch.ones(1, device=x.device)
            zeros = torch.zeros_like(x)
            self.z.append(self.op(zeros, zeros, zero, one, zero, seed, step, lane, offset, True, path, depth))
        return self.op(x, s, a, b, c, seed, step, lane, offset, add_noise, path, depth)

    def carried(self, op):
        def step(x, s, a, b, c, seed, step, offset, path, depth, carry):
            zero, one = torch.zeros(1, device=x.device), torch.ones(1, device=x.device)
            z, zeros = torch.zeros_like(x), torch.zeros_like(x)
            op(z, zeros, zero, one, zero, seed, step, offset, path, depth, carry.clone())
            self.z.append(z)
            op(x, s, a, b, c, seed, step, offset, path, depth, carry)
        return step


@pytest.fixture
def sde_recorder(monkeypatch):
    """One SdeRecorder per sampler loop, for both of its step ops."""
    return record_ops(monkeypatch, loop_module, SdeRecorder, "sde_step_carried_")


@pytest.mark.parametrize("name,grid", [("em", "tutorial"), ("pc", "karras")])
def test_a_fine_t_grid_through_the_coarse_times_walks_the_same_path(name, grid, sde_recorder, seed):
    """The tutorial's linspace(1, eps, N) inside linspace(1, eps, 2N - 1), or Karras grids of N and
    2N steps: each coarse increment is the sqrt(dt)-weighted sum of the two fine ones, as the
    predictor draws them (the PC corrector's i.i.d. noise goes around the recorded op)."""
    n, eps = 6, 1e-3
    sde_steps = (n, 2 * n - 1) if grid == "tutorial" else (n, 2 * n)
    kw = {} if grid == "tutorial" else dict(schedule="karras")
    for steps in sde_steps:
        T_SAMPLERS[name](MIXTURE, SDE, None, 8, steps, shape=(2,), seed=seed, noise="brownian", **kw)
    zc, zf = sde_recorder[0].z, sde_recorder[1].z
    assert len(zc) == sde_steps[0] - 1 and len(zf) == sde_steps[1] - 1  # the last step is the mean
    if grid == "tutorial":
        times = torch.linspace(1.0, eps, sde_steps[1], dtype=torch.float64)
    else:
        times = SDE.time_of_std(scoreops.sigma_grid(SDE, sde_steps[1], eps=eps, denoise=False)).double()
    tree = br.BrownianTree.from_grid(times)
    t = tree.time(tree.grid_table(times))
    for i, z in enumerate(zc):
        dt = [float(t[2 * i + k] - t[2 * i + k + 1]) for k in (0, 1)]
        summed = (math.sqrt(dt[0]) * zf[2 * i].double() + math.sqrt(dt[1]) * zf[2 * i + 1].double()) / math.sqrt(sum(dt))
        torch.testing.assert_close(summed, z.double(), rtol=0, atol=2e-5, msg=lambda m: f"coarse step {i}: {m}")
    T_SAMPLERS[name](MIXTURE, SDE, None, 8, sde_steps[0], shape=(2,), seed=seed, **kw)
    assert not torch.allclose(sde_recorder[2].z[1], zc[1], atol=0.1)


@pytest.mark.parametrize("name", list(T_SAMPLERS))
def test_brownian_t_grid_samplers_reproduce_the_mixture(name, seed):
    x = T_SAMPLERS[name](MIXTURE, SDE, None, N_SAMPLES, 200, shape=(2,), seed=seed, noise="brownian")
    MIXTURE.check_samples(x, what=f"{name}, brownian noise (seed {seed})")


@pytest.mark.parametrize("name,kw", [("em", {}), ("em", dict(schedule="karras", denoise=True)),
                                     ("pc", dict(corrector_steps=0, predictor="reverse_diffusion"))])
def test_one_seed_gives_close_t_grid_samples_at_20_and_40_steps(name, kw, seed):
    """Measured ratio of the mean distances about 0.1 to 0.17; asserted < 0.3. (Not so for PC with
    its i.i.d. corrector noise, nor for Milstein's time correction, whose z**2 - 1 term does not
    add up over a finer grid.)"""
    def distance(kind):
        a, b = (T_SAMPLERS[name](MIXTURE, SDE, None, 1000, n, shape=(2,), seed=seed, noise=kind, **kw)
                for n in (20, 40))
        return float((a - b).norm(dim=1).mean())

    iid, brownian = distance("iid"), distance("brownian")
    assert brownian < 0.3 * iid, (brownian, iid)


@pytest.mark.parametrize("backend,device", KERNEL_BACKENDS)
def test_t_grid_kernel_backends_follow_the_torch_backend(backend, device, seed):
    skip_unless_runnable(backend, device)
    x_T = (torch.randn(6, 9) * SDE.sigma).to(device)
    want = scoreops.milstein_sample(_elementwise_score, SDE, None, num_steps=5, x_T=x_T, seed=seed,
                                    noise="brownian", backend="torch")
    got = scoreops.milstein_sample(_elementwise_score, SDE, None, num_steps=5, x_T=x_T, seed=seed,
                                   noise="brownian", backend=backend)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


def test_a_t_grid_samples_path_does_not_depend_on_its_batch(seed):
    def run(batch, offset):
        return scoreops.em_sample(_elementwise_score, SDE, None, batch, 6, shape=(5,), seed=seed,
                                  sample_offset=offset, noise="brownian")
    assert torch.equal(torch.cat([run(3, 0), run(4, 3)]), run(7, 0))


class LoopOnCPU(cuda_graph.GraphedLoop):
    """A GraphedLoop that runs the loop again on its static buffers at replay: a plan field that
    Plan.copy_ missed would replay the first call's values."""

    captures = 0

    def __init__(self, loop, score_model, x_T, plan):
        type(self).captures += 1
        self.x_T, self.plan = x_T.clone(), plan.clone()
        self.graph = self
        self._run = lambda: loop.run(score_model, self.x_T, self.plan)

    def replay(self):
        self.x_out = self._run()


def test_a_replayed_loop_copies_the_new_grids_path(monkeypatch, seed):
    monkeypatch.setattr(cuda_graph, "GraphedLoop", LoopOnCPU)
    monkeypatch.setattr(reverse_sde, "use_graph", lambda cuda_graph, *args: cuda_graph is not False)
    LoopOnCPU.captures = 0
    x_T = torch.randn(9, 2) * SDE.sigma
    try:
        with torch.no_grad():
            scoreops.em_sample(MIXTURE, SDE, None, x_T=x_T, num_steps=8, seed=seed, cuda_graph=True, noise="brownian")
            # A Karras grid of as many steps: the same loop key, another path table.
            kw = dict(x_T=x_T, num_steps=8, seed=seed, schedule="karras", noise="brownian")
            replayed = scoreops.em_sample(MIXTURE, SDE, None, cuda_graph=True, **kw)
            plain = scoreops.em_sample(MIXTURE, SDE, None, cuda_graph=False, **kw)
            assert LoopOnCPU.captures == 1
            assert torch.equal(replayed, plain)
            # The noise kind is in the loop key: i.i.d. noise captures anew.
            scoreops.em_sample(MIXTURE, SDE, None, x_T=x_T, num_steps=8, seed=seed, cuda_graph=True)
            assert LoopOnCPU.captures == 2
    finally:
        cuda_graph.clear_graph_cache()


def test_the_loop_key_holds_the_noise_kind_and_depth():
    keys = {Loop("cpu", 10, 0, noise=kind, depth=depth).key for kind, depth in (("iid", 0), ("brownian", 20),
                                                                                  ("brownian", 24))}
    assert len(keys) == 3


def test_bad_t_grid_noise_arguments_get_clear_errors():
    for wrapper in T_SAMPLERS.values():
        with pytest.raises(ValueError, match=r"noise must be one of \('iid', 'brownian'\), got 'tree'"):
            wrapper(MIXTURE, SDE, None, 4, 5, shape=(2,), noise="tree")
    with pytest.raises(ValueError, match="tol must be"):
        scoreops.em_sample(MIXTURE, SDE, None, 4, 5, shape=(2,), noise="brownian", brownian_tol=0.0)
    with pytest.raises(ValueError, match="snap to the same tree point"):
        scoreops.em_sample(MIXTURE, SDE, None, 4, 5, shape=(2,), noise="brownian", brownian_tol=0.5)
