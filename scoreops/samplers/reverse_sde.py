"""Drop-in samplers for the VE SDE whose per-step updates are fused ops.

:func:`em_sample`, :func:`milstein_sample`, :func:`pc_sample` and :func:`ode_sample` take the
leading arguments of the well-known tutorial's samplers and return what they return, the mean
of the last step. Each step of the reverse SDE is one call of the score model and one fused op
(:func:`scoreops.ops.sde_step`; the PC corrector is :func:`scoreops.ops.langevin_correct`),
with its noise drawn inside the op from the scoreops noise stream:

* the prior sample x(1) takes lane :data:`scoreops.core.noise.PRIOR_LANE` at stream step 0;
* loop step k (k = 0 at t = 1) takes stream step k: lane 0 for the predictor, lane 1 + r for
  the r-th corrector step.

With ``noise="brownian"`` the predictor's z of step k is instead the normalised increment of one
Brownian path W over the step, ``(W(t_{k+1}) - W(t_k)) / sqrt|t_{k+1} - t_k|`` with the time t as
the tree variable (:mod:`scoreops.core.brownian`): on one grid the law is the same, and since W is
a fixed function of (seed, sample, element, t), grids through the same times walk the same path,
so the same seed with 20 and 40 steps gives nearly the same samples. The corrector's Langevin
noise stays i.i.d.

So the same ``seed`` draws the same noise on every backend, and sample i's noise does not depend
on how many others are drawn beside it. Its result is bit-identical across batch sizes, shards
and thread counts within one backend when the score model is itself batch-invariant; a conv net's
float32 rounding depends on the batch and thread count, so there results agree to rounding (for
:func:`pc_sample` this needs ``per_sample=True``, since the tutorial's corrector step size is a
batch mean; the adaptive :func:`ode_sample` shares its step sizes across the batch).

On CUDA the whole loop, score model included, is captured once as a CUDA graph and replayed
(``cuda_graph``); the time schedule, the step coefficients, the seed and the step counters live
in device tensors, so a replay with a new seed draws new noise and the loop has no host sync.
"""
from __future__ import annotations


import torch

from .. import ops
from ..core.brownian import DEFAULT_TOL, NO_POINT, BrownianTree
from ..core.checks import check_bool, check_choice, check_int, check_positive
from .cuda_graph import run_graphed, use_graph
from .inputs import check_eps, compiled, sampling_device, seed_tensor, starting_sample
from .loop import Loop, Plan, aligned_rows
from .schedule import SIGMA_SCHEDULES, Schedule, time_grid
from .sigma_space import NOISE_KINDS, check_sigmas

PREDICTORS = ("euler_maruyama", "reverse_diffusion", "milstein")
CORRECTIONS = ("time", "ito")


def _predictor_coefs(schedule: Schedule, ts: torch.Tensor, dt: torch.Tensor, predictor: str, correction: str):
    """Per-step (a, b, c) of the predictor, float64 (N,) each, for steps dt (N,) (docs/design.md, "The samplers")."""
    t = ts.to(torch.float64)
    if predictor == "reverse_diffusion":
        # Ancestral VE step: G**2 = std(t)**2 - std(t - dt)**2, with std(0) = 0 below the grid.
        var = schedule.std(t) ** 2 - schedule.std((t - dt).clamp_min(0.0)) ** 2
        return var, var.sqrt(), torch.zeros_like(t)
    g = schedule.g(t)
    a, b = g * g * dt, g * dt.sqrt()
    if predictor == "milstein" and correction == "time":
        return a, b, g * schedule.dg_dt(t) * (dt / 2)
    # Ito-Milstein: dg/dx = 0 for a diffusion that does not depend on x, which is EM.
    return a, b, torch.zeros_like(t)


