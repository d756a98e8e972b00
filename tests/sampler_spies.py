"""Test helpers that watch a sampler from outside: :class:`WalkOnCPU`, CUDA-graph capture and replay
emulated on the CPU, and :func:`record_ops`, which wraps the step ops a sampler fetches."""
from __future__ import annotations

from scoreops.samplers import cuda_graph


class WalkOnCPU(cuda_graph.GraphedWalk):
    """GraphedWalk whose capture keeps the walk and whose replay walks again: the cache key and the
    copy of a new call's x and tables into the captured run's are tested without a GPU. A table
    missing from a run's buffers, or a host value missing from the key, replays the first call's."""

    captures = 0

    def _capture(self, walk):
        type(self).captures += 1
        self.walk = walk

    def _replay(self):
        self.x_out = self.walk(self.x_in)


def record_ops(monkeypatch, module, recorder, carried_name: str) -> list:
    """Wrap the ops ``module`` fetches with ``ops.implementation``: one ``recorder(op)`` per sampler
    run (each run fetches its plain step op first), whose ``carried(op)`` wraps the run's carried
    twin ``carried_name``. Returns the list of recorders, one per run."""
    recorders = []
    real = module.ops.implementation

    def implementation(name, backend):
        if name == carried_name:
            return recorders[-1].carried(real(name, backend))
        recorders.append(recorder(real(name, backend)))
        return recorders[-1]
    monkeypatch.setattr(module.ops, "implementation", implementation)
    return recorders
