"""Exponential moving average of model weights with warm-up, on ``torch.optim.swa_utils``."""
from __future__ import annotations

import contextlib
import copy
from typing import Iterator

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


class EMA(AveragedModel):
    """EMA of a model's parameters and buffers: ``avg <- d * avg + (1 - d) * current``.

    The decay warms up as ``d = min(decay, (1 + n) / (10 + n))``, where n is the number of
    updates made before this one, so early averages are not dominated by the random
    initialisation. The first :meth:`update_parameters` copies the weights (AveragedModel's
    convention); the second uses n = 1, and so on. ``n_averaged`` counts the updates.

    Args:
        model: the model being trained (unwrap DistributedDataParallel first).
        decay: the decay the warm-up approaches, in [0, 1).

    The averaged model is ``self.module``; call ``ema(x, t)`` to evaluate it directly, or use
    :meth:`swapped_into` to run the averaged weights inside the trained model itself.
    Integer buffers (e.g. BatchNorm's batch counter) follow the model. Floating ones are averaged
    in at least float32 but stored in the model's dtype: with bfloat16 weights a step smaller
    than half a bfloat16 ulp (``(1 - d) * |change|`` at ``d = 0.999``) is lost, so keep the
    weights in float32 (bfloat16 autocast does).
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = decay
        super().__init__(model, avg_fn=self._average, use_buffers=True)

    def _average(self, averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
        if not averaged.is_floating_point():  # counters such as BatchNorm's num_batches_tracked
            return current.clone()
        # In at least float32: in bfloat16 the weight 1 - d, and the step it makes, would round away.
        dtype = torch.promote_types(averaged.dtype, torch.float32)
        n = num_averaged.to(dtype)
        decay = ((1 + n) / (10 + n)).clamp(max=self.decay)
        return torch.lerp(averaged.to(dtype), current.to(dtype), 1 - decay).to(averaged.dtype)

    @contextlib.contextmanager
    def swapped_into(self, model: nn.Module) -> Iterator[nn.Module]:
        """Load the averaged weights into ``model`` for the ``with`` block, then restore its own.

        Example::

            with ema.swapped_into(model):
                samples = sampler(model, ...)
        """
        own = copy.deepcopy(model.state_dict())
        model.load_state_dict(self.module.state_dict())
        try:
            yield model
        finally:
            model.load_state_dict(own)
