"""Gradients of the kernel ops, registered with :func:`torch.library.register_autograd`.

The torch backend is plain torch and differentiates by itself; these formulas give the C++, CUDA
and Triton ops the same gradients, so that a kernel backend can run under autograd:

* ``sde_step``: ``out = x + a*s + b*z + c*(z*z - 1)`` is linear in x, s, a, b and c. The
  backward pass makes z again from the stream (the same backend's ``philox_normal``) instead
  of storing it; with a Brownian path, by ``sigma_step`` with coefficients (0, 1) on zeros, which
  walks the tree with the same code, so the gradients of b and c take the forward's increment.
* ``sample_sq_norms``: column 0 is ``sum(s**2)`` per sample, so its gradient is ``2 s``; column 1
  (the noise's norm) does not depend on s.
* ``rk_combine``: ``y + h * sum_j c_j k_j`` is linear in y and every k_j.
* ``sigma_step``: ``a*x + sum_k b_k*terms[k] + e*z`` is linear in x and every term, and in the
  coefficients, whose gradients are the per-call sums ``sum(g*x)``, ``sum(g*terms[k])`` and
  ``sum(g*z)`` (z made again from the stream, as for ``sde_step``; with a Brownian path, by the
  op itself with coefficients (0, 1), so the increment is the forward pass's to the bit).

``sde_step_carried_`` and ``sigma_step_carried`` mutate their carry and have no formula: the
samplers use them only without autograd (their z is the stateless ops' to the bit).

``rk_error_sq`` (a max and absolute values, used only to choose step sizes) and the raw stream
ops have no gradient. Gradients are computed in float32 and returned in each input's dtype.
"""
from __future__ import annotations

import torch

from ..core.checks import coef_layout
from .torch_ops import coef_view


def _reduce_to(coef: torch.Tensor, g: torch.Tensor, x_shape) -> torch.Tensor:
    """A coefficient's gradient from the per-element products g (B, D) of x: summed over the
    elements the coefficient is broadcast to, in the coefficient's shape and dtype."""
    layout = coef_layout("coefficient", coef.shape, x_shape)
    if layout == "scalar":
        g = g.sum()
    elif layout == "per_sample":
        g = g.sum(dim=1)
    return g.reshape(coef.shape).to(coef.dtype)


def _sde_step_setup(ctx, inputs, output) -> None:
    x, s, a, b, c, seed, step, lane, sample_offset, add_noise, path, depth = inputs
    ctx.save_for_backward(s, a, b, c, seed, step)
    ctx.stream = (lane, sample_offset, add_noise)
    ctx.path = (path, depth)  # an int64 table: no gradient


def _step_noise(philox_normal, sigma_step):
    """``noise(ctx, seed, step, batch, numel, device)``: the z a noisy step drew, made again, float32
    (batch, numel): the stream's, or with a Brownian path the op's own increment (sigma_step with
    coefficients (0, 1), which walks the tree as every step op does), so it is the forward's to the bit."""
    def noise(ctx, seed, step, batch, numel, device):
        lane, sample_offset, _ = ctx.stream
        path, depth = ctx.path
        if path is None:
            return philox_normal(seed, step, lane, sample_offset, batch, numel)
        zeros = torch.zeros(batch, numel, dtype=torch.float32, device=device)
        unit = torch.tensor([0.0, 1.0], dtype=torch.float32, device=device)
        return sigma_step(zeros, [], unit, seed, step, lane, sample_offset, True, path, depth)
    return noise


