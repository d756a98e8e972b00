"""The SDE's functions as the samplers read them: ``std(t)``, ``g(t)``, ``dg/dt`` and the inverse
``t(sigma)``, from a :class:`~scoreops.sde.VESDE` or the tutorial's two functions; the tutorial's
time grid and the noise-level (sigma) grids of the few-step samplers."""
from __future__ import annotations

import functools
import math
import warnings

import numpy as np
import torch

from .. import sde as _sde
from ..sde import VESDE

#: The sigma grids: Karras et al.'s (rho = 7 by default), uniform in log sigma, and the
#: tutorial's grid uniform in t, mapped to sigma = std(t).
SIGMA_SCHEDULES = ("karras", "log_sigma", "uniform_t")


class Schedule:
    """``std(t)``, ``g(t)`` and ``dg/dt`` as float64 CPU tensors, from a VESDE or two functions."""

    def __init__(self, marginal_prob_std, diffusion_coeff):
        if isinstance(marginal_prob_std, VESDE):
            if diffusion_coeff is not None:
                raise ValueError("pass either a VESDE as marginal_prob_std (and no diffusion_coeff), "
                                 "or the two functions marginal_prob_std and diffusion_coeff")
            sde = marginal_prob_std
            self._std, self._g, self._dg_dt = sde.marginal_prob_std, sde.diffusion_coeff, sde.diffusion_coeff_dt
            self._time_of_std = functools.partial(_sde.time_of_std, sigma=sde.sigma)
            return
        for name, fn in (("marginal_prob_std", marginal_prob_std), ("diffusion_coeff", diffusion_coeff)):
            if not (callable(fn) or (name == "diffusion_coeff" and fn is None)):
                raise TypeError(f"{name} must be a VESDE or a function of t, got {type(fn).__name__}")
        self._std, self._g, self._dg_dt = marginal_prob_std, diffusion_coeff, None
        self._time_of_std = _closed_form_inverse(marginal_prob_std) or self._ve_inverse()

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
            out = torch.cat([Schedule._eval(name, fn, ti) for ti in t.reshape(-1, 1)])
        out = out.reshape(t.shape)
        if not torch.isfinite(out).all():
            raise ValueError(f"{name} returned non-finite values for t in [{t.min():.4g}, {t.max():.4g}]")
        return out

    def std(self, t: torch.Tensor) -> torch.Tensor:
        return self._eval("marginal_prob_std", self._std, t)

    def g(self, t: torch.Tensor) -> torch.Tensor:
        if self._g is None:
            raise ValueError("this sampler needs diffusion_coeff (or a VESDE as marginal_prob_std)")
        return self._eval("diffusion_coeff", self._g, t)

    def _ve_inverse(self):
        """The VE family's closed-form inverse when ``std`` is one of its members, as the tutorial's
        own ``marginal_prob_std`` is: sigma solved from std(1), the rest of the curve checked to
        1e-10. Else None, and :meth:`time_of_std` bisects (60 calls of std per conversion)."""
        t = torch.tensor([1.0, 0.8, 0.5, 0.2, 0.01], dtype=torch.float64)
        try:
            std = self.std(t)
        except (ValueError, TypeError):
            return None
        target = float(std[0]) ** 2  # (S**2 - 1) / (2 ln S), increasing in ln S > 0 from 1
        if not 1.0 < target < 1e30:
            return None
        lo, hi = 1e-9, 70.0
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if math.expm1(2 * mid) / (2 * mid) < target else (lo, mid)
        sigma = math.exp(0.5 * (lo + hi))
        if not torch.allclose(_sde.marginal_prob_std(t, sigma), std, rtol=1e-10, atol=0.0):
            return None
        return functools.partial(_sde.time_of_std, sigma=sigma)

    @property
    def graph_key(self) -> tuple:
        """What a CUDA graph of :meth:`time_of_std` bakes in: the closed form's keywords, or the
        std function itself (compared by identity) for bisection."""
        if self._time_of_std is not None:
            return ("closed form", tuple(sorted(self._time_of_std.keywords.items())))
        return ("bisection", _Identity(self._std))

    def std_at(self, t: torch.Tensor) -> torch.Tensor:
        """std(t) computed on t's device, as float32 of t's shape (no host round trip)."""
        return torch.as_tensor(self._std(t), device=t.device).to(torch.float32).reshape(t.shape)

    def time_of_std(self, sigma: torch.Tensor) -> torch.Tensor:
        """t with ``std(t) = sigma``, on sigma's device and in its dtype.

        Closed form for a VESDE, for :func:`scoreops.sde.marginal_prob_std` (also through
        ``functools.partial``) and for any function that computes the VE std (the tutorial's);
        for any other function, bisection on [0, 1] on sigma's device in float64 (60 halvings:
        to float64 resolution), which assumes std increases in t.
        """
        if self._time_of_std is not None:
            return self._time_of_std(sigma).to(sigma.dtype)
        lo = torch.zeros_like(sigma, dtype=torch.float64)
        hi = torch.ones_like(lo)
        target = sigma.to(torch.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. the tutorial's torch.tensor(t) of a tensor, 60 times
            for _ in range(60):
                mid = 0.5 * (lo + hi)
                below = torch.as_tensor(self._std(mid), device=mid.device).to(torch.float64) < target
                lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        return (0.5 * (lo + hi)).to(sigma.dtype)

    def sigmas(self, schedule: str, num_points: int, eps: float, rho: float = 7.0) -> torch.Tensor:
        """A decreasing float64 CPU grid of ``num_points`` noise levels from std(1) to std(eps).

        ``"karras"``: ``(s_max**(1/rho) + i/(N-1) (s_min**(1/rho) - s_max**(1/rho)))**rho``;
        ``"log_sigma"``: ln sigma linear; ``"uniform_t"``: ``std(linspace(1, eps, N))``, the
        tutorial's grid (in float64).
        """
        ends = self.std(torch.tensor([1.0, eps], dtype=torch.float64))
        s_max, s_min = float(ends[0]), float(ends[1])
        if not 0 < s_min < s_max:
            raise ValueError(f"marginal_prob_std must increase from t = eps to 1 with std(eps) > 0, got "
                             f"std({eps}) = {s_min:.4g} and std(1) = {s_max:.4g}")
        if schedule == "uniform_t":
            return self.std(torch.from_numpy(np.linspace(1.0, eps, num_points)))
        u = torch.linspace(0.0, 1.0, num_points, dtype=torch.float64)
        if schedule == "log_sigma":
            return torch.exp(math.log(s_max) + u * (math.log(s_min) - math.log(s_max)))
        if schedule == "karras":
            if not rho > 0:
                raise ValueError(f"rho must be > 0, got {rho!r}")
            return (s_max ** (1 / rho) + u * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
        raise ValueError(f"schedule must be one of {SIGMA_SCHEDULES}, got {schedule!r}")

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


class _Identity:
    """An object as a dict key compared by identity (a user's function may be unhashable)."""

    def __init__(self, obj):
        self.obj = obj

    def __hash__(self) -> int:
        return id(self.obj)

    def __eq__(self, other) -> bool:
        return isinstance(other, _Identity) and other.obj is self.obj


def _closed_form_inverse(marginal_prob_std):
    """``sigma -> t`` in closed form when marginal_prob_std is :func:`scoreops.sde.marginal_prob_std`
    (bare, or a ``functools.partial`` that sets only sigma), else None."""
    fn, kwargs = marginal_prob_std, {}
    if isinstance(fn, functools.partial) and not fn.args:
        fn, kwargs = fn.func, fn.keywords
    if fn is _sde.marginal_prob_std and set(kwargs) <= {"sigma"}:
        return functools.partial(_sde.time_of_std, **kwargs)
    return None


def _precision(v) -> torch.dtype:
    """The float type a function's value was computed in: float64 for Python floats and NumPy float64."""
    name = str(getattr(v, "dtype", "float64")).removeprefix("torch.")
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}.get(name, torch.float64)


def _float64(v) -> torch.Tensor:
    """A function's value as a float64 CPU tensor."""
    if isinstance(v, torch.Tensor):
        return v.detach().to(device="cpu", dtype=torch.float64)
    return torch.as_tensor(v, dtype=torch.float64)


def time_grid(num_steps: int, eps: float, float64_grid: bool) -> tuple[torch.Tensor, float]:
    """The tutorial's grid ``linspace(1, eps, num_steps)``: the model's float32 times and the step ``dt > 0``.

    Its ``Euler_Maruyama_sampler`` makes the grid with ``torch.linspace`` in float32, its
    ``pc_sampler`` with ``np.linspace`` in float64 (``float64_grid``); both feed the model float32 times.
    """
    grid = torch.from_numpy(np.linspace(1.0, eps, num_steps)) if float64_grid else torch.linspace(1.0, eps, num_steps)
    dt = float(grid[0] - grid[1])
    if dt <= 0:
        raise ValueError(f"eps = {eps!r} is too close to 1: the grid of {num_steps} steps has dt = 0")
    return grid.to(torch.float32), dt
