"""The samplers of the reverse VE SDE, one file per family, over the fused ops.

* :mod:`.reverse_sde`: :func:`em_sample`, :func:`milstein_sample`, :func:`pc_sample`;
* :mod:`.ode`: :func:`ode_sample`, the probability-flow ODE;
* :mod:`.adaptive_sde`: :func:`adaptive_sde_sample`, the adaptive SDE solver with per-sample steps;
* :mod:`.ito_sde`: :func:`sdeint`, a general diagonal-noise Ito SDE on the same fused update;
* :mod:`.sigma_space`: the few-step samplers in noise level, ``sample_heun(denoiser, x, sigmas)``
  and the like (k-diffusion's convention), with their float64 coefficient tables in
  :mod:`.sigma_updates`;
* :mod:`.few_step`: the same samplers with the tutorial's arguments, ``heun_sample(score_model, ...)``;
* :mod:`.denoiser`: the adapters between score models and denoisers.

Their shared parts: :mod:`.schedule` (std, g, dg/dt and the time grid), :mod:`.inputs`
(argument checks and the starting sample), :mod:`.loop` (the fixed-step plan and loop) and
:mod:`.cuda_graph` (capture and replay of the whole loop).
"""
from .adaptive_sde import AdaptiveSDEResult, adaptive_sde_sample
from .cuda_graph import clear_graph_cache
from .denoiser import DenoiserScore, ScoreDenoiser, denoiser_to_score, score_to_denoiser
from .few_step import (dpmpp_2m_sample, dpmpp_2m_sde_sample, dpmpp_3m_sde_sample, euler_ancestral_sample,
                       euler_sample, heun_sample, ipndm_sample, sigma_grid, unipc_sample)
from .ito_sde import sdeint
from .ode import DP_A, DP_B, DP_C, DP_E, ODE_TOL_FLOOR, ODEResult, ode_sample
from .reverse_sde import CORRECTIONS, PREDICTORS, em_sample, milstein_sample, pc_sample
from .schedule import SIGMA_SCHEDULES
from .sigma_space import (sample_dpmpp_2m, sample_dpmpp_2m_sde, sample_dpmpp_3m_sde, sample_euler,
                          sample_euler_ancestral, sample_heun, sample_ipndm, sample_unipc)

#: The few-step samplers by name: tutorial-style wrapper and sigma-space core.
FEW_STEP_SAMPLERS = {
    "heun": (heun_sample, sample_heun),
    "euler": (euler_sample, sample_euler),
    "euler_ancestral": (euler_ancestral_sample, sample_euler_ancestral),
    "dpmpp_2m": (dpmpp_2m_sample, sample_dpmpp_2m),
    "dpmpp_2m_sde": (dpmpp_2m_sde_sample, sample_dpmpp_2m_sde),
    "dpmpp_3m_sde": (dpmpp_3m_sde_sample, sample_dpmpp_3m_sde),
    "ipndm": (ipndm_sample, sample_ipndm),
    "unipc": (unipc_sample, sample_unipc),
}

__all__ = ["AdaptiveSDEResult", "CORRECTIONS", "DP_A", "DP_B", "DP_C", "DP_E", "FEW_STEP_SAMPLERS", "ODE_TOL_FLOOR",
           "ODEResult", "PREDICTORS", "SIGMA_SCHEDULES", "DenoiserScore", "ScoreDenoiser", "adaptive_sde_sample",
           "clear_graph_cache", "denoiser_to_score",
           "dpmpp_2m_sample", "dpmpp_2m_sde_sample", "dpmpp_3m_sde_sample", "em_sample", "euler_ancestral_sample",
           "euler_sample", "heun_sample", "ipndm_sample", "milstein_sample", "ode_sample", "pc_sample",
           "sample_dpmpp_2m", "sample_dpmpp_2m_sde", "sample_dpmpp_3m_sde", "sample_euler", "sample_euler_ancestral",
           "sample_heun", "sample_ipndm", "sample_unipc", "score_to_denoiser", "sdeint", "sigma_grid", "unipc_sample"]
