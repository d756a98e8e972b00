"""The torch backend: every scoreops op in plain torch, same maths and same noise stream.

These functions are the reference the CPU, CUDA and Triton kernels are tested against, and the
fallback where no kernel is built. They take the same arguments as the registered ops
(see ``docs/kernels.md``), with ``seed``/``step`` given as 1-element int64 tensors.
Arithmetic is float32; the result has the dtype of ``x``.
"""
from __future__ import annotations

import torch

from ..core import brownian, noise
from ..core.checks import coef_layout


def _host_counter(t: torch.Tensor) -> int:
    """The value of a 1-element int64 seed or step tensor, read on the host."""
    return int(t.reshape(-1)[0].item())


def coef_view(name: str, coef: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A coefficient (see :func:`scoreops.core.checks.coef_layout`) as float32 broadcasting against x
    viewed as (B, D)."""
    b = x.shape[0]
    shape = {"scalar": (1, 1), "per_sample": (b, 1), "per_element": (b, -1)}[coef_layout(name, coef.shape, x.shape)]
    return coef.to(torch.float32).reshape(shape)


def philox_bits(seed, step, lane: int, sample_offset: int, batch: int, numel: int) -> torch.Tensor:
    """int32 tensor (batch, 4*ceil(numel/4)): the stream's uint32 words, bit-cast to int32."""
    w = noise.philox_words(_host_counter(seed), _host_counter(step), lane, batch, numel, sample_offset, seed.device)
    return torch.where(w >= 2**31, w - 2**32, w).to(torch.int32)


def philox_normal(seed, step, lane: int, sample_offset: int, batch: int, numel: int) -> torch.Tensor:
    """float32 tensor (batch, numel) of standard normals from the stream."""
    return noise.philox_normal(_host_counter(seed), _host_counter(step), lane, batch, numel, sample_offset, seed.device)


def stream_noise_like(x: torch.Tensor, seed, step, lane: int, sample_offset: int) -> torch.Tensor:
    """The stream's normals for a batch shaped like x, as float32 (B, D)."""
    b = x.shape[0]
    return philox_normal(seed, step, lane, sample_offset, b, x.numel() // b)


def sde_step(x, s, a, b, c, seed, step, lane: int, sample_offset: int, add_noise: bool,
             path: torch.Tensor | None = None, depth: int = 0, carry: torch.Tensor | None = None) -> torch.Tensor:
    """``x + a*s + b*z + c*(z*z - 1)``, z from the stream, or with ``path`` the Brownian increment
    over the step (:func:`brownian_noise_like`, which reads and writes ``carry``), the same z in
    both terms; ``x + a*s`` when not add_noise."""
    if x.numel() == 0:
        return torch.empty_like(x, memory_format=torch.contiguous_format)
    x2 = x.reshape(x.shape[0], -1).to(torch.float32)
    s2 = s.reshape(x2.shape).to(torch.float32)
    out = x2 + coef_view("a", a, x) * s2
    if add_noise:
        z = (stream_noise_like(x, seed, step, lane, sample_offset) if path is None else
             brownian_noise_like(x, seed, step, sample_offset, path, depth, carry))
        out = out + coef_view("b", b, x) * z + coef_view("c", c, x) * (z * z - 1.0)
    return out.reshape(x.shape).to(x.dtype)


def brownian_noise_like(x: torch.Tensor, seed, step, sample_offset: int, path: torch.Tensor, depth: int,
                        carry: torch.Tensor | None = None) -> torch.Tensor:
    """The Brownian tree's normalised increments from ``path[step]`` to ``path[step + 1]`` for a batch
    shaped like x, as float32 (B, D). With ``carry`` (float32, x's numel) the step is one of a
    carried walk (:func:`scoreops.core.brownian.brownian_carried_increment`): it reads the carry and,
    where ``path[step + 2]`` continues the descent, writes the next one. Reads the step and the
    coordinates on the host: the reference only, which a CUDA graph cannot capture."""
    k, points = _host_counter(step), path.shape[0]
    if not 0 <= k < points - 1:
        raise ValueError(f"step {k} has no interval in the path table of {points} points")
    q_from, q_to = path[k:k + 2].tolist()
    b = x.shape[0]
    if carry is None:
        return brownian.brownian_increment(_host_counter(seed), q_from, q_to, depth, b, x.numel() // b,
                                           sample_offset, x.device)
    q_next = int(path[k + 2]) if k + 2 < points else None
    q_next = q_next if q_next is not None and 0 <= q_next < q_to else None
    z, next_carry = brownian.brownian_carried_increment(_host_counter(seed), q_from, q_to, q_next, depth,
                                                        carry.view(b, -1), sample_offset)
    if next_carry is not None:
        carry.view(b, -1).copy_(next_carry)
    return z


def sigma_step(x, terms, coefs, seed, step, lane: int, sample_offset: int, add_noise: bool,
               path: torch.Tensor | None = None, depth: int = 0, carry: torch.Tensor | None = None) -> torch.Tensor:
    """``a*x + sum_k b_k*terms[k] + e*z`` with ``coefs = (a, b_0, ..., b_{K-1}, e)``, z from the stream
    (dropped unless add_noise), or with ``path`` the Brownian increment over the step
    (:func:`brownian_noise_like`, which reads and writes ``carry``); float32, accumulated in that
    order, result in x's dtype."""
    if x.numel() == 0:
        return torch.empty_like(x, memory_format=torch.contiguous_format)
    c = coefs.to(torch.float32)
    out = c[0] * x.reshape(x.shape[0], -1).to(torch.float32)
    for k, term in enumerate(terms):
        out = out + c[1 + k] * term.reshape(out.shape).to(torch.float32)
    if add_noise:
        z = (stream_noise_like(x, seed, step, lane, sample_offset) if path is None else
             brownian_noise_like(x, seed, step, sample_offset, path, depth, carry))
        out = out + c[len(terms) + 1] * z
    return out.reshape(x.shape).to(x.dtype)


def sde_step_carried_(x, s, a, b, c, seed, step, sample_offset: int, path: torch.Tensor, depth: int,
                      carry: torch.Tensor) -> None:
    """:func:`sde_step` with noise, written into x: one noisy step of a carried Brownian walk."""
    x.copy_(sde_step(x, s, a, b, c, seed, step, 0, sample_offset, True, path, depth, carry))


def sigma_step_carried(x, terms, coefs, seed, step, sample_offset: int, path: torch.Tensor, depth: int,
                       carry: torch.Tensor) -> torch.Tensor:
    """:func:`sigma_step` with noise: one noisy step of a carried Brownian walk."""
    return sigma_step(x, terms, coefs, seed, step, 0, sample_offset, True, path, depth, carry)


def sample_sq_norms(s, seed, step, lane: int, sample_offset: int, with_noise: bool) -> torch.Tensor:
    """float32 (B, 2): per-sample sum of s**2, and of z**2 (zeros unless with_noise)."""
    b = s.shape[0]
    s2 = s.reshape(b, -1).to(torch.float32)
    out = torch.zeros(b, 2, dtype=torch.float32, device=s.device)
    if s.numel() == 0:
        return out
    out[:, 0] = (s2 * s2).sum(dim=1)
    if with_noise:
        z = stream_noise_like(s, seed, step, lane, sample_offset)
        out[:, 1] = (z * z).sum(dim=1)
    return out


def rk_combine(y, ks, coeffs, h: float) -> torch.Tensor:
    """``y + h * sum_j coeffs[j] * ks[j]`` in float32, result in y's dtype."""
    acc = torch.zeros(y.shape, dtype=torch.float32, device=y.device)
    for k, cj in zip(ks, coeffs):
        if cj != 0.0:
            acc = acc + cj * k.to(torch.float32)
    return (y.to(torch.float32) + h * acc).to(y.dtype)


def rk_error_sq(y, y_new, ks, e, h: float, atol: float, rtol: float) -> torch.Tensor:
    """float32 scalar: ``sum((h * sum_j e[j] k_j) / (atol + rtol * max(|y|, |y_new|)))**2``.

    scipy's RK45 error norm is ``sqrt(rk_error_sq / n)``.
    """
    err = torch.zeros(y.shape, dtype=torch.float32, device=y.device)
    for k, ej in zip(ks, e):
        if ej != 0.0:
            err = err + ej * k.to(torch.float32)
    scale = atol + rtol * torch.maximum(y.to(torch.float32).abs(), y_new.to(torch.float32).abs())
    return ((h * err / scale) ** 2).sum()


def adaptive_sde_step(x, x_low, x_prev, s, a, b, seed, step, lane: int, sample_offset: int, atol: float,
                      rtol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The adaptive SDE solver's second stage: ``(x_high, err)``.

    ``x_high = ((x + x_low) + (a*s + b*z)) / 2`` in float32 (x's dtype out), z the stream's normals
    (the same as the first stage's sde_step with this key), and float32 (B,)
    ``err = sqrt(mean_j ((x_low - x_high) / max(atol, rtol * max(|x_low|, |x_prev|)))**2)``, the
    difference taken with the float32 x_high.
    """
    batch = x.shape[0]
    if x.numel() == 0:
        return (torch.empty_like(x, memory_format=torch.contiguous_format),
                torch.zeros(batch, dtype=torch.float32, device=x.device))
    x2 = x.reshape(batch, -1).to(torch.float32)
    low = x_low.reshape(x2.shape).to(torch.float32)
    prev = x_prev.reshape(x2.shape).to(torch.float32)
    z = stream_noise_like(x, seed, step, lane, sample_offset)
    noisy = coef_view("a", a, x) * s.reshape(x2.shape).to(torch.float32) + coef_view("b", b, x) * z
    high = ((x2 + low) + noisy) * 0.5
    delta = (rtol * torch.maximum(low.abs(), prev.abs())).clamp_min(atol)
    ratio = (low - high) / delta
    err = ((ratio * ratio).sum(dim=1) / x2.shape[1]).sqrt()
    return high.reshape(x.shape).to(x.dtype), err
