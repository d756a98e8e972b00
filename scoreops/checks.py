"""Argument checks shared by the samplers and :func:`scoreops.sdeint`, with one message style.

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


def check_positive(name: str, v) -> float:
    """``v`` as a positive finite float."""
    if _is_bool(v) or not isinstance(v, numbers.Real) or not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{name} must be a positive finite float, got {v!r}")
    return float(v)


def check_choice(name: str, v, choices) -> str:
    """``v``, one of ``choices``."""
    if v not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {v!r}")
    return v
