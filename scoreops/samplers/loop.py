"""The fixed-step reverse-time loop: the per-step plan of device tensors, and the loop that
calls the score model and one fused op per step."""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from tqdm.auto import tqdm

from .. import ops
from ..core import noise
from .inputs import checked


@dataclass
class Plan:
    """Everything the loop reads per step, as device tensors (static buffers under a CUDA graph)."""

    # Each row starts on a 16-byte boundary (see aligned_rows), so every step launches the
    # kernel variants that the warm-up before a CUDA-graph capture compiled.
    t: torch.Tensor      # (N, B) float32: the model's time input at step k
    a: torch.Tensor      # (N, 1) float32: fused-update coefficients, x + a*s + b*z + c*(z*z - 1)
    b: torch.Tensor
    c: torch.Tensor
    steps: torch.Tensor  # (N, 1) int64: stream step counter of loop step k
    seed: torch.Tensor   # (1,) int64
    # (num_steps + 1,) int64: the Brownian tree's coordinate of each grid point (the predictor's
    # step k reads path[k] and path[k + 1]); None for i.i.d. noise.
    path: torch.Tensor | None = None
    # (B * D,) float32: the carry the steps of the Brownian walk share (flat, so that a clone
    # stays contiguous; NaN until step 0 writes it, so a step reading an unwritten carry shows);
    # None for i.i.d. noise.
    carry: torch.Tensor | None = None

    def clone(self) -> Plan:
        return Plan(**{f.name: _optional(aligned_rows, getattr(self, f.name)) for f in fields(self)})

    def copy_(self, other: Plan) -> None:
        for f in fields(self):
            mine, new = getattr(self, f.name), getattr(other, f.name)
            if (mine is None) != (new is None):  # the loop key holds the noise kind: never both
                raise ValueError(f"plan field {f.name!r} is set in one plan and None in the other")
            if mine is not None:
                mine.copy_(new)


def _optional(f, v):
    return None if v is None else f(v)


def aligned_rows(v: torch.Tensor) -> torch.Tensor:
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


class Loop:
    """The reverse-time loop: per step, ``corrector_steps`` Langevin steps, then one predictor step;
    with ``denoise``, a last row of the plan is the noise-free Tweedie step ``x + std**2 s``.

    ``noise`` is the predictor's: ``"iid"`` stream normals, or ``"brownian"`` increments of the
    path whose tree coordinates ``plan.path`` holds, on a tree of ``depth``, its noisy steps a
    carried walk through ``plan.carry`` (at most L + 1 node normals per element and step); the
    corrector's Langevin noise is i.i.d. either way.
    """

    def __init__(self, backend: str, num_steps: int, sample_offset: int, corrector_steps: int = 0,
                 snr: float = 0.16, noise_norm: str = "fixed", per_sample: bool = False, denoise: bool = False,
                 noise: str = "iid", depth: int = 0):
        self.backend, self.num_steps, self.sample_offset = backend, num_steps, sample_offset
        self.corrector_steps, self.snr, self.noise_norm, self.per_sample = corrector_steps, snr, noise_norm, per_sample
        self.denoise, self.noise, self.depth = denoise, noise, depth
        self.rows = num_steps + int(denoise)
        self._sde_step = ops.implementation("sde_step", backend)
        self._carried_step = ops.implementation("sde_step_carried_", backend)

    @property
    def key(self) -> tuple:
        return (self.backend, self.num_steps, self.sample_offset, self.corrector_steps, self.snr, self.noise_norm,
                self.per_sample, self.denoise, self.noise, self.depth)

    def step(self, x: torch.Tensor, score, k: int, plan: Plan) -> torch.Tensor:
        t, step = plan.t[k], plan.steps[k]
        for r in range(self.corrector_steps if k < self.num_steps else 0):
            x = ops.langevin_correct(x, score(x, t), self.snr, seed=plan.seed, step=step,
                                     lane=noise.corrector_lane(r), sample_offset=self.sample_offset,
                                     noise_norm=self.noise_norm, per_sample=self.per_sample, backend=self.backend)
        s = score(x, t)
        # The last step returns the mean, as the tutorial's samplers do.
        noisy = k < self.num_steps - 1
        if noisy and plan.carry is not None:
            # The carried step writes in place, into a copy: x is the caller's x(1) or the model's
            # input, which the model may keep.
            out = x.clone(memory_format=torch.contiguous_format)
            self._carried_step(out, s, plan.a[k], plan.b[k], plan.c[k], plan.seed, step, self.sample_offset,
                               plan.path, self.depth, plan.carry)
            return out
        return self._sde_step(x, s, plan.a[k], plan.b[k], plan.c[k], plan.seed, step, noise.LANE_PREDICTOR,
                              self.sample_offset, noisy, plan.path, self.depth)

    def run(self, score_model, x: torch.Tensor, plan: Plan, progress: bool = False,
            check_first: bool = True) -> torch.Tensor:
        """All steps from x(1); the first checks the model's output unless told not to, the rest
        call the model bare."""
        x = self.step(x, checked(score_model) if check_first else score_model, 0, plan)
        for k in tqdm(range(1, self.rows), initial=1, total=self.rows, disable=not progress):
            x = self.step(x, score_model, k, plan)
        return x

    def first_nonfinite_step(self, score_model, x: torch.Tensor, plan: Plan) -> int | None:
        """Rerun the loop checking every step; the first step whose result is NaN or Inf."""
        for k in range(self.rows):
            x = self.step(x, score_model, k, plan)
            if not torch.isfinite(x).all():
                return k
        return None
