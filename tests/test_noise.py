"""The noise stream: the Philox reference, bit-exact words on every backend, normals within
a few ulp, and the statistics a sampler relies on."""
import math

import pytest
import torch
from conftest import ALL_BACKENDS, KERNEL_BACKENDS, skip_unless_runnable
from scipy import stats

from scoreops import ops
from scoreops.core import noise

# Philox4x32-10 known answers from the Random123 distribution (kat_vectors).
RANDOM123_KAT = [
    ((0, 0, 0, 0), 0, (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, 0xFFFFFFFFFFFFFFFF, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), 0x299F31D0_A4093822,
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("ctr,key,expected", RANDOM123_KAT)
def test_reference_philox_matches_random123(ctr, key, expected):
    assert tuple(int(w) for w in noise.philox4x32(key, *ctr)) == expected


def test_reference_uniforms_and_normals_follow_the_documented_transform():
    words = torch.tensor([0, 1, 2**31 - 1, 2**31, 2**32 - 1, 123456789], dtype=torch.int64)
    u = noise.uniform_from_word(words)
    as_int32 = [0, 1, 2**31 - 1, -(2**31), -1, 123456789]
    folded = [x if x >= 0 else -x - 1 for x in as_int32]
    expected = torch.tensor(folded, dtype=torch.float32) * torch.tensor(4.6566127342e-10, dtype=torch.float32)
    torch.testing.assert_close(u, expected, rtol=0, atol=0)
    assert float(u.min()) >= 0.0 and float(u.max()) <= 1.0
    n0, n1 = noise.box_muller(torch.tensor([0.0, 0.25]), torch.tensor([0.5, 0.125]))
    r = torch.tensor([math.sqrt(-2 * math.log(1e-7)), math.sqrt(-2 * math.log(0.25))])
    th = torch.tensor([math.pi, math.pi / 4])
    torch.testing.assert_close(n0, r * torch.cos(th))
    torch.testing.assert_close(n1, r * torch.sin(th))


@pytest.mark.parametrize("backend,device", KERNEL_BACKENDS)
@pytest.mark.parametrize("batch,numel", [(1, 1), (5, 7), (3, 1000), (2, 4097), (4, 3 * 32 * 32)])
def test_words_are_bit_exact_on_every_backend(backend, device, batch, numel, seed):
    skip_unless_runnable(backend, device)
    step, lane, offset = int(torch.randint(0, 2**31, ())), int(torch.randint(0, 4, ())), 11
    got = ops.philox_bits(batch, numel, seed=seed, step=step, lane=lane, sample_offset=offset,
                          device=device, backend=backend)
    want = ops.philox_bits(batch, numel, seed=seed, step=step, lane=lane, sample_offset=offset,
                           backend="torch")
    assert got.dtype == torch.int32 and got.shape == (batch, 4 * ((numel + 3) // 4))
    assert torch.equal(got.cpu(), want)


@pytest.mark.parametrize("backend,device", KERNEL_BACKENDS)
@pytest.mark.parametrize("step,lane,offset", [(2**32 + 5, 2**32 + 1, 2**32 - 2), (-3, 0, -1), (2**63 - 1, 7, 2**40)])
def test_counters_wrap_modulo_2_32_like_the_reference(backend, device, step, lane, offset, seed):
    skip_unless_runnable(backend, device)
    got = ops.philox_bits(3, 6, seed=seed, step=step, lane=lane, sample_offset=offset, device=device, backend=backend)
    assert torch.equal(got.cpu(), ops.philox_bits(3, 6, seed=seed, step=step, lane=lane, sample_offset=offset,
                                                  backend="torch"))


@pytest.mark.parametrize("backend,device", KERNEL_BACKENDS)
@pytest.mark.parametrize("batch,numel", [(1, 1), (5, 7), (2, 4097), (4, 3 * 32 * 32)])
def test_normals_agree_within_a_few_ulp(backend, device, batch, numel, seed):
    skip_unless_runnable(backend, device)
    step = int(torch.randint(0, 10_000, ()))
    got = ops.philox_normal(batch, numel, seed=seed, step=step, lane=0, device=device, backend=backend)
    want = ops.philox_normal(batch, numel, seed=seed, step=step, lane=0, backend="torch")
    assert got.dtype == torch.float32 and got.shape == (batch, numel)
    # A few float32 ulp of the result, plus an absolute floor for values near zero, where the
    # error is a few ulp of r (the Box-Muller radius, at most ~5.7).
    ulp = torch.finfo(torch.float32).eps
    torch.testing.assert_close(got.cpu(), want, rtol=4 * ulp, atol=4 * ulp * 6)


@pytest.mark.parametrize("backend,device", KERNEL_BACKENDS)
def test_a_clamped_uniform_gives_the_largest_radius_on_every_backend(backend, device):
    """Seed 148, step 0, lane 0 (found by a search): word 0 of group 222 of sample 15 is a
    uniform below U1_MIN, which Box-Muller clamps to it."""
    skip_unless_runnable(backend, device)
    words = ops.philox_bits(16, 4096, seed=148, step=0, lane=0, backend="torch")
    assert noise.uniform_from_word(words[15, 4 * 222].long() & 0xFFFFFFFF) < noise.U1_MIN
    got = ops.philox_normal(16, 4096, seed=148, step=0, lane=0, device=device, backend=backend)[15, 888:890].cpu()
    want = ops.philox_normal(16, 4096, seed=148, step=0, lane=0, backend="torch")[15, 888:890]
    ulp = torch.finfo(torch.float32).eps
    torch.testing.assert_close(got, want, rtol=4 * ulp, atol=4 * ulp * 6)
    largest_radius = math.sqrt(-2 * math.log(float(torch.tensor(noise.U1_MIN, dtype=torch.float32))))
    assert abs(float(got.norm()) - largest_radius) < 1e-5


def _normals(seed, batch=256, numel=4096, step=0, lane=0, offset=0):
    return noise.philox_normal(seed, step, lane, batch, numel, offset)


def test_normals_have_standard_moments_and_pass_kolmogorov_smirnov(seed):
    z = _normals(seed).double().flatten()  # 2**20 draws
    n = z.numel()
    assert abs(z.mean().item()) < 5 / math.sqrt(n)
    assert abs(z.var().item() - 1) < 5 * math.sqrt(2 / n)
    # Box-Muller has exact Gaussian tails only down to u1 = 1e-7 (|z| <= 5.68).
    assert z.abs().max().item() <= math.sqrt(-2 * math.log(1e-7)) + 1e-4
    assert stats.kstest(z.numpy(), "norm").pvalue > 1e-4


def _corr(a, b):
    a, b = a.double().flatten(), b.double().flatten()
    return torch.corrcoef(torch.stack([a, b]))[0, 1].item()


def test_no_correlation_between_neighbouring_samples_steps_lanes_and_elements(seed):
    z = _normals(seed, batch=64, numel=2048)
    n = z[1:].numel()
    bound = 5 / math.sqrt(n)
    assert abs(_corr(z[:-1], z[1:])) < bound  # neighbouring samples
    assert abs(_corr(z[:, :-1], z[:, 1:])) < bound  # neighbouring elements (incl. Box-Muller pairs)
    assert abs(_corr(z[:, 0::2], z[:, 1::2])) < bound  # the two normals of one Box-Muller pair
    z_next = _normals(seed, batch=64, numel=2048, step=1)
    assert abs(_corr(z, z_next)) < bound  # neighbouring steps
    z_lane = _normals(seed, batch=64, numel=2048, lane=1)
    assert abs(_corr(z, z_lane)) < bound  # predictor vs corrector lane
    # Squares too: Box-Muller pairs share a radius, which must not leak into neighbours.
    assert abs(_corr(z[:-1] ** 2, z[1:] ** 2)) < bound


def test_every_key_bit_matters(seed):
    base = _normals(seed, batch=2, numel=64)
    for flipped in (seed ^ 1, seed ^ (1 << 40)):
        assert not torch.equal(base, _normals(flipped, batch=2, numel=64))


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_sample_noise_does_not_depend_on_batch_size(backend, device, seed):
    skip_unless_runnable(backend, device)
    numel = 3 * 7 * 7
    big = ops.philox_normal(64, numel, seed=seed, step=5, device=device, backend=backend)
    for i in (0, 1, 37, 63):
        alone = ops.philox_normal(1, numel, seed=seed, step=5, sample_offset=i, device=device, backend=backend)
        assert torch.equal(alone[0], big[i])
