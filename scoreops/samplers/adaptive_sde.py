"""The adaptive SDE solver of Jolicoeur-Martineau et al. (2021), "Gotta Go Fast When Generating
Data with Score-Based Models", for the reverse VE SDE, with per-sample step sizes on the device.

Each sample b keeps its own time t_b (from 1 down to eps), step h_b and last accepted low-order
proposal x'_b. One attempt from t to t - h draws one z for both stages:

* low order (Euler-Maruyama): ``x_low = x + h g(t)**2 s(x, t) + sqrt(h) g(t) z``, one
  :func:`scoreops.ops.sde_step`;
* high order (stochastic improved Euler):
  ``x_high = (x + x_low) / 2 + (h g(t-h)**2 s(x_low, t-h) + sqrt(h) g(t-h) z) / 2``, and the
  scaled error ``E_b = sqrt(mean_j ((x_low - x_high)_j / delta_j)**2)``,
  ``delta = max(atol, rtol max(|x_low|, |x'|))``: one :func:`scoreops.ops.adaptive_sde_step`,
  which makes z again from the stream instead of storing it.

Where ``E_b <= 1`` the sample accepts: ``x <- x_high``, ``x' <- x_low``, ``t <- t - h``. Every
sample then sets ``h <- min(t - eps, 0.9 h E_b**-0.9)``. A sample is done when ``t - eps <= 1e-6``;
it then idles with h = 0 (its coefficients are 0, so it does not move) while the others finish.
The last step is the Tweedie denoise ``x <- x + std(eps)**2 s(x, eps)`` (one evaluation).

Whether an attempt is accepted depends on its z, so the accepted steps carry selected noise: the
method is not an exact sampler of the reverse SDE, and in few dimensions this shows. On the 2-D
mixture of ``tests/mixture.py`` (weights 0.3 / 0.7), one point per sample, 2000 samples at
rtol = 0.01 come out with weights near 0.38 / 0.62 and modes up to twice as wide (0.002 does
not cure it; fixed steps do). Over many dimensions per sample, as an image's pixels, the error
is an average that hardly depends on any one z: with 256 independent mixture points per sample
(512 dimensions) the weights, means and variances agree with the mixture within the standard
errors of 4096 points (``tests/test_adaptive_sde.py``).

The noise of attempt k (k = 0, 1, ... over the whole run, accepted or not) is stream step k,
lane 0, so sample j's noise depends only on (seed, sample_offset + j, k): its result does not
depend on the batch it is drawn in. The host looks at the state only every ``check_every``
attempts, to stop; between looks the loop has no host sync.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .. import ops
from ..core.checks import check_bool, check_int, check_positive
from ..sde import VESDE
from .inputs import check_eps, checked, compiled, sampling_device, seed_tensor, starting_sample
from .schedule import Schedule

#: A sample is done when ``t - eps`` is at most this.
DONE_TOL = 1e-6
#: Step-size controller: ``h <- min(t - eps, SAFETY * h * E**-EXPONENT)`` (theta = r = 0.9 in the paper).
SAFETY, EXPONENT = 0.9, 0.9
# The error is floored here before its negative power, so that E = 0 (a noise-free, exact step)
# gives a large finite factor instead of inf * 0 at h = 0.
_MIN_ERROR = 1e-30


@dataclass(frozen=True)
class AdaptiveSDEResult:
    """The result of :func:`adaptive_sde_sample` with ``full_output=True``.

    Attributes:
        samples: x(eps) after the final denoise, shape ``(B, *shape)``.
        nfe: batched score-model calls, ``2 * attempts + 1``: what the wall time pays for. The
            batch runs until its slowest sample is done, and the end is checked every
            ``check_every`` attempts, so it includes up to ``check_every - 1`` idle attempts.
        nfe_per_sample: the mean over samples of the evaluations each sample needed, 2 per
            attempt (accepted or rejected) up to its own end, plus 1 for the denoise.
        attempts: attempts the batch ran.
        accepted, rejected: per-sample counts of accepted and rejected attempts, int64 (B,) on the CPU.
    """

    samples: torch.Tensor
    nfe: int
    nfe_per_sample: float
    attempts: int
    accepted: torch.Tensor
    rejected: torch.Tensor


def _check_atol(atol) -> float:
    if isinstance(atol, bool) or not isinstance(atol, numbers.Real) or not (math.isfinite(atol) and atol >= 0):
        raise ValueError(f"atol must be a finite float >= 0, got {atol!r}")
    return float(atol)


def _check_h_init(h_init, eps: float) -> float:
    if isinstance(h_init, bool) or not isinstance(h_init, numbers.Real) or not 0 < h_init <= 1 - eps:
        raise ValueError(f"h_init must be a float in (0, 1 - eps] = (0, {1 - eps:g}], got {h_init!r}")
    return float(h_init)


def _device_diffusion(marginal_prob_std, diffusion_coeff):
    """``g(t)`` for float64 device times t (B,), as float64 on t's device (no host round trip for
    a VESDE or a torch function of t)."""
    fn = marginal_prob_std.diffusion_coeff if isinstance(marginal_prob_std, VESDE) else diffusion_coeff

    def g(t: torch.Tensor) -> torch.Tensor:
        v = torch.as_tensor(fn(t), device=t.device).to(torch.float64)
        if v.numel() != t.numel():
            raise ValueError(f"diffusion_coeff must map a tensor of times elementwise, got shape {tuple(v.shape)} "
                             f"for t of shape {tuple(t.shape)}")
        return v.reshape(t.shape)
    return g


def adaptive_sde_sample(score_model, marginal_prob_std, diffusion_coeff=None, batch_size=64, device=None, eps=1e-3,
                        *, rtol=0.01, atol=0.0039, h_init=0.01, shape=(1, 28, 28), seed=None, x_T=None,
                        sample_offset=0, check_every=8, max_attempts=10_000, progress=False, full_output=False,
                        backend="auto", compile=False):
    """Adaptive SDE sampler of the reverse VE SDE (Jolicoeur-Martineau et al. 2021), per-sample steps.

    See the module docstring for the method. Each attempt costs two score evaluations, accepted
    or not; the batch runs until its slowest sample reaches eps, then takes one more for the
    final denoise. Tighter tolerances cost more evaluations: on the digits model the paper's
    defaults (rtol 0.01, atol one 8-bit level) take a few hundred.

    Args:
        score_model, marginal_prob_std, diffusion_coeff, batch_size, device, eps, shape, seed, x_T,
        sample_offset, backend: as for :func:`~scoreops.em_sample`. ``diffusion_coeff`` (or the
            VESDE's) is called on a float64 tensor of per-sample times on the sampling device.
        rtol: relative tolerance of the error, > 0 (0.01 in the paper; 0.02-0.1 is faster).
        atol: absolute tolerance, >= 0: one 8-bit level of the data range, 0.0039 for data in
            [0, 1] (the default), 0.0078 for [-1, 1]. With 0, an element at exactly 0 in both
            proposals makes the error NaN.
        h_init: the first step, in (0, 1 - eps].
        check_every: attempts between the host's checks for the end, >= 1: fewer host syncs
            against up to ``check_every - 1`` idle attempts at the end.
        max_attempts: stop with an error after this many attempts, >= 1.
        progress: show a tqdm bar of the slowest sample's progress from t = 1 to eps.
        full_output: return an :class:`AdaptiveSDEResult` (samples and NFE counts) instead of
            the samples alone.
        compile: False, True or a ``torch.compile`` mode: sample with the score model compiled
            once per model and mode (:func:`scoreops.samplers.inputs.compiled`).
    Returns:
        x(eps) after the final denoise, of shape ``(B, *shape)`` and x_T's dtype (float32 by
        default), or an :class:`AdaptiveSDEResult`.
    Raises:
        ValueError / TypeError: bad arguments, or a model whose output does not fit x.
        RuntimeError: NaN or Inf in the score or the state, or the samples not done after
            ``max_attempts`` attempts.
    """
    score_model = compiled(score_model, compile)
    eps = check_eps(eps)
    rtol, atol = check_positive("rtol", rtol), _check_atol(atol)
    h_init = _check_h_init(h_init, eps)
    check_every = check_int("check_every", check_every, 1)
    max_attempts = check_int("max_attempts", max_attempts, 1)
    sample_offset = check_int("sample_offset", sample_offset, 0)
    progress, full_output = check_bool("progress", progress), check_bool("full_output", full_output)
    schedule = Schedule(marginal_prob_std, diffusion_coeff)
    ends = torch.tensor([1.0, eps], dtype=torch.float64)
    schedule.g(ends)  # a clear error for a missing or broken diffusion_coeff, before any sampling
    std_eps = float(schedule.std(ends)[1])
    g = _device_diffusion(marginal_prob_std, diffusion_coeff)
    device = sampling_device(device, x_T, "x_T")
    backend = ops.resolve_backend(backend, device)
    seed = seed_tensor(seed, device)
    x = starting_sample("x_T", x_T, schedule, batch_size, shape, seed, sample_offset, device, backend)
    key = dict(seed=seed, lane=0, sample_offset=sample_offset, backend=backend)

    batch = x.shape[0]
    per_sample = (batch,) + (1,) * (x.dim() - 1)
    t = torch.ones(batch, dtype=torch.float64, device=device)
    h = torch.full_like(t, h_init)
    step = torch.zeros(1, dtype=torch.int64, device=device)  # the attempt index k: the noise's stream step
    tried = torch.zeros(batch, dtype=torch.int64, device=device)
    accepted = torch.zeros_like(tried)
    zero = torch.zeros(1, dtype=torch.float32, device=device)
    model, x_prev, attempts = checked(score_model), x, 0
    with torch.no_grad(), tqdm(total=1.0 - eps, desc="adaptive_sde", unit="t", disable=not progress) as bar:
        while True:
            for _ in range(min(check_every, max_attempts - attempts)):
                active = t - eps > DONE_TOL
                g1, t_next = g(t), t - h
                g2, root_h = g(t_next), h.sqrt()
                s = model(x, t.to(torch.float32))
                model = score_model
                x_low = ops.sde_step(x, s, (h * g1 * g1).float(), (root_h * g1).float(), zero, step=step, **key)
                s = model(x_low, t_next.to(torch.float32))
                x_high, err = ops.adaptive_sde_step(x, x_low, x_prev, s, (h * g2 * g2).float(),
                                                    (root_h * g2).float(), step=step, atol=atol, rtol=rtol, **key)
                accept = (err <= 1) & active
                x = torch.where(accept.reshape(per_sample), x_high, x)
                x_prev = torch.where(accept.reshape(per_sample), x_low, x_prev)
                t = torch.where(accept, t_next, t)
                h_new = torch.minimum(t - eps, SAFETY * h * err.double().clamp_min(_MIN_ERROR) ** -EXPONENT)
                h = torch.where(t - eps > DONE_TOL, h_new, 0.0)
                tried += active
                accepted += accept
                step += 1
                attempts += 1
            # The one host sync per check_every attempts.
            active = t - eps > DONE_TOL
            stalled = active & ~(h > 0)  # a NaN or infinite error makes h NaN or 0
            running, failed, t_max = torch.stack([active.any().double(), stalled.any().double(), t.max()]).tolist()
            bar.update(min(1.0 - t_max, 1.0 - eps) - bar.n)
            if failed:
                raise RuntimeError(f"adaptive_sde_sample: the error estimate became NaN or Inf by attempt {attempts} "
                                   "(a NaN or Inf score or state)")
            if not running:
                break
            if attempts >= max_attempts:
                left = int(active.sum())
                raise RuntimeError(f"adaptive_sde_sample: {left} of {batch} samples had not reached t = eps after "
                                   f"max_attempts = {max_attempts} attempts (the slowest at t = {t_max:.4g}); "
                                   f"raise max_attempts or loosen rtol / atol")
        s = model(x, torch.full((batch,), eps, dtype=torch.float32, device=device))
        x = ops.sde_step(x, s, std_eps ** 2, 0.0, 0.0, step=step, add_noise=False, **key)
        if not torch.isfinite(x).all():
            raise RuntimeError("adaptive_sde_sample: the samples contain NaN or Inf (a NaN or Inf score at t = eps)")
    if not full_output:
        return x
    tried, accepted = tried.cpu(), accepted.cpu()
    return AdaptiveSDEResult(samples=x, nfe=2 * attempts + 1, nfe_per_sample=float((2 * tried + 1).double().mean()),
                             attempts=attempts, accepted=accepted, rejected=tried - accepted)
