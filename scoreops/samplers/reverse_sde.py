"""Drop-in samplers for the VE SDE whose per-step updates are fused ops.

:func:`em_sample`, :func:`milstein_sample`, :func:`pc_sample` and :func:`ode_sample` take the
leading arguments of the well-known tutorial's samplers and return what they return, the mean
of the last step. Each step of the reverse SDE is one call of the score model and one fused op
(:func:`scoreops.ops.sde_step`; the PC corrector is :func:`scoreops.ops.langevin_correct`),
with its noise drawn inside the op from the scoreops noise stream:

* the prior sample x(1) takes lane :data:`scoreops.noise.PRIOR_LANE` at stream step 0;
* loop step k (k = 0 at t = 1) takes stream step k: lane 0 for the predictor, lane 1 + r for
  the r-th corrector step.

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

import math
import numbers
import warnings
import weakref
from dataclasses import dataclass, fields

import numpy as np
import torch
from tqdm.auto import tqdm

from . import noise, ops
from .checks import check_bool, check_choice, check_int, check_positive, check_sample_range
from .sde import VESDE, prior_sample

PREDICTORS = ("euler_maruyama", "reverse_diffusion", "milstein")
CORRECTIONS = ("time", "ito")


# --------------------------------------------------------------------------- the SDE's functions
class _Schedule:
    """``std(t)``, ``g(t)`` and ``dg/dt`` as float64 CPU tensors, from a VESDE or two functions."""

    def __init__(self, marginal_prob_std, diffusion_coeff):
        if isinstance(marginal_prob_std, VESDE):
            if diffusion_coeff is not None:
                raise ValueError("pass either a VESDE as marginal_prob_std (and no diffusion_coeff), "
                                 "or the two functions marginal_prob_std and diffusion_coeff")
            sde = marginal_prob_std
            self._std, self._g, self._dg_dt = sde.marginal_prob_std, sde.diffusion_coeff, sde.diffusion_coeff_dt
            return
        for name, fn in (("marginal_prob_std", marginal_prob_std), ("diffusion_coeff", diffusion_coeff)):
            if not callable(fn):
                raise TypeError(f"{name} must be a VESDE or a function of t, got {type(fn).__name__}")
        self._std, self._g, self._dg_dt = marginal_prob_std, diffusion_coeff, None

    @staticmethod
    def _eval(name: str, fn, t: torch.Tensor) -> torch.Tensor:
        """``fn`` at the float64 CPU times ``t``, as float64 of t's shape.

        ``fn`` gets the whole grid, as the tutorial's functions take a batch of times; one that
        does not map it elementwise (one value back, or an error) is called per time, with t of
        shape (1,), as the tutorial calls it with a batch of equal times.
        """
        try:
            out = _float64(fn(t))
        except Exception as e:  # a real error is raised again by the per-time call below
            if t.numel() == 1:
                raise ValueError(f"{name}(t) failed for t of shape {tuple(t.shape)}: {e}") from e
            out = None
        if out is None or out.numel() != t.numel():
            if t.numel() == 1:
                raise ValueError(f"{name}(t) must return one value per time, got shape {tuple(out.shape)} "
                                 f"for t of shape {tuple(t.shape)}")
            out = torch.cat([_Schedule._eval(name, fn, ti) for ti in t.reshape(-1, 1)])
        out = out.reshape(t.shape)
        if not torch.isfinite(out).all():
            raise ValueError(f"{name} returned non-finite values for t in [{t.min():.4g}, {t.max():.4g}]")
        return out

    def std(self, t: torch.Tensor) -> torch.Tensor:
        return self._eval("marginal_prob_std", self._std, t)

    def g(self, t: torch.Tensor) -> torch.Tensor:
        return self._eval("diffusion_coeff", self._g, t)

    def dg_dt(self, t: torch.Tensor) -> torch.Tensor:
        """dg/dt: closed form for a VESDE, else autograd, else a central difference."""
        if self._dg_dt is not None:
            return self._eval("diffusion_coeff_dt", self._dg_dt, t)
        return self._eval("the time derivative of diffusion_coeff", self._plain_dg_dt, t)

    def _plain_dg_dt(self, t: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the probe's warnings, e.g. float() of a tensor needing grad
            tg = t.clone().requires_grad_()
            try:
                raw = self._g(tg)
            except Exception:  # e.g. numpy inside diffusion_coeff, which cannot take a tensor needing grad
                raw = None
            g = None if raw is None else torch.as_tensor(raw)
            if g is not None and g.requires_grad and g.numel() == t.numel():
                # g is elementwise in t, so the gradient of the sum is g'(t) at every t.
                (dg,) = torch.autograd.grad(g.sum(), tg, allow_unused=True)
                return torch.zeros_like(t) if dg is None else dg
        # diffusion_coeff cuts the graph (the tutorial's wraps its result in torch.tensor), does
        # not take a tensor that needs grad, or is not elementwise on the grid. The step balances
        # truncation and the roundoff of the precision diffusion_coeff computes in.
        h = torch.finfo(_precision(self._g(t[:1]) if raw is None else raw)).eps ** (1 / 3)
        return (self.g(t + h) - self.g(t - h)) / (2 * h)


def _precision(v) -> torch.dtype:
    """The float type a function's value was computed in: float64 for Python floats and NumPy float64."""
    name = str(getattr(v, "dtype", "float64")).removeprefix("torch.")
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}.get(name, torch.float64)


