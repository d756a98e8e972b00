"""What the commands read from a trained run: its model, SDE and sample shape, its training
images, and its loss log."""
from __future__ import annotations

from pathlib import Path

import torch


def load_run(checkpoint: str, raw_weights: bool, device: torch.device, compile: bool = False):
    """(model, config, sde, sample shape) of a checkpoint or run folder; the EMA weights unless
    ``raw_weights``; the model through ``torch.compile`` with ``compile`` (see
    :func:`scoreops.samplers.inputs.compiled`)."""
    from ..samplers.inputs import compiled
    from ..sde import VESDE
    from ..training.checkpoint import load_model

    model, config = load_model(checkpoint, ema=not raw_weights, device=device)
    shape = (config["in_channels"], config["image_size"], config["image_size"])
    return compiled(model, compile), config, VESDE(float(config["sigma"])), shape


def data_images(config: dict, data_dir: str | None) -> torch.Tensor:
    """The training images of the run described by a checkpoint's ``config`` (from ``data_dir``,
    else where the run found them)."""
    from ..training.data import load_images

    return load_images(config["dataset"], data_dir or config.get("data_dir"), config["image_size"])


def loss_runs(checkpoint: str) -> list[Path]:
    """The run folder of a checkpoint when it holds the run's ``loss.csv``, else nothing."""
    from ..training.checkpoint import CHECKPOINTS_DIR, resolve_checkpoint

    folder = resolve_checkpoint(checkpoint)
    run = folder.parent.parent
    if folder.parent.name == CHECKPOINTS_DIR and (run / "loss.csv").is_file():
        return [run]
    print(f"no loss.csv beside checkpoint {folder}: skipping the loss figure (pass --loss-runs to draw it)")
    return []
