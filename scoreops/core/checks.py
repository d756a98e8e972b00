"""Argument checks shared by the samplers, :func:`scoreops.sdeint` and the ops' backends, with
one message style.

Integers and floats may be Python or NumPy scalars; ``bool`` is refused where a number is asked for.
"""
from __future__ import annotations

import math
import numbers
import operator


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
