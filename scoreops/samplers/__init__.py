"""The samplers of the reverse VE SDE, one file per family, over the fused ops.

* :mod:`.reverse_sde`: :func:`em_sample`, :func:`milstein_sample`, :func:`pc_sample`;
* :mod:`.ode`: :func:`ode_sample`, the probability-flow ODE;
* :mod:`.ito_sde`: :func:`sdeint`, a general diagonal-noise Ito SDE on the same fused update.

Their shared parts: :mod:`.schedule` (std, g, dg/dt and the time grid), :mod:`.inputs`
(argument checks and the starting sample), :mod:`.loop` (the fixed-step plan and loop) and
:mod:`.cuda_graph` (capture and replay of the whole loop).
"""
from .cuda_graph import clear_graph_cache
from .ito_sde import sdeint
from .ode import DP_A, DP_B, DP_C, DP_E, ODE_TOL_FLOOR, ODEResult, ode_sample
from .reverse_sde import CORRECTIONS, PREDICTORS, em_sample, milstein_sample, pc_sample

__all__ = ["CORRECTIONS", "DP_A", "DP_B", "DP_C", "DP_E", "ODE_TOL_FLOOR", "ODEResult", "PREDICTORS",
           "clear_graph_cache", "em_sample", "milstein_sample", "ode_sample", "pc_sample", "sdeint"]
