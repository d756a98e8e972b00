"""The CUDA-graph sampling loop against the plain loop (needs a GPU; run by benchmarks/gpu_check.sh)."""
import subprocess
import sys

import pytest
import torch
from conftest import skip_unless_runnable
from mixture import GaussianMixture2D

from scoreops import samplers
from scoreops.sde import VESDE

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

SDE = VESDE(25.0)
RUNS = {
    "em": samplers.em_sample,
    "milstein": samplers.milstein_sample,
    "pc": samplers.pc_sample,
    "pc-sampled": lambda *a, **k: samplers.pc_sample(*a, noise_norm="sampled", corrector_steps=2, **k),
    **{name: wrapper for name, (wrapper, _) in samplers.FEW_STEP_SAMPLERS.items()},
    "heun-churn": lambda *a, **k: samplers.heun_sample(*a, s_churn=1.0, **k),
}


class CountingMixture(GaussianMixture2D):
    """The mixture's score, counting the Python calls: a graph replay makes none."""

    calls = 0

    def __call__(self, x, t):
        self.calls += 1
        return self.score(x, t)


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("name", list(RUNS))
def test_graph_replay_matches_the_plain_loop(name, backend, seed):
    skip_unless_runnable(backend, "cuda")
    model, run = CountingMixture().to("cuda"), RUNS[name]
    args = (model, SDE, None, 257, 50)
    kw = dict(shape=(2,), device="cuda", backend=backend)
    plain = run(*args, seed=seed, cuda_graph=False, **kw)
    graphed = run(*args, seed=seed, cuda_graph=True, **kw)
    torch.testing.assert_close(graphed, plain)

    # A second call with a new seed replays the captured graph (no Python model calls) and
    # draws new samples, those of the plain loop with that seed.
    calls = model.calls
    replayed = run(*args, seed=seed + 1, cuda_graph=True, **kw)
    assert model.calls == calls
    torch.testing.assert_close(replayed, run(*args, seed=seed + 1, cuda_graph=False, **kw))
    assert not torch.allclose(replayed, graphed)


def test_auto_captures_on_cuda(seed):
    skip_unless_runnable("cuda", "cuda")
    model = CountingMixture().to("cuda")
    samplers.em_sample(model, SDE, None, 64, 20, shape=(2,), seed=seed, device="cuda", backend="cuda")
    calls = model.calls
    samplers.em_sample(model, SDE, None, 64, 20, shape=(2,), seed=seed + 1, device="cuda", backend="cuda")
    assert model.calls == calls


def test_auto_falls_back_when_the_model_cannot_be_captured(seed):
    skip_unless_runnable("cuda", "cuda")
    mixture = GaussianMixture2D().to("cuda")

    def syncing_model(x, t):
        if float(t[0]) > 2:  # a host sync: not capturable
            raise AssertionError
        return mixture.score(x, t)

    stream = torch.cuda.current_stream()
    with pytest.warns(RuntimeWarning, match="CUDA graph capture failed"):
        x = samplers.em_sample(syncing_model, SDE, None, 64, 20, shape=(2,), seed=seed, device="cuda", backend="cuda")
    assert torch.cuda.current_stream() == stream, "the failed capture left its stream current"
    torch.testing.assert_close(x, samplers.em_sample(syncing_model, SDE, None, 64, 20, shape=(2,), seed=seed,
                                                     device="cuda", backend="cuda", cuda_graph=False))


def test_first_graphed_run_in_a_process_captures_with_triton(tmp_path, seed):
    """Capture must find every kernel variant loaded by its warm-up: in a fresh process a variant
    first launched inside the capture would be compiled and loaded there, which CUDA refuses
    (cuda_graph=True raises when capture fails)."""
    skip_unless_runnable("triton", "cuda")
    script = f"""
import torch
from scoreops import samplers
from scoreops.sde import VESDE

def score(x, t):
    return -x / (1 + t[:, None] ** 2)

for run in (samplers.em_sample, samplers.pc_sample, samplers.dpmpp_3m_sde_sample, samplers.unipc_sample):
    kw = dict(shape=(2,), seed={seed}, device="cuda", backend="triton")
    graphed = run(score, VESDE(25.0), None, 257, 50, cuda_graph=True, **kw)
    torch.testing.assert_close(graphed, run(score, VESDE(25.0), None, 257, 50, cuda_graph=False, **kw))
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300, cwd=tmp_path)
