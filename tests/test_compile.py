"""torch.compile of a sampler loop with the fused ops inside: the ops must trace (fake
implementations, no graph breaks) and the compiled loop must give the eager loop's samples."""
import pytest
import torch
from conftest import KERNEL_BACKENDS, skip_unless_runnable

from scoreops import ops
from scoreops.sde import VESDE
from scoreops.training.models import ScoreNet


@pytest.mark.parametrize("backend,device", KERNEL_BACKENDS)
def test_compiled_em_loop_matches_the_eager_loop(backend, device, seed):
    skip_unless_runnable(backend, device)
    sde = VESDE(sigma=25.0)
    model = ScoreNet(sde.marginal_prob_std, channels=(8, 16, 16, 16), embed_dim=32, padding=1).to(device).eval()
    step = ops.implementation("sde_step", ops.resolve_backend(backend, device))
    num_steps, batch = 6, 3
    ts = torch.linspace(1.0, 1e-3, num_steps, device=device)
    dt = float(ts[0] - ts[1])
    g = sde.diffusion_coeff(ts)
    a, b = (g**2 * dt).reshape(-1, 1), (g * dt**0.5).reshape(-1, 1)
    zero = torch.zeros(1, device=device)
    counters = torch.arange(num_steps, device=device).reshape(-1, 1)
    seed_t = torch.tensor([seed], device=device)

    def em_loop(x):
        for k in range(num_steps):
            s = model(x, ts[k].expand(x.shape[0]))
            x = step(x, s, a[k], b[k], zero, seed_t, counters[k], 0, 0, k < num_steps - 1)
        return x

    x_T = sde.prior_sample(batch, (1, 16, 16), seed=seed, device=device)
    # Inductor where it is cheap to compile (a GPU); on the CPU, AOT tracing alone checks the ops.
    compiler = "inductor" if device == "cuda" else "aot_eager"
    compiled = torch.compile(em_loop, fullgraph=True, backend=compiler)
    # Full float32 convolutions: eager and inductor may pick different cuDNN algorithms, whose
    # TF32 roundings (1e-3) the coefficient g**2 dt ~ 100 would lift far above the tolerance.
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        want = em_loop(x_T)
        got = compiled(x_T)
    assert torch.isfinite(want).all()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
