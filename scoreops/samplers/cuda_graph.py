"""The whole sampling loop, score model included, captured once as a CUDA graph and replayed."""
from __future__ import annotations

import warnings
import weakref

import torch

from .. import ops
from .inputs import checked
from .loop import Loop, Plan


class GraphedLoop:
    """The whole loop captured as one CUDA graph; a replay reads x(1), the plan and the seed
    from static buffers."""

    def __init__(self, loop: Loop, score_model, x_T: torch.Tensor, plan: Plan):
        self.x_T, self.plan = x_T.clone(), plan.clone()
        # Warm up on a side stream, as capture requires: check the model's output, and compile or
        # load the kernels of a noisy and of the last, noise-free step before capture.
        side = torch.cuda.Stream(device=x_T.device)
        side.wait_stream(torch.cuda.current_stream(x_T.device))
        with torch.cuda.stream(side):
            x = loop.step(self.x_T, checked(score_model), 0, self.plan)
            loop.step(x, score_model, loop.rows - 1, self.plan)
        torch.cuda.current_stream(x_T.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        capture = torch.cuda.Stream(device=x_T.device)
        # The outer context gives the caller back its stream even when capture fails:
        # torch.cuda.graph's exit raises from capture_end before leaving its own stream context.
        with torch.cuda.stream(capture), torch.cuda.graph(self.graph, stream=capture):
            self.x_out = loop.run(score_model, self.x_T, self.plan, check_first=False)

    def __call__(self, x_T: torch.Tensor, plan: Plan) -> torch.Tensor:
        self.x_T.copy_(x_T)
        self.plan.copy_(plan)
        self.graph.replay()
        return self.x_out.clone()


# score model (or the object of a bound method) -> {loop and shape key: GraphedLoop, or None
# where capture failed}. Weak keys, so a graph goes when its model does.
_GRAPHS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def clear_graph_cache() -> None:
    """Drop every captured sampling graph and the GPU memory it holds.

    Call it after replacing (rather than updating in place) the parameters of a model that was
    sampled with a CUDA graph: a graph reads the parameter memory it was captured with.
    """
    _GRAPHS.clear()


def run_graphed(name: str, loop: Loop, score_model, x_T: torch.Tensor, plan: Plan, strict: bool):
    """Replay the cached graph for this loop, capturing it on first use; None when capture fails
    and not ``strict`` (the caller then runs the plain loop)."""
    owner = getattr(score_model, "__self__", score_model)
    try:
        cache = _GRAPHS.setdefault(owner, {})
    except TypeError:  # not weak-referenceable: capture without caching
        cache = {}
    # A module in train mode (dropout, batch norm) captures different kernels than in eval mode.
    key = (loop.key, tuple(x_T.shape), x_T.dtype, x_T.device, getattr(score_model, "__func__", None),
           getattr(owner, "training", None))
    if key not in cache:
        try:
            cache[key] = GraphedLoop(loop, score_model, x_T, plan)
        except RuntimeError as e:
            if strict or isinstance(e, torch.OutOfMemoryError):
                raise
            warnings.warn(f"{name}: CUDA graph capture failed, running the plain loop instead "
                          f"(pass cuda_graph=False to skip the attempt): {e}", RuntimeWarning, stacklevel=3)
            cache[key] = None
    graphed = cache[key]
    return None if graphed is None else graphed(x_T, plan)


def use_graph(cuda_graph, device: torch.device, backend: str, progress: bool) -> bool:
    if cuda_graph == "auto":
        return device.type == "cuda" and backend in ops.GRAPH_SAFE_BACKENDS and not progress
    if cuda_graph is False:
        return False
    if cuda_graph is not True:
        raise ValueError(f"cuda_graph must be True, False or 'auto', got {cuda_graph!r}")
    if device.type != "cuda":
        raise ValueError(f"cuda_graph=True needs a CUDA device, got device {device}")
    if backend not in ops.GRAPH_SAFE_BACKENDS:
        raise ValueError(f"cuda_graph=True needs backend 'cuda' or 'triton'; {backend!r} reads the seed on the host")
    if progress:
        raise ValueError("progress=True reports every step, which a CUDA graph replay cannot; "
                         "pass cuda_graph=False or progress=False")
    return True