def time_steps(schedule: Schedule, num_steps: int, eps: float, float64_grid: bool, grid: str | None, sigmas,
               rho: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The model's times (N,) float32, the steps dt (N,) float64 of a reverse-SDE run, and the
    time of its final denoise: where the last step lands on a noise-level grid, eps on the tutorial's.

    ``grid`` None is the tutorial's: ``linspace(1, eps, num_steps)``, every step dt = ts[0] - ts[1]
    (the last one goes below eps). Otherwise the noise levels of ``sigmas``, or ``num_steps + 1``
    levels of the ``grid`` schedule, are mapped to times t(sigma): step k goes from t_k to t_{k+1}.
    """
    return _time_grid(schedule, num_steps, eps, float64_grid, grid, sigmas, rho)[:3]


def _time_grid(schedule: Schedule, num_steps: int, eps: float, float64_grid: bool, grid: str | None, sigmas,
               rho: float) -> tuple[torch.Tensor, torch.Tensor, float, torch.Tensor]:
    """:func:`time_steps`, and the grid's times in float64 from t = 1 down: the tutorial's
    ``linspace(1, eps, N)`` (its last step, below eps, takes no noise), or the N + 1 times t(sigma)."""
    if grid is None and sigmas is None:
        ts, dt = time_grid(num_steps, eps, float64_grid)
        return (ts, torch.full((num_steps,), dt, dtype=torch.float64), eps,
                torch.linspace(1.0, eps, num_steps, dtype=torch.float64))
    if sigmas is not None:
        levels = check_sigmas(sigmas)
        if levels[-1] == 0:
            raise ValueError("sigmas of a reverse-SDE sampler must be positive; pass denoise=True to end with "
                             "the Tweedie denoise instead of a last 0")
    else:
        levels = schedule.sigmas(check_choice("schedule", grid, SIGMA_SCHEDULES), num_steps + 1, eps, rho)
    times = schedule.time_of_std(levels).to(torch.float64)
    return times[:-1].to(torch.float32), times[:-1] - times[1:], float(times[-1]), times


def brownian_path(times: torch.Tensor, num_steps: int, tol) -> tuple[torch.Tensor, int]:
    """The predictor's Brownian path over a t grid: the int64 table of tree coordinates, one per
    grid point and ``num_steps + 1`` in all (:data:`~scoreops.core.brownian.NO_POINT` pads the
    tutorial grid's end, below eps, whose step takes no noise), and the tree's depth.

    The tree spans the grid's ends, so it depends on eps and ``tol`` but not on the step count.
    """
    tree = BrownianTree.from_grid(times, tol)
    table = tree.grid_table(times)
    return torch.cat([table, table.new_full((num_steps + 1 - len(table),), NO_POINT)]), tree.depth


def make_plan(schedule, ts, dts, t_end, batch, device, seed, predictor, correction, denoise,
              path: torch.Tensor | None = None, numel: int | None = None) -> Plan:
    """The device plan of the steps (ts, dts); with ``denoise`` a last row ``x + std(t_end)**2 s(x, t_end)``;
    ``path``, the Brownian table of :func:`brownian_path` (None for i.i.d. noise), goes to the device,
    with a NaN-filled carry buffer of x's ``numel`` elements (needed with a path)."""
    if path is not None and not (isinstance(numel, int) and numel > 0):
        raise ValueError(f"a Brownian path needs the carry's element count numel > 0, got {numel!r}")
    a, b, c = _predictor_coefs(schedule, ts, dts, predictor, correction)
    if denoise:
        t_end = torch.tensor([t_end], dtype=torch.float64)
        ts = torch.cat([ts, t_end.to(torch.float32)])
        zero = torch.zeros(1, dtype=torch.float64)
        a, b, c = torch.cat([a, schedule.std(t_end) ** 2]), torch.cat([b, zero]), torch.cat([c, zero])
    a, b, c = (aligned_rows(v.to(device=device, dtype=torch.float32).reshape(-1, 1)) for v in (a, b, c))
    return Plan(t=aligned_rows(ts.to(device).reshape(-1, 1).repeat(1, batch)), a=a, b=b, c=c,
                steps=aligned_rows(torch.arange(len(ts), dtype=torch.int64, device=device).reshape(-1, 1)),
                seed=seed, path=None if path is None else path.to(device),
                carry=None if path is None else torch.full((numel,), float("nan"), device=device))


def _sample(name, score_model, marginal_prob_std, diffusion_coeff, batch_size, num_steps, device, eps, *, shape,
            seed, x_T, sample_offset, backend, cuda_graph, progress, schedule=None, sigmas=None, rho=7.0,
            denoise=False, predictor="euler_maruyama", correction="time", corrector_steps=0, snr=0.16,
            noise_norm="fixed", per_sample=False, float64_grid=False, noise="iid",
            brownian_tol=DEFAULT_TOL, compile=False) -> torch.Tensor:
    """The SDE samplers' common body: check arguments, draw x(1), plan, loop, check the result."""
    score_model = compiled(score_model, compile)
    num_steps = check_int("num_steps", num_steps, 1 if schedule is not None or sigmas is not None else 2)
    eps = check_eps(eps)
    sample_offset = check_int("sample_offset", sample_offset, 0)
    per_sample = check_bool("per_sample", per_sample)
    denoise = check_bool("denoise", denoise)
    check_choice("noise", noise, NOISE_KINDS)
    sde = Schedule(marginal_prob_std, diffusion_coeff)
    ts, dts, t_end, times = _time_grid(sde, num_steps, eps, float64_grid, schedule, sigmas, rho)
    path, depth = brownian_path(times, len(dts), brownian_tol) if noise == "brownian" else (None, 0)
    device = sampling_device(device, x_T, "x_T")
    backend = ops.resolve_backend(backend, device)
    graphed = use_graph(cuda_graph, device, backend, progress)
    seed = seed_tensor(seed, device)
    x_T = starting_sample("x_T", x_T, sde, batch_size, shape, seed, sample_offset, device, backend)
    plan = make_plan(sde, ts, dts, t_end, x_T.shape[0], device, seed, predictor, correction, denoise, path,
                     x_T.numel())
    loop = Loop(backend, len(dts), sample_offset, corrector_steps, snr, noise_norm, per_sample, denoise, noise,
                depth)
    with torch.no_grad():
        x = run_graphed(name, loop, score_model, x_T, plan, strict=cuda_graph is True) if graphed else None
        if x is None:
            x = loop.run(score_model, x_T, plan, progress)
        # One host sync for the whole run; only a failed run pays for finding the step.
        if not torch.isfinite(x).all():
            k = loop.first_nonfinite_step(score_model, x_T, plan)
            where = ("a rerun with per-step checks stayed finite (is score_model non-deterministic?)" if k is None
                     else f"first at step {k} of {loop.rows} (t = {float(plan.t[k, 0]):.4g})")
            hint = ("; the corrector's step size 2 (snr |z| / |score|)**2 is infinite where a score is all zero"
                    if corrector_steps else "")
            raise RuntimeError(f"{name}: the samples contain NaN or Inf; {where}{hint}")
    return x


def em_sample(score_model, marginal_prob_std, diffusion_coeff=None, batch_size=64, num_steps=500, device=None,
              eps=1e-3, *, schedule=None, sigmas=None, rho=7.0, denoise=False, noise="iid", brownian_tol=DEFAULT_TOL,
              shape=(1, 28, 28), seed=None, x_T=None, sample_offset=0, backend="auto", cuda_graph="auto",
              progress=False, compile=False) -> torch.Tensor:
    """Euler-Maruyama sampler of the reverse VE SDE: ``x <- x + g**2 s dt + g sqrt(dt) z``.

    Drop-in for the tutorial's ``Euler_Maruyama_sampler``.

    Args:
        score_model: ``score_model(x, t)`` with x of shape ``(B, *shape)`` and t of shape (B,),
            returning the score, of x's shape and dtype.
        marginal_prob_std: ``std(t)``: the tutorial's function, or a :class:`~scoreops.sde.VESDE`
            (then leave ``diffusion_coeff`` out). A function is called with a float64 CPU tensor
            of times, the whole grid at once; where it does not map that grid elementwise (it
            returns one value, or raises) it is called per time, with t of shape (1,).
        diffusion_coeff: ``g(t)``, the tutorial's function, called as ``marginal_prob_std`` is
            (None with a VESDE).
        batch_size: number of samples B (ignored when ``x_T`` is given).
        num_steps: steps (score evaluations): on the tutorial's grid ``linspace(1, eps, num_steps)``,
            >= 2, with every step dt = ts[0] - ts[1]; on a ``schedule`` grid, >= 1 steps between
            ``num_steps + 1`` noise levels from std(1) to std(eps).
        device: None means CUDA when available, else CPU (or x_T's device).
        eps: the last time, in (0, 1).
        schedule: None (the tutorial's time grid), or a noise-level grid, ``"karras"`` (``rho``),
            ``"log_sigma"`` or ``"uniform_t"`` (see :func:`scoreops.sigma_grid`), walked in
            t(sigma) with the step dt_k = t_k - t_{k+1}.
        sigmas: an explicit decreasing grid of positive noise levels instead (len - 1 steps).
        rho: the Karras grid's exponent.
        denoise: end with one more score evaluation, Tweedie's ``x + std(t)**2 s(x, t)`` at the
            last time (std(eps) on a noise-level grid, eps on the tutorial's).
        noise: the predictor's step noise: ``"iid"`` (default), fresh normals per step; or
            ``"brownian"``, the increments of one Brownian path in the time t over the grid's
            steps (module docstring): the same law, and the same path on any grid through the
            same times with the same seed. The tree spans the grid's first and last times (1 and
            eps on the tutorial's grid), whatever the number of steps.
        brownian_tol: the tree's leaf width, absolute, in units of t (torchsde's default 1e-6);
            each step must be wider.
        shape: shape of one sample, e.g. (1, 28, 28) or (2,) (ignored when ``x_T`` is given).
        seed: noise-stream seed (int); None draws one from torch's default generator, so
            ``torch.manual_seed`` makes runs reproducible.
        x_T: an explicit starting sample x(1) of shape (B, *shape), instead of the prior sample.
            Its dtype is the loop's dtype (float32, float16 or bfloat16).
        sample_offset: global index of sample 0, so that shards (e.g. under torchrun) draw
            disjoint samples of one seed.
        backend: op backend, see :mod:`scoreops.ops`; chosen once per call.
        cuda_graph: True captures the whole loop as a CUDA graph on first use and replays it
            after; "auto" does so on CUDA with a graph-safe backend, falling back to the plain
            loop (with a warning) where the model cannot be captured; False never does.
        progress: show a tqdm bar over the steps (plain loop only).
        compile: False, True or a ``torch.compile`` mode: sample with the score model compiled
            once per model and mode (:func:`scoreops.samplers.inputs.compiled`); on a CPU that pays
            for long or repeated runs, not for one short one.
    Returns:
        The last step's mean, a tensor of shape ``(B, *shape)``.
    Raises:
        ValueError / TypeError: bad arguments, or a model whose output does not fit x.
        RuntimeError: NaN or Inf in the samples, naming the first step where they appeared.
    """
    return _sample("em_sample", score_model, marginal_prob_std, diffusion_coeff, batch_size, num_steps, device, eps,
                   shape=shape, seed=seed, x_T=x_T, sample_offset=sample_offset, backend=backend,
                   cuda_graph=cuda_graph, progress=progress, schedule=schedule, sigmas=sigmas, rho=rho,
                   denoise=denoise, noise=noise, brownian_tol=brownian_tol, compile=compile)


def milstein_sample(score_model, marginal_prob_std, diffusion_coeff=None, batch_size=64, num_steps=500, device=None,
                    eps=1e-3, *, correction="time", schedule=None, sigmas=None, rho=7.0, denoise=False, noise="iid",
                    brownian_tol=DEFAULT_TOL, shape=(1, 28, 28), seed=None, x_T=None, sample_offset=0, backend="auto",
                    cuda_graph="auto", progress=False, compile=False) -> torch.Tensor:
    """The paper's Milstein sampler: EM plus ``1/2 g g' dt (z**2 - 1)``.

    ``correction`` chooses g':

    * ``"time"`` (default, the paper's method): ``g' = dg/dt`` at the current t; closed form for
      a VESDE, else by autograd on ``diffusion_coeff``, or by a central difference where that
      function cuts the graph (the tutorial's wraps its result in ``torch.tensor``).
      This is not an exact sampler of the reverse SDE: it adds skewed noise of variance
      ``2 (g g' dt / 2)**2``, which near t = 1 exceeds the SDE's own ``g**2 dt`` several times
      over (6.5 times at sigma = 25, 500 steps). On the 2-D mixture with weights 0.3 / 0.7 of
      ``tests/mixture.py`` it moves the weights to 0.444 / 0.556 at 100 steps, 0.374 / 0.626 at
      the default 500, 0.345 / 0.655 at 1000 and 0.330 / 0.670 at 2000 (40000 samples each,
      standard error 0.0024), and widens the modes (variances up to 18% larger at 500 steps).
      EM, and this sampler with ``"ito"``, give 0.299 / 0.701 at 500 steps.
    * ``"ito"``: the Ito-Milstein term ``g' = dg/dx``, which is zero for the VE SDE, whose
      diffusion does not depend on x: the sampler then equals :func:`em_sample` given the same
      seed, sample for sample.

    With ``noise="brownian"`` both ``z`` and the ``z**2 - 1`` term take the path's increment.
    Other arguments, the result and the errors are those of :func:`em_sample`.
    """
    check_choice("correction", correction, CORRECTIONS)
    return _sample("milstein_sample", score_model, marginal_prob_std, diffusion_coeff, batch_size, num_steps, device,
                   eps, shape=shape, seed=seed, x_T=x_T, sample_offset=sample_offset, backend=backend,
                   cuda_graph=cuda_graph, progress=progress, predictor="milstein", correction=correction,
                   schedule=schedule, sigmas=sigmas, rho=rho, denoise=denoise, noise=noise, brownian_tol=brownian_tol,
                   compile=compile)


def pc_sample(score_model, marginal_prob_std, diffusion_coeff=None, batch_size=64, num_steps=500, snr=0.16,
              device=None, eps=1e-3, *, noise_norm="fixed", corrector_steps=1, predictor="euler_maruyama",
              correction="time", per_sample=False, schedule=None, sigmas=None, rho=7.0, denoise=False, noise="iid",
              brownian_tol=DEFAULT_TOL, shape=(1, 28, 28), seed=None, x_T=None, sample_offset=0, backend="auto",
              cuda_graph="auto", progress=False, compile=False) -> torch.Tensor:
    """Predictor-corrector sampler: per step, Langevin corrector steps, then a predictor step.

    Drop-in for the tutorial's ``pc_sampler`` (corrector first, one corrector step, snr 0.16,
    and its time grid: ``np.linspace`` in float64, where EM's is ``torch.linspace`` in float32).
    The corrector is ``x <- x + e s + sqrt(2 e) z`` with ``e = 2 (snr * noise_norm / grad_norm)**2``,
    ``grad_norm`` the batch mean of the per-sample score norms.

    Args (the others, the result and the errors are those of :func:`em_sample`):
        snr: the corrector's signal-to-noise ratio, > 0.
        noise_norm: ``"fixed"``: ``sqrt(d)`` (the tutorial), or ``"sampled"``: the batch mean of
            the norms of the drawn z (score_sde, diffusers).
        corrector_steps: Langevin steps per step (>= 0); step r draws on stream lane 1 + r.
        predictor: ``"euler_maruyama"`` (the tutorial), ``"reverse_diffusion"`` (the ancestral
            VE step, ``G**2 = std(t)**2 - std(t - dt)**2``), or ``"milstein"`` (with ``correction``
            as in :func:`milstein_sample`).
        per_sample: use each sample's own norms in ``e`` instead of batch means, so that sample i
            does not depend on the rest of its batch.
        noise, brownian_tol: the predictor's noise, as :func:`em_sample`; the corrector's Langevin
            noise is i.i.d. either way (it has no time step to span).
    """
    check_choice("predictor", predictor, PREDICTORS)
    check_choice("correction", correction, CORRECTIONS)
    check_choice("noise_norm", noise_norm, ops.NOISE_NORMS)
    corrector_steps = check_int("corrector_steps", corrector_steps, 0)
    return _sample("pc_sample", score_model, marginal_prob_std, diffusion_coeff, batch_size, num_steps, device, eps,
                   shape=shape, seed=seed, x_T=x_T, sample_offset=sample_offset, backend=backend,
                   cuda_graph=cuda_graph, progress=progress, predictor=predictor, correction=correction,
                   corrector_steps=corrector_steps, snr=check_positive("snr", snr), noise_norm=noise_norm,
                   per_sample=per_sample, float64_grid=True, schedule=schedule, sigmas=sigmas, rho=rho,
                   denoise=denoise, noise=noise, brownian_tol=brownian_tol, compile=compile)