def _float64(v) -> torch.Tensor:
    """A function's value as a float64 CPU tensor."""
    if isinstance(v, torch.Tensor):
        return v.detach().to(device="cpu", dtype=torch.float64)
    return torch.as_tensor(v, dtype=torch.float64)


# --------------------------------------------------------------------------- argument checks
#: The ODE's smallest tolerance. Its error estimates are float32 sums: on a small ScoreNet a
#: float32 state converges at 1e-10 (8,300 score calls) but at 1e-11 the step size shrinks for
#: ever, its estimate being rounding noise.
ODE_TOL_FLOOR = 1e-10


def _default_device(device, x_T: torch.Tensor | None, name: str) -> torch.device:
    """The sampling device; ``x_T`` (the starting sample, called ``name``) is checked here first."""
    if x_T is not None:
        ops.check_float(name, x_T)
    if device is None:
        device = x_T.device if x_T is not None else "cuda" if torch.cuda.is_available() else "cpu"
    device = ops.canonical_device(device)
    if device.type == "meta":
        raise ValueError("the meta device has no data to sample; use a CPU or CUDA device")
    if x_T is not None and x_T.device.type != device.type:
        raise ValueError(f"{name} is on {x_T.device} but device={device}")
    return device


def _check_eps(eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not 0 < eps < 1:
        raise ValueError(f"eps must be a float in (0, 1), got {eps!r}")
    return float(eps)


def _seed_tensor(seed, device: torch.device) -> torch.Tensor:
    """The seed as a (1,) int64 device tensor; None draws one from torch's default generator."""
    if seed is None:
        seed = int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64))
    return ops.as_counter("seed", seed, device)


def _starting_sample(name: str, x_T, schedule: _Schedule, batch_size, shape, seed, sample_offset, device,
                     backend) -> torch.Tensor:
    """``x_T`` checked, or the prior sample x(1) drawn from the stream."""
    if x_T is not None:
        if x_T.dim() < 1 or x_T.shape[0] == 0:
            raise ValueError(f"{name} must have a non-empty leading batch dimension, got shape {tuple(x_T.shape)}")
        if not torch.isfinite(x_T).all():
            raise ValueError(f"{name} contains NaN or Inf")
        check_sample_range(sample_offset, x_T.shape[0])
        return x_T.to(device)
    return prior_sample(schedule.std, batch_size, shape, seed=seed, sample_offset=sample_offset, device=device,
                        backend=backend)


def _checked(score_model):
    """score_model wrapped with checks of its output; used for its first call in a run."""
    def score(x, t):
        try:
            s = score_model(x, t)
        except RuntimeError as e:
            if isinstance(e, torch.OutOfMemoryError):
                raise
            raise ValueError(f"score_model(x, t) failed for x of shape {tuple(x.shape)} = (batch_size, *shape) and "
                             f"dtype {x.dtype}, t of dtype {t.dtype}: do shape and dtype match the model? ({e})") from e
        if not isinstance(s, torch.Tensor):
            raise TypeError(f"score_model must return a tensor, got {type(s).__name__}")
        if s.shape != x.shape:
            raise ValueError(f"score_model returned shape {tuple(s.shape)} for x of shape {tuple(x.shape)}; "
                             "the score must have x's shape")
        if s.dtype != x.dtype:
            raise TypeError(f"score_model returned {s.dtype} for x of dtype {x.dtype}; the score must have x's "
                            "dtype (pass x_T in the model's dtype)")
        if s.device != x.device:
            raise ValueError(f"score_model returned a tensor on {s.device} for x on {x.device}")
        return s
    return score


