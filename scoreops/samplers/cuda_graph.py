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


class GraphedWalk:
    """A sigma-space sampler's loop captured as one CUDA graph.

    ``walk(x)`` reads only x and the run's device tables (``buffers``), and branches only on host
    values that the cache key holds; a replay copies a new x and new tables into the captured ones.
    """

    def __init__(self, walk, x: torch.Tensor, buffers: list[torch.Tensor]):
        self.x_in, self.buffers = x.clone(), buffers
        self._capture(walk)

    def _capture(self, walk) -> None:
        # The warm-up walks the whole grid once, so that every kernel variant the loop launches
        # is compiled or loaded before capture, and checks the model's first output.
        side = torch.cuda.Stream(device=self.x_in.device)
        side.wait_stream(torch.cuda.current_stream(self.x_in.device))
        with torch.cuda.stream(side):
            walk(self.x_in)
        torch.cuda.current_stream(self.x_in.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        capture = torch.cuda.Stream(device=self.x_in.device)
        with torch.cuda.stream(capture), torch.cuda.graph(self.graph, stream=capture):
            self.x_out = walk(self.x_in)

    def _replay(self) -> None:
        self.graph.replay()

    def __call__(self, x: torch.Tensor, buffers: list[torch.Tensor]) -> torch.Tensor:
        self.x_in.copy_(x)
        for static, new in zip(self.buffers, buffers, strict=True):
            static.copy_(new)
        self._replay()
        return self.x_out.clone()


# score model (or the object of a bound method) -> {loop and shape key: captured graph, or None
# where capture failed}. Weak keys, so a graph goes when its model does.
_GRAPHS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def clear_graph_cache() -> None:
    """Drop every captured sampling graph and the GPU memory it holds.

    Call it after replacing (rather than updating in place) the parameters of a model that was
    sampled with a CUDA graph: a graph reads the parameter memory it was captured with.
    """
    _GRAPHS.clear()


def cached_graph(name: str, model, key: tuple, capture, strict: bool):
    """The graph cached for ``model`` under ``key``, captured by ``capture()`` on first use;
    None when capture fails and not ``strict`` (the caller then runs the plain loop)."""
    owner = getattr(model, "__self__", model)
    try:
        cache = _GRAPHS.setdefault(owner, {})
    except TypeError:  # not weak-referenceable: capture without caching
        cache = {}
    # A module in train mode (dropout, batch norm) captures different kernels than in eval mode.
    key = key + (getattr(model, "__func__", None), getattr(owner, "training", None))
    if key not in cache:
        try:
            cache[key] = capture()
        except RuntimeError as e:
            if strict or isinstance(e, torch.OutOfMemoryError):
                raise
            warnings.warn(f"{name}: CUDA graph capture failed, running the plain loop instead "
                          f"(pass cuda_graph=False to skip the attempt): {e}", RuntimeWarning, stacklevel=4)
            cache[key] = None
    return cache[key]


def run_graphed(name: str, loop: Loop, score_model, x_T: torch.Tensor, plan: Plan, strict: bool):
    """Replay the cached graph for this loop, capturing it on first use; None when capture fails
    and not ``strict`` (the caller then runs the plain loop)."""
    key = (loop.key, tuple(x_T.shape), x_T.dtype, x_T.device)
    graphed = cached_graph(name, score_model, key, lambda: GraphedLoop(loop, score_model, x_T, plan), strict)
    return None if graphed is None else graphed(x_T, plan)


def run_graphed_walk(name: str, walk, model, key: tuple, x: torch.Tensor, buffers: list[torch.Tensor],
                     strict: bool):
    """Replay the cached graph of a sigma-space sampler's ``walk``, capturing it on first use;
    None when capture fails and not ``strict``."""
    key = (name, tuple(x.shape), x.dtype, x.device, tuple((tuple(b.shape), b.dtype) for b in buffers)) + key
    graphed = cached_graph(name, model, key, lambda: GraphedWalk(walk, x, buffers), strict)
    return None if graphed is None else graphed(x, buffers)


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
