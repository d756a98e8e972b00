"""The samplers' argument checks, their score-model check, and the starting sample x(1)."""
from __future__ import annotations

import numbers

import torch

from ..core.checks import as_counter, check_float, check_sample_range, default_device
from ..sde import prior_sample
from .schedule import Schedule


def sampling_device(device, x_T: torch.Tensor | None, name: str) -> torch.device:
    """The sampling device; ``x_T`` (the starting sample, called ``name``) is checked here first."""
    if x_T is not None:
        check_float(name, x_T)
    device = default_device(x_T.device if device is None and x_T is not None else device)
    if device.type == "meta":
        raise ValueError("the meta device has no data to sample; use a CPU or CUDA device")
    if x_T is not None and x_T.device.type != device.type:
        raise ValueError(f"{name} is on {x_T.device} but device={device}")
    return device


def check_eps(eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not 0 < eps < 1:
        raise ValueError(f"eps must be a float in (0, 1), got {eps!r}")
    return float(eps)


def seed_tensor(seed, device: torch.device) -> torch.Tensor:
    """The seed as a (1,) int64 device tensor; None draws one from torch's default generator."""
    if seed is None:
        seed = int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64))
    return as_counter("seed", seed, device)


def starting_sample(name: str, x_T, schedule: Schedule, batch_size, shape, seed, sample_offset, device,
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


#: torch.compile modes :func:`compiled` accepts (True means "default").
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs", "max-autotune", "reduce-overhead")


def compiled(model, compile=False):
    """``model`` through ``torch.compile``, compiled once per model object and mode.

    On this project's 2-core CPU the default mode makes the digits and tutorial ScoreNets'
    forward pass 1.3-1.9x faster at batch 512, but a cold compile costs 20-45 s, which pays off
    only after some 50-80 calls at that batch (``bench_samplers --model-variants``): worth it for
    long runs and many batches in one process, not for one 10-step run.

    Args:
        model: the score model (or denoiser); an ``nn.Module`` keeps its compiled forms, so that a
            later call with the same model and mode reuses them.
        compile: False (the model itself), True (torch.compile's default mode) or one of
            :data:`COMPILE_MODES`. ``"reduce-overhead"`` captures CUDA graphs of its own; on CUDA
            the samplers' ``cuda_graph`` already captures the whole loop.
    Returns:
        The callable to sample with.
    """
    if compile is False:
        return model
    mode = "default" if compile is True else compile
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile must be True, False or one of {COMPILE_MODES}, got {compile!r}")
    cache = getattr(model, "_scoreops_compiled", None)
    if cache is None:
        cache = {}
        if isinstance(model, torch.nn.Module):
            object.__setattr__(model, "_scoreops_compiled", cache)  # a plain attribute, not a submodule
    if mode not in cache:
        cache[mode] = torch.compile(model, mode=None if mode == "default" else mode)
    return cache[mode]


def checked(model, name: str = "score_model"):
    """``model(x, t_or_sigma)`` wrapped with checks of its output; used for its first call in a run."""
    def call(x, t):
        try:
            s = model(x, t)
        except RuntimeError as e:
            if isinstance(e, torch.OutOfMemoryError):
                raise
            raise ValueError(f"{name}(x, t) failed for x of shape {tuple(x.shape)} = (batch_size, *shape) and "
                             f"dtype {x.dtype}, t of dtype {t.dtype}: do shape and dtype match the model? ({e})") from e
        if not isinstance(s, torch.Tensor):
            raise TypeError(f"{name} must return a tensor, got {type(s).__name__}")
        if s.shape != x.shape:
            raise ValueError(f"{name} returned shape {tuple(s.shape)} for x of shape {tuple(x.shape)}; "
                             "its output must have x's shape")
        if s.dtype != x.dtype:
            raise TypeError(f"{name} returned {s.dtype} for x of dtype {x.dtype}; its output must have x's "
                            "dtype (pass x in the model's dtype)")
        if s.device != x.device:
            raise ValueError(f"{name} returned a tensor on {s.device} for x on {x.device}")
        return s
    return call
