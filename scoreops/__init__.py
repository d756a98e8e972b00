"""scoreops: fast, fused samplers for score-based diffusion models.

The drop-in samplers (``em_sample``, ``milstein_sample``, ``pc_sample``, ``ode_sample``) take the
same leading arguments as the well-known tutorial's eager samplers; their per-step updates run
as fused kernels (see :mod:`scoreops.ops`).
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Public names and the submodule that defines each; imported on first use so that
# `import scoreops` stays cheap and does not load Triton or the C++ extension.
_EXPORTS = {
    "VESDE": "sde",
    "marginal_prob_std": "sde",
    "diffusion_coeff": "sde",
    "em_sample": "samplers",
    "milstein_sample": "samplers",
    "pc_sample": "samplers",
    "ode_sample": "samplers",
    "ODEResult": "samplers",
    "adaptive_sde_sample": "samplers",
    "AdaptiveSDEResult": "samplers",
    "clear_graph_cache": "samplers",
    "sdeint": "samplers",
    "heun_sample": "samplers",
    "euler_sample": "samplers",
    "euler_ancestral_sample": "samplers",
    "dpmpp_2m_sample": "samplers",
    "dpmpp_2m_sde_sample": "samplers",
    "dpmpp_3m_sde_sample": "samplers",
    "ipndm_sample": "samplers",
    "unipc_sample": "samplers",
    "sigma_grid": "samplers",
    "score_to_denoiser": "samplers",
    "denoiser_to_score": "samplers",
    "ScoreNet": "training.models",
    "EMA": "training.ema",
    "load_model": "training.checkpoint",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'scoreops' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))


__all__ = list(_EXPORTS)
