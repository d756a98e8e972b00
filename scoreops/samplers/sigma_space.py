"""Few-step samplers in noise-level (sigma) space, k-diffusion's convention: ``(denoiser, x, sigmas)``.

``denoiser(x, sigma)`` predicts the clean data x0 from x at noise level sigma (a (B,) float32
tensor); ``sigmas`` is a decreasing grid, and a last value of 0 makes the last step the final
denoise ``x' = D(x, sigma_last)``. Each step calls the denoiser once (Heun: twice) and makes one
fused update (:func:`scoreops.ops.sigma_step`) whose coefficients come from a float64 table
(:mod:`.sigma_updates`) held on the device, so the loop never syncs with the host; the noise of
step i is the stream's (seed, step i, lane 0), as in the SDE samplers, so sample ``sample_offset + j``
does not depend on the batch it is drawn in. A score model becomes a denoiser through
:func:`scoreops.samplers.score_to_denoiser`.

Score evaluations (NFE) for a grid of N steps ending at 0: N for every sampler but Heun, which
takes 2N - 1 (its step to 0 is a single Euler step).

The stochastic samplers whose noise covers the grid's intervals (Euler ancestral, DPM-Solver++(2M)
and (3M) SDE) can draw it from one Brownian path instead (``noise="brownian"``, k-diffusion's
``BrownianTreeNoiseSampler``): z of step i is the normalised increment of W from sigma_i to
sigma_{i+1} (:mod:`scoreops.core.brownian`), W a fixed function of (seed, sample, element, sigma).
On one grid the law is the same; across grids through the same points the increments agree, so
the same seed with 20 and 40 steps gives nearly the same samples.
"""
from __future__ import annotations

import numbers

import torch
from tqdm.auto import tqdm

from .. import ops
from ..core import noise
from ..core.brownian import DEFAULT_TOL, BrownianTree
from ..core.checks import check_batched, check_choice, check_int, check_sample_range
from . import cuda_graph as graphs
from . import sigma_updates as U
from .denoiser import ScoreDenoiser
from .inputs import checked, seed_tensor
from .loop import aligned_rows

SOLVER_TYPES = ("midpoint", "heun")
#: The step noise of the stochastic samplers: i.i.d. normals per step, or a Brownian path's increments.
NOISE_KINDS = ("iid", "brownian")


def check_sigmas(sigmas) -> torch.Tensor:
    """sigmas as a float64 CPU tensor: 1-D, at least 2 values, finite, positive and strictly
    decreasing, except for a last value that may be 0."""
    s = torch.as_tensor(sigmas.detach().cpu() if isinstance(sigmas, torch.Tensor) else sigmas, dtype=torch.float64)
    if s.dim() != 1 or s.numel() < 2:
        raise ValueError(f"sigmas must be a 1-D grid of at least 2 noise levels, got shape {tuple(s.shape)}")
    if not torch.isfinite(s).all():
        raise ValueError("sigmas contains NaN or Inf")
    if not (s[:-1] > 0).all() or s[-1] < 0:
        raise ValueError(f"sigmas must be positive (the last may be 0), got min {float(s.min()):.4g}")
    if not (s[1:] < s[:-1]).all():
        k = int(torch.nonzero(s[1:] >= s[:-1])[0])
        raise ValueError(f"sigmas must be strictly decreasing, but sigmas[{k + 1}] = {float(s[k + 1]):.6g} >= "
                         f"sigmas[{k}] = {float(s[k]):.6g}")
    return s


