"""``scoreops train``: train a ScoreNet by denoising score matching."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .outputs import output_folder

if TYPE_CHECKING:
    from ..training.train import TrainConfig


def run(config: TrainConfig) -> Path:
    """Train as ``config`` says; its checkpoints, ``loss.csv`` and ``loss.png`` go to ``config.out``."""
    from ..training import train as trainer

    config.validate()  # before the output folder is made
    out = output_folder(config.out)
    trainer.train(config)
    return out
