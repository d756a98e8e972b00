"""Triton-only concerns: tiles that cross samples, the chunk loop of the norm reduction, counter
wrap-around, rounding to half precision, the ops' own argument checks, Inductor and CUDA graphs.

Parity of every op with the torch reference on every backend lives in test_ops.py and test_noise.py.
"""
import importlib

import pytest
import torch
from conftest import skip_unless_runnable

from scoreops import ops
from scoreops.core import checks
from scoreops.ops import torch_ops

DEVICES = [pytest.param("cpu", id="triton-interp"), pytest.param("cuda", id="triton-cuda", marks=pytest.mark.cuda)]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
T = torch.ops.scoreops


def _kernels(module: str, device: str):
    """The module ``scoreops.kernels.<module>``; skips where Triton cannot run on ``device``."""
    skip_unless_runnable("triton", device)
    ops.resolve_backend("triton", device)  # imports scoreops.kernels, which registers the ops
    return importlib.import_module(f"scoreops.kernels.{module}")


def _counters(seed: int, step: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    device = torch.device(device)
    return checks.as_counter("seed", seed, device), checks.as_counter("step", step, device)


@pytest.mark.parametrize("device", DEVICES)
def test_small_tiles_crossing_samples_and_partial_groups(device, seed, monkeypatch):
    # 4 (sample, group) pairs per program: most tiles hold the end of one sample, with its
    # partial group (37 = 4 * 9 + 1 elements), and the start of the next.
    for module in ("sde_step", "philox"):
        monkeypatch.setattr(_kernels(module, device), "BLOCK_PAIRS", 4)
    x = torch.randn(3, 37, device=device)
    s = torch.randn_like(x)
    a, b, c = torch.rand(3, device=device), torch.rand(1, device=device), torch.rand(3, 37, device=device)
    seed_t, step_t = _counters(seed, 5, device)
    got = T.triton_sde_step(x, s, a, b, c, seed_t, step_t, 1, 7, True)
    want = torch_ops.sde_step(x.cpu(), s.cpu(), a.cpu(), b.cpu(), c.cpu(), seed_t.cpu(), step_t.cpu(), 1, 7, True)
    torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=1e-5)
    bits = T.triton_philox_bits(seed_t, step_t, 1, 7, 3, 37)
    assert torch.equal(bits.cpu(), torch_ops.philox_bits(seed_t.cpu(), step_t.cpu(), 1, 7, 3, 37))


@pytest.mark.parametrize("device", DEVICES)
def test_norm_programs_loop_over_chunks_beyond_the_grid_limit(device, seed, monkeypatch):
    module = _kernels("sample_norms", device)
    # 101 elements = 26 groups = 7 chunks of 4 groups, summed by 3 programs per sample.
    monkeypatch.setattr(module, "BLOCK_PAIRS", 4)
    monkeypatch.setattr(module, "MAX_CHUNK_PROGRAMS", 3)
    s = torch.randn(2, 101, device=device).to(torch.bfloat16)
    seed_t, step_t = _counters(seed, 9, device)
    got = T.triton_sample_sq_norms(s, seed_t, step_t, 2, 0, True)
    z = torch_ops.philox_normal(seed_t.cpu(), step_t.cpu(), 2, 0, 2, 101).double()
    s64 = s.cpu().double()
    want = torch.stack([(s64 * s64).sum(1), (z * z).sum(1)], 1)
    torch.testing.assert_close(got.cpu().double(), want, rtol=1e-5, atol=0)


# numpy, under the interpreter, warns about inf * 0 in masked lanes and inf cast to float16.
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_results_round_to_nearest_even_like_torch(device, dtype):
    _kernels("sde_step", device)
    # float32 values halfway between two bfloat16 / float16 neighbours, specials, and any magnitude.
    bf16_ties = torch.randint(-2**15, 2**15, (256,), dtype=torch.int32) * 65536 + 32768
    f16_ties = torch.randn(256).half().float().view(torch.int32) | 0x1000
    specials = torch.tensor([float("nan"), float("inf"), -float("inf"), 3.3961e38, 65520.0, -0.0])
    a = torch.cat([bf16_ties.view(torch.float32), f16_ties.view(torch.float32), specials,
                   torch.randn(256) * 10.0 ** torch.randint(-30, 30, (256,))]).to(device)
    # x + a * s with x = 0, s = 1 is a itself in float32, so the cast to dtype alone decides.
    x, s = torch.zeros(a.numel(), dtype=dtype, device=device), torch.ones(a.numel(), dtype=dtype, device=device)
    seed_t, step_t = _counters(0, 0, device)
    got = T.triton_sde_step(x, s, a, a, a, seed_t, step_t, 0, 0, False)
    want = a.to(dtype)
    assert torch.equal(got.isnan(), want.isnan())
    assert torch.equal(got[~want.isnan()], want[~want.isnan()])


