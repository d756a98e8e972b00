"""Argument checks shared by every layer (the ops and their Triton wrappers, the samplers,
training, the CLI), with one message style.

Integers and floats may be Python or NumPy scalars; ``bool`` is refused where a number is asked for.
Tensor checks read only shapes, dtypes and devices, so they also run on fake tensors under
``torch.compile`` (:func:`overlaps`, which reads addresses, says no for a fake tensor).
"""
from __future__ import annotations

import math
import numbers
import operator

import torch
from torch._subclasses.fake_tensor import is_fake

#: The data dtypes of the ops; their arithmetic is float32.
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _is_bool(v) -> bool:
    return type(v).__name__ in ("bool", "bool_")  # Python's bool, NumPy's bool (named bool_ before NumPy 2)


def check_int(name: str, v, low: int) -> int:
    """``v`` as an int >= ``low``."""
    try:
        if _is_bool(v):
            raise TypeError
        n = operator.index(v)
    except TypeError:
        raise ValueError(f"{name} must be an int >= {low}, got {v!r}") from None
    if n < low:
        raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
    return n


def check_bool(name: str, v) -> bool:
    """``v``, a Python or NumPy bool (not a truthy string or number)."""
    if not _is_bool(v):
        raise ValueError(f"{name} must be True or False, got {v!r}")
    return bool(v)


def check_positive(name: str, v) -> float:
    """``v`` as a positive finite float."""
    if _is_bool(v) or not isinstance(v, numbers.Real) or not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{name} must be a positive finite float, got {v!r}")
    return float(v)


def check_sample_range(sample_offset: int, batch: int) -> None:
    """Samples ``sample_offset`` to ``sample_offset + batch - 1`` must have distinct stream counters."""
    if sample_offset + batch > 1 << 32:
        raise ValueError(f"sample_offset + batch size must be at most 2**32: the noise stream numbers samples "
                         f"in 32 bits, so sample 2**32 would repeat sample 0; got {sample_offset} + {batch}")


def overlaps(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether the memory spans of two tensors meet (a fake tensor has none)."""
    if is_fake(a) or is_fake(b) or a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr():
        return False
    a0, b0 = a.data_ptr(), b.data_ptr()
    return b0 < a0 + a.numel() * a.element_size() and a0 < b0 + b.numel() * b.element_size()


def check_choice(name: str, v, choices) -> str:
    """``v``, one of ``choices``."""
    if v not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {v!r}")
    return v


COEF_LAYOUTS = ("scalar", "per_sample", "per_element")


def coef_layout(name: str, coef_shape, x_shape) -> str:
    """How a step coefficient of ``coef_shape`` spreads over x of ``x_shape`` (B, ...).

    ``"scalar"``: one value; ``"per_sample"``: shape (B,) or (B, 1, ..., 1); ``"per_element"``:
    x's shape. Anything else raises ValueError (a (1, H, W) coefficient of B = H * W values is
    not one per sample). The csrc/ops.cpp check of the CPU and CUDA ops applies the same rule.
    """
    coef_shape, x_shape = tuple(coef_shape), tuple(x_shape)
    if math.prod(coef_shape) == 1:
        return "scalar"
    if coef_shape == x_shape:
        return "per_element"
    if 1 <= len(coef_shape) <= len(x_shape) and coef_shape[0] == x_shape[0] and all(n == 1 for n in coef_shape[1:]):
        return "per_sample"
    raise ValueError(f"{name} must be one value, one per sample (shape (B,) or (B, 1, ..., 1) with B = "
                     f"{x_shape[0]}) or one per element (x's shape {x_shape}), got shape {coef_shape}")


def check_float(name: str, t, like: torch.Tensor | None = None) -> torch.Tensor:
    """Check that ``t`` is a floating tensor (fp32/fp16/bf16) matching ``like``'s shape/device/dtype."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")
    if like is not None:
        if t.device != like.device:
            raise ValueError(f"{name} is on {t.device}, expected {like.device}")
        if t.shape != like.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(like.shape)}")
        if t.dtype != like.dtype:
            raise TypeError(f"{name} has dtype {t.dtype}, expected {like.dtype}")
    return t


def canonical_device(device: torch.device | str) -> torch.device:
    """``device`` as its tensors report it: ``"cuda"`` gets the current index, ``"cpu:0"`` loses its."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu") if device.type == "cpu" else device


def default_device(device: torch.device | str | None = None) -> torch.device:
    """``device``, or CUDA when available and else the CPU when it is None; in canonical form.

    A user's device is checked here, once per call: one that torch cannot parse, or a CUDA device
    this machine lacks, is a ValueError naming ``device``.
    """
    if device is None:
        return canonical_device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda', got {device!r}") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (parsed.index is not None and parsed.index >= count):
            raise ValueError(f"device {str(parsed)!r} does not exist on this machine: it has {count} CUDA device(s)")
    return canonical_device(parsed)


def as_counter(name: str, v, device: torch.device) -> torch.Tensor:
    """``seed``/``step`` as a 1-element int64 tensor on ``device``; an int counts modulo 2**64
    and must lie in [-2**63, 2**64)."""
    if isinstance(v, torch.Tensor):
        if v.dtype != torch.int64 or v.numel() != 1:
            raise TypeError(f"{name} must be an int or a 1-element int64 tensor, "
                            f"got {v.dtype} of shape {tuple(v.shape)}")
        # The plain comparison first: this runs twice per op call of a sampler loop.
        if v.device != device and canonical_device(v.device) != canonical_device(device):
            raise ValueError(f"{name} is on {v.device} but the data is on {device}")
        return v.reshape(1)
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an int or a 1-element int64 tensor, got {type(v).__name__}")
    v = int(v)
    if not -(1 << 63) <= v < 1 << 64:
        raise ValueError(f"{name} must fit in 64 bits, [-2**63, 2**64), got {v}")
    v &= (1 << 64) - 1
    return torch.tensor([v - (1 << 64) if v >= 1 << 63 else v], dtype=torch.int64, device=device)


def check_batched(name: str, t) -> torch.Tensor:
    """``t`` is a float tensor (see :func:`check_float`) with a leading batch dimension."""
    check_float(name, t)
    if t.dim() < 1:
        raise ValueError(f"{name} must have a leading batch dimension, got a 0-d tensor")
    return t


#: The most Runge-Kutta stages one rk_combine / rk_error_sq call takes, on every backend
#: (Dormand-Prince needs 7; the Triton kernels take each stage as a pointer argument, and
#: csrc/ops.h mirrors the number as kMaxRkStages).
MAX_RK_STAGES = 8

#: The most terms one sigma_step call combines, on every backend (csrc/ops.h: kMaxTerms).
#: iPNDM needs 7: D_i and the three earlier (x, D) pairs.
MAX_TERMS = 8


def check_stages(y, ks, coeffs, what: str = "stage") -> None:
    """``ks`` is a non-empty list of at most :data:`MAX_RK_STAGES` tensors like ``y``, with one
    ``what`` coefficient each."""
    check_float("y", y)
    if len(ks) != len(coeffs) or not ks:
        raise ValueError(f"need one coefficient per stage: {len(ks)} stages, {len(coeffs)} {what} coefficients")
    if len(ks) > MAX_RK_STAGES:
        raise ValueError(f"at most {MAX_RK_STAGES} Runge-Kutta stages per call, got {len(ks)}")
    for j, k in enumerate(ks):
        check_float(f"ks[{j}]", k, like=y)