def _sde_step_backward(noise):
    def backward(ctx, grad):
        s, a, b, c, seed, step = ctx.saved_tensors
        lane, sample_offset, add_noise = ctx.stream
        batch = grad.shape[0]
        g = grad.float().reshape(batch, -1)
        need_x, need_s, need_a, need_b, need_c = ctx.needs_input_grad[:5]
        grads = [grad if need_x else None,
                 (coef_view("a", a, grad) * g).reshape(grad.shape).to(s.dtype) if need_s else None,
                 _reduce_to(a, g * s.float().reshape(batch, -1), grad.shape) if need_a else None, None, None]
        if add_noise and (need_b or need_c):
            z = noise(ctx, seed, step, batch, g.shape[1], g.device) if g.numel() else g
            grads[3] = _reduce_to(b, g * z, grad.shape) if need_b else None
            grads[4] = _reduce_to(c, g * (z * z - 1.0), grad.shape) if need_c else None
        return (*grads, None, None, None, None, None, None, None)
    return backward


def _sq_norms_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(inputs[0])


def _sq_norms_backward(ctx, grad):
    (s,) = ctx.saved_tensors
    batch = s.shape[0]
    g = 2.0 * s.float().reshape(batch, -1) * grad[:, :1].float()
    return g.reshape(s.shape).to(s.dtype), None, None, None, None, None


def _rk_combine_setup(ctx, inputs, output) -> None:
    y, ks, coeffs, h = inputs
    ctx.weights = [h * c for c in coeffs]
    ctx.k_dtypes = [k.dtype for k in ks]


def _rk_combine_backward(ctx, grad):
    g = grad.float()
    return grad, [(w * g).to(dtype) for w, dtype in zip(ctx.weights, ctx.k_dtypes, strict=True)], None, None


def _sigma_step_setup(ctx, inputs, output) -> None:
    x, terms, coefs, seed, step, lane, sample_offset, add_noise, path, depth = inputs
    ctx.save_for_backward(x, coefs, seed, step, *terms)
    ctx.stream = (lane, sample_offset, add_noise)
    ctx.path = (path, depth)  # an int64 table: no gradient


def _sigma_step_backward(noise):
    def backward(ctx, grad):
        x, coefs, seed, step, *terms = ctx.saved_tensors
        lane, sample_offset, add_noise = ctx.stream
        need_x, need_terms, need_coefs = ctx.needs_input_grad[:3]
        batch = grad.shape[0]
        g = grad.float().reshape(batch, -1)
        c = coefs.float()  # stays on the device: no host sync

        def scaled(j, dtype):
            return (c[j] * g).reshape(grad.shape).to(dtype)

        grad_x = scaled(0, x.dtype) if need_x else None
        grad_terms = [scaled(1 + k, t.dtype) if need else None for k, (t, need) in enumerate(zip(terms, need_terms))]
        grad_coefs = None
        if need_coefs:
            sums = [(g * v.float().reshape(batch, -1)).sum() for v in (x, *terms)]
            if add_noise and g.numel():
                sums.append((g * noise(ctx, seed, step, batch, g.shape[1], g.device)).sum())
            else:  # e is ignored without noise
                sums.append(g.new_zeros(()))
            grad_coefs = torch.stack(sums).to(coefs.dtype)
        return grad_x, grad_terms, grad_coefs, None, None, None, None, None, None, None
    return backward


def _register(prefix: str) -> None:
    ops = torch.ops.scoreops
    noise = _step_noise(getattr(ops, f"{prefix}philox_normal"), getattr(ops, f"{prefix}sigma_step"))
    torch.library.register_autograd(f"scoreops::{prefix}sde_step", _sde_step_backward(noise),
                                    setup_context=_sde_step_setup)
    torch.library.register_autograd(f"scoreops::{prefix}sample_sq_norms", _sq_norms_backward,
                                    setup_context=_sq_norms_setup)
    torch.library.register_autograd(f"scoreops::{prefix}rk_combine", _rk_combine_backward,
                                    setup_context=_rk_combine_setup)
    torch.library.register_autograd(f"scoreops::{prefix}sigma_step", _sigma_step_backward(noise),
                                    setup_context=_sigma_step_setup)


def register_triton_autograd() -> None:
    """Register the gradients of the Triton ops (``scoreops.kernels`` must be imported)."""
    _register("triton_")


# Imported by the backend loader right after scoreops._C, whose ops this registers.
_register("")