@pytest.mark.parametrize("device", DEVICES)
def test_ops_check_their_own_arguments(device):
    _kernels("sde_step", device)
    x = torch.randn(4, 3, device=device)
    a = torch.rand(1, device=device)
    seed_t, step_t = _counters(1, 0, device)
    with pytest.raises(TypeError, match="a must be a float32 tensor"):
        T.triton_sde_step(x, x, a.double(), a, a, seed_t, step_t, 0, 0, True)
    with pytest.raises(ValueError, match="b must be one value, one per sample"):
        T.triton_sde_step_(x, x, a, torch.rand(5, device=device), a, seed_t, step_t, 0, 0, True)
    with pytest.raises(ValueError, match="s has shape"):
        T.triton_sde_step(x, x[:, :2], a, a, a, seed_t, step_t, 0, 0, True)
    with pytest.raises(TypeError, match="seed must be a 1-element int64 tensor"):
        T.triton_sample_sq_norms(x, seed_t.int(), step_t, 0, 0, True)
    with pytest.raises(ValueError, match="batch must be non-negative"):
        T.triton_philox_normal(seed_t, step_t, 0, 0, -1, 3)
    with pytest.raises(ValueError, match="at most 8 Runge-Kutta stages"):
        T.triton_rk_combine(x, [x] * 9, [1.0] * 9, 0.1)
    with pytest.raises(ValueError, match="one coefficient per stage"):
        T.triton_rk_error_sq(x, x, [x, x], [1.0], 0.1, 1e-3, 1e-3)


@pytest.mark.parametrize("device", DEVICES)
def test_samples_too_long_for_int32_element_indices_are_refused(device, monkeypatch):
    # The kernels index the elements of one sample with int32; shrink that limit to a testable size.
    common = _kernels("_common", device)
    monkeypatch.setattr(common, "MAX_INDEX", 64)
    x = torch.randn(1, 65, device=device)
    a = torch.rand(1, device=device)
    seed_t, step_t = _counters(1, 0, device)
    with pytest.raises(ValueError, match="elements per sample is too large"):
        T.triton_sde_step(x, x, a, a, a, seed_t, step_t, 0, 0, True)
    with pytest.raises(ValueError, match="elements per sample is too large"):
        T.triton_sample_sq_norms(x, seed_t, step_t, 0, 0, True)
    with pytest.raises(ValueError, match="elements per sample is too large"):
        T.triton_philox_normal(seed_t, step_t, 0, 0, 1, 65)
    T.triton_sde_step(x[:, :64], x[:, :64], a, a, a, seed_t, step_t, 0, 0, True)


@needs_cuda
@pytest.mark.cuda
def test_cpu_tensors_are_refused_outside_the_interpreter():
    module = _kernels("sde_step", "cuda")
    if module.INTERPRETED:
        pytest.skip("Triton runs in its interpreter here")
    seed_t, step_t = _counters(1, 0, "cpu")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        T.triton_philox_normal(seed_t, step_t, 0, 0, 2, 3)


@needs_cuda
@pytest.mark.cuda
def test_cuda_graph_replays_draw_the_noise_of_the_current_step(seed):
    _kernels("sde_step", "cuda")
    x0 = torch.randn(4, 3, 9, 9, device="cuda")
    x, s = x0.clone(), torch.randn_like(x0)
    a, b, c = (torch.rand(4, device="cuda") for _ in range(3))
    seed_t, step_t = _counters(seed, 0, "cuda")

    def step_and_norms():
        T.triton_sde_step_(x, s, a, b, c, seed_t, step_t, 0, 0, True)
        return T.triton_sample_sq_norms(s, seed_t, step_t, 1, 0, True)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # compile the kernels before capture
        step_and_norms()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        norms = step_and_norms()
    for k in (3, 4):
        x.copy_(x0)
        step_t.fill_(k)
        graph.replay()
        torch.testing.assert_close(x, torch_ops.sde_step(x0, s, a, b, c, seed_t, step_t, 0, 0, True),
                                   rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(norms, torch_ops.sample_sq_norms(s, seed_t, step_t, 1, 0, True))


@needs_cuda
@pytest.mark.cuda
def test_inductor_compiles_the_triton_ops(seed):
    _kernels("rk", "cuda")
    y = torch.randn(3, 50, device="cuda")
    ks = [torch.randn_like(y) for _ in range(3)]
    seed_t, step_t = _counters(seed, 1, "cuda")

    def update(y, k0, k1, k2):
        y_new = T.triton_rk_combine(y, [k0, k1, k2], [0.25, 0.0, 0.5], 0.1)
        err = T.triton_rk_error_sq(y, y_new, [k0, k1, k2], [1.0, -1.0, 0.5], 0.1, 1e-3, 1e-3)
        noisy = T.triton_sde_step(y_new, k0, err.reshape(1), err.reshape(1), err.reshape(1), seed_t, step_t, 0, 0, True)
        return noisy, err

    compiled = torch.compile(update, fullgraph=True)
    for got, want in zip(compiled(y, *ks), update(y, *ks)):
        torch.testing.assert_close(got, want)