def _check_nonneg(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not v >= 0 or v == float("inf"):
        raise ValueError(f"{name} must be a finite float >= 0, got {v!r}")
    return float(v)


class _Run:
    """One sampler call: the checked arguments, the device tables and the fused update.

    Every device tensor the loop reads is made here and kept in ``buffers``, and every host value
    it branches on in ``control``, so that a captured CUDA graph of the loop can be replayed for
    another call with the same control: its new tables are copied into the captured ones.
    """

    def __init__(self, name, denoiser, x, sigmas, seed, sample_offset, backend, progress, cuda_graph):
        self.name = name
        check_batched("x", x)
        if x.shape[0] == 0 or x.numel() == 0:
            raise ValueError(f"x must be a non-empty batch, got shape {tuple(x.shape)}")
        if x.device.type == "meta":
            raise ValueError("the meta device has no data to sample; use a CPU or CUDA device")
        if not torch.isfinite(x).all():
            raise ValueError("x contains NaN or Inf")
        if not callable(denoiser):
            raise TypeError(f"denoiser must be callable as denoiser(x, sigma), got {type(denoiser).__name__}")
        self.sigmas = check_sigmas(sigmas)
        self.n = len(self.sigmas) - 1
        # Host booleans, so that the loops branch without touching a tensor per step.
        self.to_zero = [s == 0 for s in self.sigmas[1:].tolist()]
        self.sample_offset = check_int("sample_offset", sample_offset, 0)
        check_sample_range(self.sample_offset, x.shape[0])
        self.device, self.batch = x.device, x.shape[0]
        self.impl = ops.resolve_backend(backend, x.device)
        self.op = ops.implementation("sigma_step", self.impl)
        self.seed = seed_tensor(seed, x.device).clone()  # a graph replay writes into it
        self.steps = aligned_rows(torch.arange(self.n, dtype=torch.int64, device=x.device).reshape(-1, 1))
        self.progress = bool(progress)
        self.graphed = graphs.use_graph(cuda_graph, x.device, self.impl, self.progress)
        if cuda_graph is True and torch.is_grad_enabled():
            raise ValueError("cuda_graph=True replays without autograd: call the sampler under torch.no_grad()")
        self.graphed = self.graphed and not torch.is_grad_enabled()
        self.strict = cuda_graph is True
        self.buffers: list[torch.Tensor] = [self.seed, self.steps]
        self.control: list = [tuple(self.to_zero), self.sample_offset]
        self._first = checked(denoiser, "denoiser")
        self._denoiser = denoiser
        self._calls = 0
        self.path, self.depth, self.carry = None, 0, None  # i.i.d. noise until noise_from() says otherwise
        self.numel = x.numel()
        self.carried_op = ops.implementation("sigma_step_carried", self.impl)

    def _keep(self, rows: torch.Tensor) -> torch.Tensor:
        self.buffers.append(rows)
        return rows

    def sigma_rows(self, values: torch.Tensor) -> torch.Tensor:
        """float64 (N,) noise levels as the denoiser's (N, B) float32 device inputs."""
        return self._keep(aligned_rows(values.to(device=self.device, dtype=torch.float32).reshape(-1, 1)
                                       .repeat(1, self.batch)))

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """D(x, sigma); the first call checks the output's shape, dtype and device."""
        fn = self._first if self._calls == 0 else self._denoiser
        self._calls += 1
        return fn(x, sigma)

    def table(self, rows: torch.Tensor) -> tuple[torch.Tensor, list[bool]]:
        """A float64 coefficient table as float32 device rows, and which rows add noise."""
        noisy = (rows[:, -1] != 0).tolist()
        self.control.append(tuple(noisy))
        return self._keep(aligned_rows(rows.to(device=self.device, dtype=torch.float32))), noisy

    def noise_from(self, kind: str, tol, noisy: list[bool]) -> None:
        """Draw the noisy steps' z from ``kind``: ``"iid"`` normals, or ``"brownian"`` increments of
        one path on the tree of the grid's positive sigmas with leaves at most ``tol`` wide.

        The tree's int64 coordinate table, one entry per grid point, is made here once and kept
        with the other device tables; the kind and the tree's depth are control values. When the
        noisy steps come first and autograd is off, they are one carried walk (at most L + 1 node
        normals per element and step, the same z) through a carry buffer kept with the tables.
        """
        check_choice("noise", kind, NOISE_KINDS)
        self.control.append(kind)
        if kind == "iid" or not any(noisy):  # eta = 0: no noise to draw
            return
        tree = BrownianTree.from_grid(self.sigmas, tol)
        self.path = self._keep(tree.grid_table(self.sigmas).to(self.device))
        self.depth = tree.depth
        self.control.append(tree.depth)
        quiet = noisy.index(False) if False in noisy else len(noisy)
        if not any(noisy[quiet:]) and not torch.is_grad_enabled():  # a carry is mutated: no gradient
            # NaN until step 0 writes it: a step reading an unwritten carry would show.
            self.carry = self._keep(torch.full((self.numel,), float("nan"), device=self.device))
        self.control.append(self.carry is not None)

    def update(self, i: int, x: torch.Tensor, terms: list[torch.Tensor], coefs: torch.Tensor,
               noisy: bool) -> torch.Tensor:
        """``a x + sum_k b_k terms[k] + e z`` with row ``coefs``, z of stream step i (or the
        Brownian increment from sigma_i to sigma_{i+1})."""
        if noisy and self.carry is not None:
            return self.carried_op(x, terms, coefs, self.seed, self.steps[i], self.sample_offset, self.path,
                                   self.depth, self.carry)
        return self.op(x, terms, coefs, self.seed, self.steps[i], noise.LANE_PREDICTOR, self.sample_offset, noisy,
                       self.path, self.depth)

    def range(self):
        return tqdm(range(self.n), desc=self.name, disable=not self.progress)

    def sample(self, walk, x: torch.Tensor) -> torch.Tensor:
        """``walk(x)``, the loop over the grid, replayed from a cached CUDA graph where the run
        allows one; then one host sync that refuses NaN or Inf."""
        out = None
        if self.graphed:
            model, baked = ((self._denoiser.score_model, self._denoiser.schedule.graph_key)
                            if isinstance(self._denoiser, ScoreDenoiser) else (self._denoiser, ()))
            out = graphs.run_graphed_walk(self.name, walk, model, (self.impl, tuple(self.control), baked), x,
                                          self.buffers, self.strict)
        x = walk(x) if out is None else out
        if not torch.isfinite(x).all():
            raise RuntimeError(f"{self.name}: the samples contain NaN or Inf (does the denoiser return finite "
                               f"values at every sigma of the grid, from {float(self.sigmas[0]):.4g} down to "
                               f"{float(self.sigmas[-1]):.4g}?)")
        return x


def _churned(run: _Run, x: torch.Tensor, i: int, lifted: list[bool], lift_rows: torch.Tensor) -> torch.Tensor:
    """EDM's churn: x lifted to sigma_hat_i by noise of std lift_rows[i, 1] (nothing where not lifted)."""
    return run.update(i, x, [], lift_rows[i], True) if lifted[i] else x


def _churn_tables(run: _Run, s_churn, s_tmin, s_tmax, s_noise):
    s_churn, s_tmin, s_noise = (_check_nonneg(n, v) for n, v in
                                (("s_churn", s_churn), ("s_tmin", s_tmin), ("s_noise", s_noise)))
    if isinstance(s_tmax, bool) or not isinstance(s_tmax, numbers.Real) or not s_tmax >= s_tmin:
        raise ValueError(f"s_tmax must be a float >= s_tmin = {s_tmin}, got {s_tmax!r}")
    hats, lift = U.churn(run.sigmas, s_churn, s_tmin, float(s_tmax), s_noise)
    lift_rows, lifted = run.table(torch.stack([torch.ones_like(lift), lift], 1))
    return hats, lifted, lift_rows


def sample_euler(denoiser, x, sigmas, *, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0, seed=None,
                 sample_offset=0, backend="auto", progress=False, cuda_graph="auto") -> torch.Tensor:
    """Euler's method on the probability-flow ODE in sigma: ``x' = rho x + (1 - rho) D(x, sigma)``,
    rho = sigma'/sigma; with ``s_churn > 0``, EDM's churn first lifts x to sigma_hat = sigma (1 + gamma).

    Args:
        denoiser: ``denoiser(x, sigma) -> x0`` with sigma a (B,) float32 tensor.
        x: (B, ...) starting sample at sigmas[0] (e.g. ``sigmas[0] * randn``); float32, float16 or bfloat16.
        sigmas: decreasing noise levels (tensor or sequence); a last 0 ends with the final denoise.
        s_churn, s_tmin, s_tmax, s_noise: EDM's stochasticity: gamma = min(s_churn/N, sqrt(2) - 1)
            for sigma in [s_tmin, s_tmax], noise std s_noise sqrt(sigma_hat**2 - sigma**2).
        seed: noise-stream seed (int); None draws one from torch's generator.
        sample_offset: global index of sample 0 (sharded sampling).
        backend: op backend, see :mod:`scoreops.ops`.
        progress: show a tqdm bar over the steps.
        cuda_graph: True captures the loop, denoiser included, as one CUDA graph on first use
            and replays it after (a first call walks the grid twice: a warm-up, then the
            capture); "auto" does so on CUDA with a graph-safe backend under ``torch.no_grad()``,
            falling back to the plain loop if capture fails; False never captures. The graph is
            cached on the denoiser (its score model, for :func:`score_to_denoiser`'s), the grid's
            length and the sampler's options; a call with new sigmas, seed or x replays it.
    Returns:
        The sample at sigmas[-1], of x's shape and dtype. NFE: N = len(sigmas) - 1.
    """
    run = _Run("sample_euler", denoiser, x, sigmas, seed, sample_offset, backend, progress, cuda_graph)
    hats, lifted, lift_rows = _churn_tables(run, s_churn, s_tmin, s_tmax, s_noise)
    coefs, _ = run.table(U.euler(hats, run.sigmas[1:]))
    hat_in = run.sigma_rows(hats)

    def walk(x):
        for i in run.range():
            x = _churned(run, x, i, lifted, lift_rows)
            d = run.denoise(x, hat_in[i])
            x = d if run.to_zero[i] else run.update(i, x, [d], coefs[i], False)
        return x
    return run.sample(walk, x)


def sample_heun(denoiser, x, sigmas, *, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0, seed=None,
                sample_offset=0, backend="auto", progress=False, cuda_graph="auto") -> torch.Tensor:
    """Heun's second-order method (EDM Alg. 2): an Euler step to x~, then the trapezoid of the
    slopes at x and x~; the step to sigma' = 0 is Euler's, which is the final denoise.

    Arguments as :func:`sample_euler`. NFE: 2N - 1 for N steps ending at 0, else 2N.
    """
    run = _Run("sample_heun", denoiser, x, sigmas, seed, sample_offset, backend, progress, cuda_graph)
    hats, lifted, lift_rows = _churn_tables(run, s_churn, s_tmin, s_tmax, s_noise)
    first, second = U.heun(hats, run.sigmas[1:])
    (first, _), (second, _) = run.table(first), run.table(second)
    hat_in, next_in = run.sigma_rows(hats), run.sigma_rows(run.sigmas[1:])

    def walk(x):
        for i in run.range():
            x = _churned(run, x, i, lifted, lift_rows)
            d = run.denoise(x, hat_in[i])
            if run.to_zero[i]:
                x = d
                continue
            d_tilde = run.denoise(run.update(i, x, [d], first[i], False), next_in[i])
            x = run.update(i, x, [d, d_tilde], second[i], False)
        return x
    return run.sample(walk, x)


def sample_euler_ancestral(denoiser, x, sigmas, *, eta=1.0, s_noise=1.0, noise="iid", brownian_tol=DEFAULT_TOL,
                           seed=None, sample_offset=0, backend="auto", progress=False,
                           cuda_graph="auto") -> torch.Tensor:
    """Euler ancestral: Euler to sigma_down, then fresh noise of std sigma_up (k-diffusion's
    ``get_ancestral_step``; eta = 1 is DDPM-like ancestral sampling, eta = 0 plain Euler).

    Args:
        eta: >= 0, scales the noise; s_noise: multiplies it.
        noise: ``"iid"`` (default), fresh normals per step; or ``"brownian"``, the increments of one
            Brownian path in sigma over the grid's intervals (module docstring): the same law,
            and the same path for any grid with the same seed.
        brownian_tol: the tree's leaf width, absolute, in units of sigma (k-diffusion's and
            torchsde's default 1e-6); each grid step must be wider.
        Others as :func:`sample_euler`. NFE: N.
    """
    run = _Run("sample_euler_ancestral", denoiser, x, sigmas, seed, sample_offset, backend, progress, cuda_graph)
    coefs, noisy = run.table(U.euler_ancestral(run.sigmas, _check_nonneg("eta", eta),
                                               _check_nonneg("s_noise", s_noise)))
    run.noise_from(noise, brownian_tol, noisy)
    sig_in = run.sigma_rows(run.sigmas[:-1])

    def walk(x):
        for i in run.range():
            d = run.denoise(x, sig_in[i])
            x = d if run.to_zero[i] else run.update(i, x, [d], coefs[i], noisy[i])
        return x
    return run.sample(walk, x)


def _multistep(run: _Run, x: torch.Tensor, table: torch.Tensor, history: int, noise_kind: str = "iid",
               brownian_tol=DEFAULT_TOL) -> torch.Tensor:
    """The DPM-Solver++ loop: step i combines x, D_i and the ``history`` earlier D's (D_i itself
    stands in, with coefficient 0, before they exist); noisy steps draw z of ``noise_kind``."""
    coefs, noisy = run.table(table)
    run.noise_from(noise_kind, brownian_tol, noisy)
    sig_in = run.sigma_rows(run.sigmas[:-1])

    def walk(x):
        ds: list[torch.Tensor] = []
        for i in run.range():
            ds = [run.denoise(x, sig_in[i])] + ds[:history]
            if run.to_zero[i]:
                x = ds[0]
                continue
            x = run.update(i, x, ds + [ds[0]] * (history + 1 - len(ds)), coefs[i], noisy[i])
        return x
    return run.sample(walk, x)


def sample_dpmpp_2m(denoiser, x, sigmas, *, lower_order_final=True, seed=None, sample_offset=0, backend="auto",
                    progress=False, cuda_graph="auto") -> torch.Tensor:
    """DPM-Solver++(2M): the second-order multistep solver of the probability-flow ODE in
    lambda = -ln sigma, ``x' = rho x + (1 - rho) [(1 + 1/(2r)) D_i - D_{i-1}/(2r)]``, r = h_{i-1}/h.

    Args:
        lower_order_final: with fewer than 10 steps, take the last step that ends above 0 at
            first order (the official DPM-Solver's rule; k-diffusion lowers the order only at 0).
        Others as :func:`sample_euler`. NFE: N.
    """
    run = _Run("sample_dpmpp_2m", denoiser, x, sigmas, seed, sample_offset, backend, progress, cuda_graph)
    step_orders = U.orders(run.sigmas, 2, lower_order_final, 10, count_denoise=False)
    return _multistep(run, x, U.dpmpp_2m_sde(run.sigmas, 0.0, "midpoint", 0.0, step_orders), 1)


def sample_dpmpp_2m_sde(denoiser, x, sigmas, *, eta=1.0, s_noise=1.0, solver_type="midpoint",
                        lower_order_final=True, noise="iid", brownian_tol=DEFAULT_TOL, seed=None, sample_offset=0,
                        backend="auto", progress=False, cuda_graph="auto") -> torch.Tensor:
    """DPM-Solver++(2M) SDE (k-diffusion's eta family; eta = 1 is diffusers' sde-dpmsolver++).

    Args:
        eta: >= 0; 0 is the ODE solver (with ``"midpoint"``, :func:`sample_dpmpp_2m`).
        s_noise: noise multiplier.
        solver_type: ``"midpoint"`` (k-diffusion's default) or ``"heun"``.
        lower_order_final: as :func:`sample_dpmpp_2m`.
        noise, brownian_tol: ``"iid"`` or ``"brownian"`` step noise, as :func:`sample_euler_ancestral`
            (k-diffusion draws this sampler's noise from a Brownian tree by default).
        Others as :func:`sample_euler`. NFE: N.
    """
    check_choice("solver_type", solver_type, SOLVER_TYPES)
    run = _Run("sample_dpmpp_2m_sde", denoiser, x, sigmas, seed, sample_offset, backend, progress, cuda_graph)
    step_orders = U.orders(run.sigmas, 2, lower_order_final, 10, count_denoise=False)
    table = U.dpmpp_2m_sde(run.sigmas, _check_nonneg("eta", eta), solver_type, _check_nonneg("s_noise", s_noise),
                           step_orders)
    return _multistep(run, x, table, 1, noise, brownian_tol)


def sample_dpmpp_3m_sde(denoiser, x, sigmas, *, eta=1.0, s_noise=1.0, lower_order_final=True, noise="iid",
                        brownian_tol=DEFAULT_TOL, seed=None, sample_offset=0, backend="auto", progress=False,
                        cuda_graph="auto") -> torch.Tensor:
    """DPM-Solver++(3M) SDE: the third-order multistep solver, with noise as
    :func:`sample_dpmpp_2m_sde`; eta = 0 is DPM-Solver++(3M).

    Arguments as :func:`sample_dpmpp_2m_sde`; the warm-up steps are first and second order. NFE: N.
    """
    run = _Run("sample_dpmpp_3m_sde", denoiser, x, sigmas, seed, sample_offset, backend, progress, cuda_graph)
    step_orders = U.orders(run.sigmas, 3, lower_order_final, 10, count_denoise=False)
    table = U.dpmpp_3m_sde(run.sigmas, _check_nonneg("eta", eta), _check_nonneg("s_noise", s_noise), step_orders)
    return _multistep(run, x, table, 2, noise, brownian_tol)


def sample_ipndm(denoiser, x, sigmas, *, seed=None, sample_offset=0, backend="auto",
                 progress=False, cuda_graph="auto") -> torch.Tensor:
    """iPNDM: fourth-order Adams-Bashforth on the slopes d = (x - D)/sigma, with the uniform-step
    weights kept on any grid and a lower-order warm-up (zju-pi's fixed weights).

    Arguments as :func:`sample_euler`. NFE: N.
    """
    run = _Run("sample_ipndm", denoiser, x, sigmas, seed, sample_offset, backend, progress, cuda_graph)
    coefs, _ = run.table(U.ipndm(run.sigmas))
    sig_in = run.sigma_rows(run.sigmas[:-1])

    def walk(x):
        past: list[torch.Tensor] = []  # x_{i-1}, D_{i-1}, x_{i-2}, D_{i-2}, x_{i-3}, D_{i-3}
        for i in run.range():
            d = run.denoise(x, sig_in[i])
            if run.to_zero[i]:
                x = d
                continue
            x_new = run.update(i, x, [d] + past + [d] * (6 - len(past)), coefs[i], False)
            past = [x, d] + past[:4]
            x = x_new
        return x
    return run.sample(walk, x)


def sample_unipc(denoiser, x, sigmas, *, order=3, variant="bh2", lower_order_final=True, seed=None,
                 sample_offset=0, backend="auto", progress=False, cuda_graph="auto") -> torch.Tensor:
    """UniPC with data prediction: the predictor UniP-p, and after each model call the corrector
    UniC-p, which uses the new output D_{i+1} at no extra NFE.

    The model is evaluated at the predicted x~_{i+1}, and D_{i+1} is kept as history; the corrected
    x_{i+1} is where the next prediction starts.

    Args:
        order: 1, 2 or 3 (zju-pi's default 3; diffusers' 2).
        variant: ``"bh2"`` (B(h) = e^-h - 1) or ``"bh1"`` (B(h) = -h).
        lower_order_final: lower the order over the last steps, min(order, N - i), at any N (the
            reference code's rule); the step to sigma = 0 is then first order and returns
            D(x~_{N-1}).
        Others as :func:`sample_euler`. NFE: N.
    """
    order = check_int("order", order, 1)
    if order > 3:
        raise ValueError(f"order must be 1, 2 or 3, got {order}")
    check_choice("variant", variant, U.UNIPC_VARIANTS)
    run = _Run("sample_unipc", denoiser, x, sigmas, seed, sample_offset, backend, progress, cuda_graph)
    step_orders = U.orders(run.sigmas, order, lower_order_final, None, count_denoise=True)
    if run.sigmas[-1] == 0 and step_orders[-1] != 1:
        raise ValueError("UniPC's step to sigma = 0 must be first order: pass lower_order_final=True")
    pred, corr = U.unipc(run.sigmas, step_orders, variant)
    (pred, _), (corr, _) = run.table(pred), run.table(corr)
    sig_in = run.sigma_rows(run.sigmas[:-1])

    def walk(x):
        ds: list[torch.Tensor] = []
        x_pred = x
        for i in run.range():
            ds = [run.denoise(x_pred, sig_in[i])] + ds[:3]  # D_i, D_{i-1}, D_{i-2}, D_{i-3}
            if i > 0:  # UniC of step i - 1: x_{i-1} -> x_i with the new D_i
                x = run.update(i - 1, x, ds + [ds[0]] * (4 - len(ds)), corr[i - 1], False)
            if run.to_zero[i]:
                return ds[0]
            x_pred = run.update(i, x, (ds + [ds[0]] * 2)[:3], pred[i], False)
        return x_pred
    return run.sample(walk, x)
