"""The virtual Brownian tree (scoreops.core.brownian): its parameters, its normals' counter layout,
the law of its increments, and the coarse/fine consistency that is its reason to exist."""
import math

import pytest
import torch
from scipy import stats

import scoreops
from scoreops.core import brownian as br
from scoreops.core import noise
from scoreops.sde import VESDE

SDE = VESDE()
L = 24  # the VE sigma range at tol 1e-6
TOP = 1 << L


def karras(points: int) -> torch.Tensor:
    """A Karras sigma grid with ``points`` noise levels, then the final sigma = 0."""
    return scoreops.sigma_grid(SDE, points, schedule="karras")


def assert_standard_normal(z: torch.Tensor, what: str) -> None:
    """Mean, variance, excess kurtosis within 6 standard errors of N(0, 1), and a KS test."""
    x = z.double().flatten()
    n = x.numel()
    mean, var = float(x.mean()), float(x.var())
    kurt = float(((x - mean) ** 4).mean()) / var ** 2 - 3.0
    # The kurtosis error is doubled for Box-Muller pairs sharing their radius.
    assert abs(mean) < 6 / math.sqrt(n), f"{what}: mean {mean}"
    assert abs(var - 1) < 6 * math.sqrt(2 / n), f"{what}: variance {var}"
    assert abs(kurt) < 12 * math.sqrt(24 / n), f"{what}: excess kurtosis {kurt}"
    assert stats.kstest(x.numpy(), "norm").pvalue > 1e-6, what


def correlation(u: torch.Tensor, v: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([u.double().flatten(), v.double().flatten()]))[0, 1])


def test_tree_comes_from_the_grid_ends_not_the_step_count():
    trees = {br.BrownianTree.from_grid(karras(n)) for n in (5, 9, 17, 40)}
    assert len(trees) == 1
    tree = trees.pop()
    grid = karras(9)
    assert (tree.t_lo, tree.t_hi) == (float(grid[grid > 0].min()), float(grid.max()))
    assert tree.depth == L == math.ceil(math.log2((tree.t_hi - tree.t_lo) / 1e-6))
    leaf = (tree.t_hi - tree.t_lo) / tree.cells
    assert leaf <= 1e-6 < 2 * leaf
    # The tutorial's t grid [eps, 1] in t: same rule, its own range.
    t_tree = br.BrownianTree.from_grid(torch.linspace(1.0, 1e-3, 500, dtype=torch.float64))
    assert (t_tree.t_lo, t_tree.t_hi, t_tree.depth) == (1e-3, 1.0, 20)
    assert br.BrownianTree.from_grid(grid, tol=1e-3).depth == 14


def test_grid_table_snaps_each_point_and_marks_the_final_denoise():
    grid = karras(12)
    tree = br.BrownianTree.from_grid(grid)
    q = tree.grid_table(grid)
    assert q.dtype == torch.int64 and q.shape == grid.shape
    assert int(q[0]) == TOP and int(q[-2]) == 0 and int(q[-1]) == br.NO_POINT
    assert bool((q[1:-1] < q[:-2]).all())
    leaf = (tree.t_hi - tree.t_lo) / tree.cells
    assert float((tree.time(q[:-1]) - grid[:-1]).abs().max()) <= 0.5 * leaf * (1 + 1e-9)


