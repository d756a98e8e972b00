"""Diagonal-noise Ito SDEs on the samplers' fused update.

``dx = mu(x, t) dt + G(x, t) dW`` with ``G`` acting elementwise. One step is
:func:`scoreops.ops.sde_step` with ``a = dt``, ``b = G sqrt(dt)`` and, for Milstein,
``c = G dG/dx dt / 2``: ``x + mu dt + G dW + 1/2 G G' (dW**2 - dt)`` with ``dW = sqrt(dt) z``.
Step k draws z from stream step k, lane 0, so a path is a function of ``(seed, sample index)``.
"""
from __future__ import annotations

import itertools
import math

import torch

from .. import ops
from ..core import noise
from ..core.checks import as_counter, check_choice, check_float, check_int, check_sample_range

METHODS = ("euler", "milstein")


def _check_like(name: str, v, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A function's output as a ``dtype`` tensor of x's shape and device."""
    if not isinstance(v, torch.Tensor):
        raise TypeError(f"{name} must return a tensor, got {type(v).__name__}")
    if v.device != x.device:
        raise ValueError(f"{name} returned a tensor on {v.device} for x on {x.device}")
    try:
        return torch.broadcast_to(v, x.shape).to(dtype)
    except RuntimeError:
        raise ValueError(f"{name} returned shape {tuple(v.shape)}, which does not broadcast to x's "
                         f"{tuple(x.shape)}") from None


def _check_grid(ts) -> list[float]:
    ts = torch.as_tensor(ts, dtype=torch.float64).cpu()
    if ts.dim() != 1 or ts.numel() < 2:
        raise ValueError(f"ts must be a 1-D sequence of at least 2 times, got shape {tuple(ts.shape)}")
    if not torch.isfinite(ts).all() or not (ts[1:] > ts[:-1]).all():
        raise ValueError("ts must be finite and strictly increasing")
    return ts.tolist()


def _diffusion_and_dx(diffusion, diffusion_dx, x: torch.Tensor, t: torch.Tensor):
    """``G(x, t)`` and ``dG/dx`` elementwise as float32; by autograd, dG/dx has x's precision."""
    if diffusion_dx is not None:
        return (_check_like("diffusion", diffusion(x, t), x, torch.float32),
                _check_like("diffusion_dx", diffusion_dx(x, t), x, torch.float32))
    with torch.enable_grad():
        xg = x.detach().requires_grad_()
        g = _check_like("diffusion", diffusion(xg, t), x, torch.float32)
        if not g.requires_grad:  # G does not depend on x
            return g, torch.zeros_like(g)
        # Diagonal noise: G_i depends on x_i alone, so the vector-Jacobian product with ones is
        # the diagonal of the Jacobian.
        (dg,) = torch.autograd.grad(g, xg, torch.ones_like(g), allow_unused=True)
    return g.detach(), torch.zeros_like(g) if dg is None else dg.float()


def sdeint(drift, diffusion, x0: torch.Tensor, ts, method: str = "euler", diffusion_dx=None, seed=None, *,
           sample_offset: int = 0, backend: str = "auto") -> torch.Tensor:
    """Solve the diagonal-noise Ito SDE ``dx = drift(x, t) dt + diffusion(x, t) dW`` on a grid.

    Euler-Maruyama has strong order 1/2, Milstein strong order 1.

    Args:
        drift: ``drift(x, t)``, a tensor of x's shape (or broadcastable to it); t is a float64
            0-d tensor on x's device.
        diffusion: ``diffusion(x, t)``, the per-element noise amplitude G, of x's shape (or
            broadcastable). Diagonal noise: element i of G may depend on element i of x only.
        x0: (B, ...) initial state, float32, float16 or bfloat16; row i is sample i of the stream.
        ts: the time grid, strictly increasing, at least 2 times (sequence or 1-D tensor).
        method: ``"euler"`` (Euler-Maruyama) or ``"milstein"``.
        diffusion_dx: ``dG/dx`` elementwise, for Milstein; taken by autograd when omitted, which
            gives it x's precision (pass it for float32 coefficients with a half-precision x).
        seed: noise-stream seed (int); None draws one from torch's default generator.
        sample_offset: global index of sample 0.
        backend: op backend, see :mod:`scoreops.ops`.
    Returns:
        The path at the grid times, shape ``(len(ts), *x0.shape)``, with x0 first. It carries no
        gradients (it is computed without autograd; x0 is taken detached).
    Raises:
        ValueError / TypeError: bad arguments, or a function whose output does not fit x.
        RuntimeError: NaN or Inf in the path, naming the first grid time where it appeared.
    """
    check_choice("method", method, METHODS)
    check_float("x0", x0)
    if x0.dim() < 1:
        raise ValueError("x0 must have a leading batch dimension, got a 0-d tensor")
    if diffusion_dx is not None and not callable(diffusion_dx):
        raise TypeError(f"diffusion_dx must be a function of (x, t) or None, got {type(diffusion_dx).__name__}")
    ts = _check_grid(ts)
    sample_offset = check_int("sample_offset", sample_offset, 0)
    check_sample_range(sample_offset, x0.shape[0])
    backend = ops.resolve_backend(backend, x0.device)
    if seed is None:
        seed = int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64))
    seed = as_counter("seed", seed, x0.device)
    # Times and step counters made on the device once: no host-to-device copy per step.
    times = torch.tensor(ts, dtype=torch.float64, device=x0.device)
    steps = torch.arange(len(ts) - 1, device=x0.device).reshape(-1, 1)
    x0 = x0.detach()  # the path is not differentiable; a backward through it must fail, not give zeros
    x, path = x0, [x0]
    with torch.no_grad():
        for k, (t0, t1) in enumerate(itertools.pairwise(ts)):
            dt = t1 - t0
            t = times[k]
            # The step adds mu in x's dtype; G and G' form float32 coefficients, unrounded.
            mu = _check_like("drift", drift(x, t), x, x.dtype)
            if method == "milstein":
                g, dg = _diffusion_and_dx(diffusion, diffusion_dx, x, t)
                c = g * dg * (dt / 2)
            else:
                g, c = _check_like("diffusion", diffusion(x, t), x, torch.float32), 0.0
            x = ops.sde_step(x, mu, dt, g * math.sqrt(dt), c, seed=seed, step=steps[k],
                             lane=noise.LANE_PREDICTOR, sample_offset=sample_offset, backend=backend)
            path.append(x)
    path = torch.stack(path)
    finite = torch.isfinite(path.flatten(1)).all(1)
    if not finite.all():  # one host sync for the whole path
        k = int(finite.logical_not().nonzero()[0])
        raise RuntimeError(f"sdeint: the path contains NaN or Inf, first at t = {ts[k]:.6g} (grid index {k})")
    return path