# --------------------------------------------------------------------------- the step plan
@dataclass
class _Plan:
    """Everything the loop reads per step, as device tensors (static buffers under a CUDA graph)."""

    # Each row starts on a 16-byte boundary (see _aligned_rows), so every step launches the
    # kernel variants that the warm-up before a CUDA-graph capture compiled.
    t: torch.Tensor      # (N, B) float32: the model's time input at step k
    a: torch.Tensor      # (N, 1) float32: fused-update coefficients, x + a*s + b*z + c*(z*z - 1)
    b: torch.Tensor
    c: torch.Tensor
    steps: torch.Tensor  # (N, 1) int64: stream step counter of loop step k
    seed: torch.Tensor   # (1,) int64

    def clone(self) -> _Plan:
        return _Plan(**{f.name: _aligned_rows(getattr(self, f.name)) for f in fields(self)})

    def copy_(self, other: _Plan) -> None:
        for f in fields(self):
            getattr(self, f.name).copy_(getattr(other, f.name))


def _aligned_rows(v: torch.Tensor) -> torch.Tensor:
    """A copy of v whose rows (dim 0) each start on a 16-byte boundary.

    Triton specialises a kernel on whether each pointer is 16-byte aligned. Rows of a packed
    (N, 1) float32 table are not all aligned, so step k would launch a variant of its own,
    compiled (and loaded) during CUDA-graph capture, where loading a module is not allowed.
    """
    if v.dim() < 2:
        return v.clone()
    per_16_bytes = max(1, 16 // v.element_size())
    row = v[0].numel()
    padded = -(-row // per_16_bytes) * per_16_bytes
    buffer = v.new_empty(v.shape[0], padded)
    rows = buffer[:, :row].view(v.shape)
    rows.copy_(v)
    return rows


def _time_grid(num_steps: int, eps: float, float64_grid: bool) -> tuple[torch.Tensor, float]:
    """The tutorial's grid ``linspace(1, eps, num_steps)``: the model's float32 times and the step ``dt > 0``.

    Its ``Euler_Maruyama_sampler`` makes the grid with ``torch.linspace`` in float32, its
    ``pc_sampler`` with ``np.linspace`` in float64 (``float64_grid``); both feed the model float32 times.
    """
    grid = torch.from_numpy(np.linspace(1.0, eps, num_steps)) if float64_grid else torch.linspace(1.0, eps, num_steps)
    dt = float(grid[0] - grid[1])
    if dt <= 0:
        raise ValueError(f"eps = {eps!r} is too close to 1: the grid of {num_steps} steps has dt = 0")
    return grid.to(torch.float32), dt


def _predictor_coefs(schedule: _Schedule, ts: torch.Tensor, dt: float, predictor: str, correction: str):
    """Per-step (a, b, c) of the predictor, float64 (N,) each (DESIGN.md section 2)."""
    t = ts.to(torch.float64)
    if predictor == "reverse_diffusion":
        # Ancestral VE step: G**2 = std(t)**2 - std(t - dt)**2, with std(0) = 0 below the grid.
        var = schedule.std(t) ** 2 - schedule.std((t - dt).clamp_min(0.0)) ** 2
        return var, var.sqrt(), torch.zeros_like(t)
    g = schedule.g(t)
    a, b = g * g * dt, g * math.sqrt(dt)
    if predictor == "milstein" and correction == "time":
        return a, b, g * schedule.dg_dt(t) * (dt / 2)
    # Ito-Milstein: dg/dx = 0 for a diffusion that does not depend on x, which is EM.
    return a, b, torch.zeros_like(t)


def _make_plan(schedule, num_steps, eps, batch, device, seed, predictor, correction, float64_grid) -> _Plan:
    ts, dt = _time_grid(num_steps, eps, float64_grid)
    a, b, c = (_aligned_rows(v.to(device=device, dtype=torch.float32).reshape(-1, 1))
               for v in _predictor_coefs(schedule, ts, dt, predictor, correction))
    return _Plan(t=_aligned_rows(ts.to(device).reshape(-1, 1).repeat(1, batch)), a=a, b=b, c=c,
                 steps=_aligned_rows(torch.arange(num_steps, dtype=torch.int64, device=device).reshape(-1, 1)),
                 seed=seed)


# --------------------------------------------------------------------------- the loop
class _Loop:
    """The reverse-time loop: per step, ``corrector_steps`` Langevin steps, then one predictor step."""

    def __init__(self, backend: str, num_steps: int, sample_offset: int, corrector_steps: int = 0,
                 snr: float = 0.16, noise_norm: str = "fixed", per_sample: bool = False):
        self.backend, self.num_steps, self.sample_offset = backend, num_steps, sample_offset
        self.corrector_steps, self.snr, self.noise_norm, self.per_sample = corrector_steps, snr, noise_norm, per_sample
        self._sde_step = ops.op("sde_step", backend)

    @property
    def key(self) -> tuple:
        return (self.backend, self.num_steps, self.sample_offset, self.corrector_steps, self.snr, self.noise_norm,
                self.per_sample)

    def step(self, x: torch.Tensor, score, k: int, plan: _Plan) -> torch.Tensor:
        t, step = plan.t[k], plan.steps[k]
        for r in range(self.corrector_steps):
            x = ops.langevin_correct(x, score(x, t), self.snr, seed=plan.seed, step=step,
                                     lane=noise.corrector_lane(r), sample_offset=self.sample_offset,
                                     noise_norm=self.noise_norm, per_sample=self.per_sample, backend=self.backend)
        # The last step returns the mean, as the tutorial's samplers do.
        return self._sde_step(x, score(x, t), plan.a[k], plan.b[k], plan.c[k], plan.seed, step,
                              noise.LANE_PREDICTOR, self.sample_offset, k < self.num_steps - 1)

    def run(self, score_model, x: torch.Tensor, plan: _Plan, progress: bool = False,
            check_first: bool = True) -> torch.Tensor:
        """All steps from x(1); the first checks the model's output unless told not to, the rest
        call the model bare."""
        x = self.step(x, _checked(score_model) if check_first else score_model, 0, plan)
        for k in tqdm(range(1, self.num_steps), initial=1, total=self.num_steps, disable=not progress):
            x = self.step(x, score_model, k, plan)
        return x

    def first_nonfinite_step(self, score_model, x: torch.Tensor, plan: _Plan) -> int | None:
        """Rerun the loop checking every step; the first step whose result is NaN or Inf."""
        for k in range(self.num_steps):
            x = self.step(x, score_model, k, plan)
            if not torch.isfinite(x).all():
                return k
        return None


class _GraphedLoop:
    """The whole loop captured as one CUDA graph; a replay reads x(1), the plan and the seed
    from static buffers."""

    def __init__(self, loop: _Loop, score_model, x_T: torch.Tensor, plan: _Plan):
        self.x_T, self.plan = x_T.clone(), plan.clone()
        # Warm up on a side stream, as capture requires: check the model's output, and compile or
        # load the kernels of a noisy and of the last, noise-free step before capture.
        side = torch.cuda.Stream(device=x_T.device)
        side.wait_stream(torch.cuda.current_stream(x_T.device))
        with torch.cuda.stream(side):
            x = loop.step(self.x_T, _checked(score_model), 0, self.plan)
            loop.step(x, score_model, loop.num_steps - 1, self.plan)
        torch.cuda.current_stream(x_T.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        capture = torch.cuda.Stream(device=x_T.device)
        # The outer context gives the caller back its stream even when capture fails:
        # torch.cuda.graph's exit raises from capture_end before leaving its own stream context.
        with torch.cuda.stream(capture), torch.cuda.graph(self.graph, stream=capture):
            self.x_out = loop.run(score_model, self.x_T, self.plan, check_first=False)

    def __call__(self, x_T: torch.Tensor, plan: _Plan) -> torch.Tensor:
        self.x_T.copy_(x_T)
        self.plan.copy_(plan)
        self.graph.replay()
        return self.x_out.clone()


# score model (or the object of a bound method) -> {loop and shape key: _GraphedLoop, or None
# where capture failed}. Weak keys, so a graph goes when its model does.
_GRAPHS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def clear_graph_cache() -> None:
    """Drop every captured sampling graph and the GPU memory it holds.

    Call it after replacing (rather than updating in place) the parameters of a model that was
    sampled with a CUDA graph: a graph reads the parameter memory it was captured with.
    """
    _GRAPHS.clear()


def _run_graphed(name: str, loop: _Loop, score_model, x_T: torch.Tensor, plan: _Plan, strict: bool):
    """Replay the cached graph for this loop, capturing it on first use; None when capture fails
    and not ``strict`` (the caller then runs the plain loop)."""
    owner = getattr(score_model, "__self__", score_model)
    try:
        cache = _GRAPHS.setdefault(owner, {})
    except TypeError:  # not weak-referenceable: capture without caching
        cache = {}
    # A module in train mode (dropout, batch norm) captures different kernels than in eval mode.
    key = (loop.key, tuple(x_T.shape), x_T.dtype, x_T.device, getattr(score_model, "__func__", None),
           getattr(owner, "training", None))
    if key not in cache:
        try:
            cache[key] = _GraphedLoop(loop, score_model, x_T, plan)
        except RuntimeError as e:
            if strict or isinstance(e, torch.OutOfMemoryError):
                raise
            warnings.warn(f"{name}: CUDA graph capture failed, running the plain loop instead "
                          f"(pass cuda_graph=False to skip the attempt): {e}", RuntimeWarning, stacklevel=3)
            cache[key] = None
    graphed = cache[key]
    return None if graphed is None else graphed(x_T, plan)


def _use_graph(cuda_graph, device: torch.device, backend: str, progress: bool) -> bool:
    if cuda_graph == "auto":
        return device.type == "cuda" and backend in ops.GRAPH_SAFE_BACKENDS and not progress
    if cuda_graph is False:
        return False
    if cuda_graph is not True:
        raise ValueError(f"cuda_graph must be True, False or 'auto', got {cuda_graph!r}")
    if device.type != "cuda":
        raise ValueError(f"cuda_graph=True needs a CUDA device, got device {device}")
    if backend not in ops.GRAPH_SAFE_BACKENDS:
        raise ValueError(f"cuda_graph=True needs backend 'cuda' or 'triton'; {backend!r} reads the seed on the host")
    if progress:
        raise ValueError("progress=True reports every step, which a CUDA graph replay cannot; "
                         "pass cuda_graph=False or progress=False")
    return True


def _sample(name, score_model, marginal_prob_std, diffusion_coeff, batch_size, num_steps, device, eps, *, shape,
            seed, x_T, sample_offset, backend, cuda_graph, progress, predictor="euler_maruyama", correction="time",
            corrector_steps=0, snr=0.16, noise_norm="fixed", per_sample=False, float64_grid=False) -> torch.Tensor:
    """The SDE samplers' common body: check arguments, draw x(1), plan, loop, check the result."""
    num_steps = check_int("num_steps", num_steps, 2)
    eps = _check_eps(eps)
    sample_offset = check_int("sample_offset", sample_offset, 0)
    per_sample = check_bool("per_sample", per_sample)
    schedule = _Schedule(marginal_prob_std, diffusion_coeff)
    device = _default_device(device, x_T, "x_T")
    backend = ops.resolve_backend(backend, device)
    use_graph = _use_graph(cuda_graph, device, backend, progress)
    seed = _seed_tensor(seed, device)
    x_T = _starting_sample("x_T", x_T, schedule, batch_size, shape, seed, sample_offset, device, backend)
    plan = _make_plan(schedule, num_steps, eps, x_T.shape[0], device, seed, predictor, correction, float64_grid)
    loop = _Loop(backend, num_steps, sample_offset, corrector_steps, snr, noise_norm, per_sample)
    with torch.no_grad():
        x = _run_graphed(name, loop, score_model, x_T, plan, strict=cuda_graph is True) if use_graph else None
        if x is None:
            x = loop.run(score_model, x_T, plan, progress)
        # One host sync for the whole run; only a failed run pays for finding the step.
        if not torch.isfinite(x).all():
            k = loop.first_nonfinite_step(score_model, x_T, plan)
            where = ("a rerun with per-step checks stayed finite (is score_model non-deterministic?)" if k is None
                     else f"first at step {k} of {num_steps} (t = {float(plan.t[k, 0]):.4g})")
            hint = ("; the corrector's step size 2 (snr |z| / |score|)**2 is infinite where a score is all zero"
                    if corrector_steps else "")
            raise RuntimeError(f"{name}: the samples contain NaN or Inf; {where}{hint}")
    return x


# --------------------------------------------------------------------------- public SDE samplers


def em_sample(score_model, marginal_prob_std, diffusion_coeff=None, batch_size=64, num_steps=500, device=None,
              eps=1e-3, *, shape=(1, 28, 28), seed=None, x_T=None, sample_offset=0, backend="auto",
              cuda_graph="auto", progress=False) -> torch.Tensor:
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
        num_steps: steps on the grid ``linspace(1, eps, num_steps)``, >= 2.
        device: None means CUDA when available, else CPU (or x_T's device).
        eps: the last time, in (0, 1).
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
    Returns:
        The last step's mean, a tensor of shape ``(B, *shape)``.
    Raises:
        ValueError / TypeError: bad arguments, or a model whose output does not fit x.
        RuntimeError: NaN or Inf in the samples, naming the first step where they appeared.
    """
    return _sample("em_sample", score_model, marginal_prob_std, diffusion_coeff, batch_size, num_steps, device, eps,
                   shape=shape, seed=seed, x_T=x_T, sample_offset=sample_offset, backend=backend,
                   cuda_graph=cuda_graph, progress=progress)


def milstein_sample(score_model, marginal_prob_std, diffusion_coeff=None, batch_size=64, num_steps=500, device=None,
                    eps=1e-3, *, correction="time", shape=(1, 28, 28), seed=None, x_T=None, sample_offset=0,
                    backend="auto", cuda_graph="auto", progress=False) -> torch.Tensor:
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

    Other arguments, the result and the errors are those of :func:`em_sample`.
    """
    check_choice("correction", correction, CORRECTIONS)
    return _sample("milstein_sample", score_model, marginal_prob_std, diffusion_coeff, batch_size, num_steps, device,
                   eps, shape=shape, seed=seed, x_T=x_T, sample_offset=sample_offset, backend=backend,
                   cuda_graph=cuda_graph, progress=progress, predictor="milstein", correction=correction)


def pc_sample(score_model, marginal_prob_std, diffusion_coeff=None, batch_size=64, num_steps=500, snr=0.16,
              device=None, eps=1e-3, *, noise_norm="fixed", corrector_steps=1, predictor="euler_maruyama",
              correction="time", per_sample=False, shape=(1, 28, 28), seed=None, x_T=None, sample_offset=0,
              backend="auto", cuda_graph="auto", progress=False) -> torch.Tensor:
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
    """
    check_choice("predictor", predictor, PREDICTORS)
    check_choice("correction", correction, CORRECTIONS)
    check_choice("noise_norm", noise_norm, ops.NOISE_NORMS)
    corrector_steps = check_int("corrector_steps", corrector_steps, 0)
    return _sample("pc_sample", score_model, marginal_prob_std, diffusion_coeff, batch_size, num_steps, device, eps,
                   shape=shape, seed=seed, x_T=x_T, sample_offset=sample_offset, backend=backend,
                   cuda_graph=cuda_graph, progress=progress, predictor=predictor, correction=correction,
                   corrector_steps=corrector_steps, snr=check_positive("snr", snr), noise_norm=noise_norm,
                   per_sample=per_sample, float64_grid=True)


# --------------------------------------------------------------------------- probability-flow ODE
# Dormand-Prince 5(4), as scipy's RK45: nodes, stage matrix, 5th-order weights, and the error
# weights (5th minus 4th order) over the six stages and the FSAL stage.
DP_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0)
DP_A = ((),
        (1 / 5,),
        (3 / 40, 9 / 40),
        (44 / 45, -56 / 15, 32 / 9),
        (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
        (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656))
DP_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)
DP_E = (-71 / 57600, 0.0, 71 / 16695, -71 / 1920, 17253 / 339200, -22 / 525, 1 / 40)
# scipy's RK45 step control.
SAFETY, MIN_FACTOR, MAX_FACTOR = 0.9, 0.2, 10.0
ERROR_EXPONENT = -1 / 5


@dataclass(frozen=True)
class ODEResult:
    """The result of :func:`ode_sample` with ``full_output=True``.

    Attributes:
        samples: x(eps), shape ``(B, *shape)``: what :func:`ode_sample` returns by default.
        nfe: score-model evaluations, counted as scipy's ``nfev`` counts them.
        n_accepted: accepted steps.
        n_rejected: rejected step attempts.
    """

    samples: torch.Tensor
    nfe: int
    n_accepted: int
    n_rejected: int


def _weighted(coeffs, weights) -> list[float]:
    return [c * w for c, w in zip(coeffs, weights, strict=True)]


def _check_norm(norm: float, t: float) -> None:
    if not math.isfinite(norm):
        raise RuntimeError(f"ode_sample: the score at t = {t:.6g} is NaN or Inf, or so large that the "
                           "error norm overflows float32")


def _initial_step(fun, t0, t1, y0, k0, w0, atol, rtol, backend) -> float:
    """scipy's ``select_initial_step`` for an error estimator of order 4 (one evaluation)."""
    span, direction = abs(t1 - t0), math.copysign(1.0, t1 - t0)
    d0, d1 = (float(ops.rk_error_norm(y0, y0, [k], [w], 1.0, atol, rtol, backend=backend))
              for k, w in ((y0, 1.0), (k0, w0)))
    _check_norm(d1, t0)
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    h0 = min(h0, span)
    k1, w1 = fun(t0 + direction * h0, ops.rk_combine(y0, [k0], [w0], direction * h0, backend=backend))
    d2 = float(ops.rk_error_norm(y0, y0, [k1, k0], [w1, -w0], 1.0 / h0, atol, rtol, backend=backend))
    _check_norm(d2, t0 + direction * h0)
    if d1 <= 1e-15 and d2 <= 1e-15:
        h1 = max(1e-6, h0 * 1e-3)
    else:
        h1 = (0.01 / max(d1, d2)) ** (1 / 5)
    return min(100 * h0, h1, span)


def _dopri5(fun, t0: float, t1: float, y0: torch.Tensor, atol: float, rtol: float, backend: str):
    """Integrate ``dy/dt = w(t) k(t, y)`` from t0 to t1 with scipy's RK45 method and control.

    ``fun(t, y)`` returns ``(k, w)``: a tensor of y's shape and a float. Keeping the scalar
    factor w apart folds it into the stage coefficients, so each stage is one fused
    :func:`~scoreops.ops.rk_combine` and the error one :func:`~scoreops.ops.rk_error_norm`;
    the accept/reject decision is the only host sync per step.
    Returns ``(y(t1), n_accepted, n_rejected)``.
    """
    direction = math.copysign(1.0, t1 - t0)
    k0, w0 = fun(t0, y0)
    h_abs = _initial_step(fun, t0, t1, y0, k0, w0, atol, rtol, backend)
    t, y, n_accepted, n_rejected = t0, y0, 0, 0
    while direction * (t - t1) < 0:
        min_step = 10 * abs(math.nextafter(t, direction * math.inf) - t)
        h_abs, rejected = max(h_abs, min_step), False
        while True:
            if h_abs < min_step:
                raise RuntimeError(f"ode_sample: the step size fell below {min_step:.3g} at t = {t:.6g}")
            t_new = t + h_abs * direction
            if direction * (t_new - t1) > 0:
                t_new = t1
            h = t_new - t
            h_abs = abs(h)
            ks, ws = [k0], [w0]
            for c, a in zip(DP_C[1:], DP_A[1:], strict=True):
                k, w = fun(t + c * h, ops.rk_combine(y, ks, _weighted(a, ws), h, backend=backend))
                ks.append(k)
                ws.append(w)
            y_new = ops.rk_combine(y, ks, _weighted(DP_B, ws), h, backend=backend)
            k_new, w_new = fun(t + h, y_new)
            err = float(ops.rk_error_norm(y, y_new, [*ks, k_new], _weighted(DP_E, [*ws, w_new]), h, atol, rtol,
                                          backend=backend))
            if not math.isfinite(err):
                raise RuntimeError(f"ode_sample: the score or the state became NaN or Inf between t = {t:.6g} "
                                   f"and t = {t_new:.6g}")
            if err < 1:
                factor = MAX_FACTOR if err == 0 else min(MAX_FACTOR, SAFETY * err ** ERROR_EXPONENT)
                h_abs *= min(1.0, factor) if rejected else factor
                break
            h_abs *= max(MIN_FACTOR, SAFETY * err ** ERROR_EXPONENT)
            rejected = True
            n_rejected += 1
        t, y, k0, w0 = t_new, y_new, k_new, w_new
        n_accepted += 1
    return y, n_accepted, n_rejected


def ode_sample(score_model, marginal_prob_std, diffusion_coeff=None, batch_size=64, atol=1e-5, rtol=1e-5,
               device=None, z=None, eps=1e-3, *, shape=(1, 28, 28), seed=None, sample_offset=0, backend="auto",
               full_output=False):
    """Probability-flow ODE sampler: ``dx/dt = -1/2 g(t)**2 s(x, t)`` from t = 1 to eps.

    Drop-in for the tutorial's ``ode_sampler``. It integrates with adaptive Dormand-Prince 5(4)
    and scipy's RK45 step control and error norm, on the device with fused stage ops, so that
    at equal tolerances its nfe and result are close to ``solve_ivp(method="RK45")`` on the
    flattened batch (as the tutorial calls it); the state stays in x's dtype (float32).
    As there, the whole batch is one ODE system: the step sizes depend on the batch, and so
    does each sample, within the tolerances.

    The ODE is deterministic, so it keeps the mismatch between the prior N(0, std(1)**2 I)
    and the true noised marginal at t = 1, which the SDE samplers partly forget. On the 2-D
    mixture of ``tests/mixture.py`` (weights 0.3 / 0.7, sigma = 25) it moves the weights to
    0.294 / 0.706 (a shift of 0.0056 +- 0.0002, measured with importance weights on 120000
    samples); started from exact samples of the noised marginal, the flow reproduces the mixture.

    Args:
        score_model, marginal_prob_std, diffusion_coeff, batch_size, device, eps, shape, seed,
        sample_offset, backend: as for :func:`em_sample`.
        atol, rtol: absolute and relative tolerances, at least :data:`ODE_TOL_FLOOR` (1e-10).
        z: the starting sample x(1) of shape (B, *shape), as in the tutorial (the prior sample
            of the noise stream when None).
        full_output: return an :class:`ODEResult` (samples, nfe, accepted and rejected steps)
            instead of the samples alone.
    Returns:
        x(eps) of shape ``(B, *shape)``, or an :class:`ODEResult`.
    Raises:
        ValueError / TypeError: bad arguments, or a model whose output does not fit x.
        RuntimeError: NaN or Inf in the score or the state, naming the time interval.
    """
    eps = _check_eps(eps)
    atol, rtol = check_positive("atol", atol), check_positive("rtol", rtol)
    if min(atol, rtol) < ODE_TOL_FLOOR:
        raise ValueError(f"atol = {atol:g}, rtol = {rtol:g}: tolerances below {ODE_TOL_FLOOR:g} are finer than the "
                         f"steps' float32 arithmetic resolves, and the solver would crawl instead of converging")
    sample_offset = check_int("sample_offset", sample_offset, 0)
    schedule = _Schedule(marginal_prob_std, diffusion_coeff)
    device = _default_device(device, z, "z")
    backend = ops.resolve_backend(backend, device)
    x = _starting_sample("z", z, schedule, batch_size, shape, _seed_tensor(seed, device), sample_offset, device,
                         backend)
    nfe = 0

    def velocity(t: float, x: torch.Tensor):
        nonlocal nfe
        score = _checked(score_model) if nfe == 0 else score_model
        nfe += 1
        g = float(schedule.g(torch.tensor([t], dtype=torch.float64)))
        return score(x, torch.full((x.shape[0],), t, dtype=torch.float32, device=device)), -0.5 * g * g

    with torch.no_grad():
        x, n_accepted, n_rejected = _dopri5(velocity, 1.0, eps, x, atol, rtol, backend)
    return ODEResult(x, nfe, n_accepted, n_rejected) if full_output else x