def test_node_normals_follow_the_documented_counter(seed):
    assert br.BROWNIAN_LANE >= 1 << 31  # the step stream's lanes are all below 2**31
    assert br.BROWNIAN_LANE not in (noise.LANE_PREDICTOR, noise.PRIOR_LANE, noise.corrector_lane(0))
    batch, numel, offset, node = 3, 10, 5, 12345
    got = br.node_normal(seed, node, batch, numel, offset)
    j = torch.arange(numel)
    i = torch.arange(batch).view(-1, 1) + offset
    words = noise.philox4x32(seed, j // 4, i, node, 0x80000000)
    u = noise.uniform_from_word(torch.stack(words, -1))  # (batch, numel, 4): element j takes word pair of j % 4
    n0, n1 = noise.box_muller(u[..., 0], u[..., 1])
    n2, n3 = noise.box_muller(u[..., 2], u[..., 3])
    expected = torch.stack([n0, n1, n2, n3], -1).gather(-1, (j % 4).expand(batch, numel).unsqueeze(-1))[..., 0]
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    step = noise.philox_normal(seed, node, noise.LANE_PREDICTOR, batch, numel, offset)
    assert not torch.allclose(got, step)


@pytest.mark.parametrize("q_from,q_to", [
    (1, 0),  # one leaf, at t_lo
    (TOP, TOP - 1),  # one leaf, at t_hi
    (TOP, 0),  # the whole range
    (0, TOP),  # forward in time
    (9_876_543, 1_234_567),
    (8_388_609, 8_388_607),  # two leaves across the middle: parts at the root
    (12_582_913, 4_194_303),
])
def test_increments_are_standard_normal(seed, q_from, q_to):
    z = br.brownian_increment(seed, q_from, q_to, L, 32, 2048)
    assert z.shape == (32, 2048) and z.dtype == torch.float32
    assert_standard_normal(z, f"increment {q_from} -> {q_to}")


def test_consecutive_increments_are_independent(seed):
    grid = karras(12)
    tree = br.BrownianTree.from_grid(grid)
    q = tree.grid_table(grid)[:-1].tolist()
    z = torch.stack([tree.increment(seed, a, b, 16, 1024, dtype=torch.float64) for a, b in zip(q, q[1:])])
    bound = 6 / math.sqrt(z[0].numel())
    for k in range(len(z) - 1):
        assert abs(correlation(z[k], z[k + 1])) < bound, f"steps {k}, {k + 1}"
        assert abs(correlation(z[k] ** 2, z[k + 1] ** 2)) < 2 * bound, f"steps {k}, {k + 1} (squares)"
    assert_standard_normal(z, "all steps")


@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
def test_fine_grid_through_the_coarse_points_sums_to_the_coarse_increments(seed, dtype, atol):
    coarse, fine = karras(9), karras(17)
    tree = br.BrownianTree.from_grid(fine)
    assert tree == br.BrownianTree.from_grid(coarse)
    qc, qf = tree.grid_table(coarse)[:-1], tree.grid_table(fine)[:-1]
    assert torch.equal(qf[::2], qc)
    batch, numel, offset = 3, 257, 11
    for i in range(len(qc) - 1):
        zc = tree.increment(seed, int(qc[i]), int(qc[i + 1]), batch, numel, offset, dtype=dtype)
        dt = [float(tree.time(qf[k]) - tree.time(qf[k + 1])) for k in (2 * i, 2 * i + 1)]
        parts = [tree.increment(seed, int(qf[k]), int(qf[k + 1]), batch, numel, offset, dtype=dtype)
                 for k in (2 * i, 2 * i + 1)]
        summed = (math.sqrt(dt[0]) * parts[0] + math.sqrt(dt[1]) * parts[1]) / math.sqrt(dt[0] + dt[1])
        torch.testing.assert_close(summed, zc, rtol=0, atol=atol)


def test_increment_from_the_parting_node_matches_the_descent(seed):
    pairs = [(TOP, 0), (0, TOP), (TOP, 5), (3, TOP), (0, 1), (8_388_609, 8_388_607)]
    pairs += [tuple(torch.randint(0, TOP + 1, (2,)).tolist()) for _ in range(6)]
    for a, b in pairs:
        if a == b:
            continue
        w = {q: br.brownian_w(seed, q, L, 2, 64, 7) for q in (a, b)}
        z = br.brownian_increment(seed, a, b, L, 2, 64, 7, dtype=torch.float64)
        torch.testing.assert_close(z, (w[b] - w[a]) / math.sqrt(abs(b - a)), rtol=0, atol=1e-9)
    assert torch.equal(br.brownian_w(seed, 0, L, 2, 64), torch.zeros(2, 64, dtype=torch.float64))
    top = br.brownian_w(seed, TOP, L, 2, 64)
    torch.testing.assert_close(top, 2 ** (L / 2) * br.node_normal(seed, 0, 2, 64).double(), rtol=1e-12, atol=0)


def test_descent_gives_brownian_motion(seed):
    tree = br.BrownianTree.from_range(0.5, 4.5, tol=1e-3)
    q = tree.snap(torch.tensor([0.5, 1.0, 2.0, 4.5]))
    w = torch.stack([tree.value(seed, int(p), 16, 1024) for p in q])
    t = tree.time(q)
    # W(t) - W(t_lo) ~ N(0, t - t_lo); increments over disjoint intervals independent.
    for k in range(1, len(q)):
        assert_standard_normal((w[k] - w[k - 1]) / math.sqrt(t[k] - t[k - 1]), f"W({float(t[k])}) - W({float(t[k - 1])})")
    assert abs(correlation(w[1] - w[0], w[2] - w[1])) < 6 / math.sqrt(w[0].numel())


def test_float32_keeps_its_accuracy_on_one_leaf(seed):
    exact = br.brownian_increment(seed, 5_000_001, 5_000_000, L, 4, 512, dtype=torch.float64)
    z = br.brownian_increment(seed, 5_000_001, 5_000_000, L, 4, 512)
    torch.testing.assert_close(z.double(), exact, rtol=0, atol=1e-5)


def test_direction_flips_the_sign(seed):
    fwd = br.brownian_increment(seed, 77, 123_456, L, 2, 33)
    back = br.brownian_increment(seed, 123_456, 77, L, 2, 33)
    assert torch.equal(back, -fwd)


def expected_normals(a: int, b: int, depth: int) -> int:
    """The documented count, written out independently of the module."""
    a, b = min(a, b), max(a, b)

    def tz(q):
        return depth if q == 0 else (q & -q).bit_length() - 1

    if b == 1 << depth:
        return 1 + max(0, depth - tz(a))
    c = 0
    while c < depth and (a >> (depth - 1 - c)) == (b >> (depth - 1 - c)):
        c += 1
    return 2 + c + max(0, depth - 1 - c - tz(a)) + (depth - 1 - c - tz(b))


def test_normals_per_element_counts_the_nodes_actually_drawn(seed, monkeypatch):
    drawn = set()
    original = br.node_normal

    def counting(seed_, node, *args):
        drawn.add(node)
        return original(seed_, node, *args)

    monkeypatch.setattr(br, "node_normal", counting)
    pairs = [(TOP, 0), (0, 1), (1, 0), (TOP, TOP - 1), (8_388_609, 8_388_607), (3, 5)]
    pairs += [tuple(torch.randint(0, TOP + 1, (2,)).tolist()) for _ in range(12)]
    for a, b in pairs:
        if a == b:
            continue
        drawn.clear()
        br.brownian_increment(seed, a, b, L, 1, 4)
        count = br.normals_per_element(a, b, L)
        assert count == len(drawn) == expected_normals(a, b, L) <= 2 * L, (a, b)
    assert br.normals_per_element(8_388_609, 8_388_607, L) == 2 * L  # parts at the root, odd ends: the most
    assert br.normals_per_element(TOP, 0, L) == 1


def test_same_sample_same_increments_whatever_the_batch_and_offset(seed):
    a, b = 9_000_001, 8_999_000
    big = br.brownian_increment(seed, a, b, L, 6, 37, sample_offset=10)
    for k in (0, 3, 5):
        one = br.brownian_increment(seed, a, b, L, 1, 37, sample_offset=10 + k)
        torch.testing.assert_close(one[0], big[k], rtol=1e-6, atol=1e-6)
    wider = br.brownian_increment(seed, a, b, L, 2, 101, sample_offset=13)
    torch.testing.assert_close(wider[:, :37], big[3:5], rtol=1e-6, atol=1e-6)


def test_seeds_samples_and_elements_are_independent(seed):
    a, b = 1_000_003, 999_001
    z = br.brownian_increment(seed, a, b, L, 64, 1024, dtype=torch.float64)
    other = br.brownian_increment((seed + 1) % (1 << 64), a, b, L, 64, 1024, dtype=torch.float64)
    bound = 6 / math.sqrt(z.numel() / 2)
    assert abs(correlation(z, other)) < bound / math.sqrt(2)
    assert abs(correlation(z[0::2], z[1::2])) < bound  # samples
    assert abs(correlation(z[:, 0::2], z[:, 1::2])) < bound  # elements (Box-Muller pairs)
    assert abs(correlation(z[:, 0::4], z[:, 2::4])) < bound  # elements (the two pairs of a group)
    assert abs(correlation(z[:, 0::2] ** 2, z[:, 1::2] ** 2)) < 2 * bound


@pytest.mark.parametrize("call,match", [
    (lambda: br.brownian_increment(0, -1, 3, L, 1, 4), "q_from must lie in"),
    (lambda: br.brownian_increment(0, 0, TOP + 1, L, 1, 4), "q_to must lie in"),
    (lambda: br.brownian_increment(0, 5, 5, L, 1, 4), "must differ"),
    (lambda: br.brownian_increment(0, 0.5, 3, L, 1, 4), "q_from must be an int"),
    (lambda: br.brownian_increment(0, 0, 3, 33, 1, 4), "L must be at most 32"),
    (lambda: br.brownian_increment(0, 0, 3, L, 0, 4), "batch must be an int >= 1"),
    (lambda: br.brownian_increment(0, 0, 3, L, 1, 4, sample_offset=2**32), "2\\*\\*32"),
    (lambda: br.brownian_increment(0, 0, 3, L, 1, 4, dtype=torch.int32), "floating"),
    (lambda: br.normals_per_element(3, 3, L), "must differ"),
    (lambda: br.BrownianTree.from_range(1.0, 1.0), "t_lo < t_hi"),
    (lambda: br.BrownianTree.from_range(2.0, 1.0), "t_lo < t_hi"),
    (lambda: br.BrownianTree.from_range(0.1, 1.0, tol=0.0), "tol must be a positive"),
    (lambda: br.BrownianTree.from_range(0.1, 1.0, tol=-1e-6), "tol must be a positive"),
    (lambda: br.BrownianTree.from_range(0.1, 1.0, tol=float("nan")), "tol must be a positive"),
    (lambda: br.BrownianTree.from_range(0.0, 1e4, tol=1e-9), "deeper than 32"),
    (lambda: br.BrownianTree.from_grid([1.0, 0.0]), "two distinct positive"),
    (lambda: br.BrownianTree.from_grid([1.0, -0.5, 0.1]), "finite and >= 0"),
    (lambda: br.BrownianTree.from_range(0.1, 1.0).snap([1.5]), "must lie in the tree"),
    (lambda: br.BrownianTree.from_range(0.1, 1.0, tol=0.1).grid_table([1.0, 0.99, 0.1]), "snap to the same"),
])
def test_bad_inputs_raise_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
