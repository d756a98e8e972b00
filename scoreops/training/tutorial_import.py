"""Import of the well-known tutorial's trained ScoreNet (its ``ckpt.pth``) as a scoreops checkpoint.

The tutorial saves its MNIST ScoreNet's bare ``state_dict``; :func:`import_tutorial` reads it
without unpickling code (``torch.load(weights_only=True)``), renames its layers to this
ScoreNet's, checks every name, shape and value, and writes a step-0 checkpoint with
:func:`scoreops.training.checkpoint.save_checkpoint`.
"""
from __future__ import annotations

import functools
import math
import os
from pathlib import Path

import torch

from ..sde import marginal_prob_std
from .checkpoint import CheckpointError, latest_checkpoint, run_lock, save_checkpoint
from .data import data_location
from .ema import EMA
from .models import ScoreNet, model_options

TUTORIAL_SIGMA = 25.0
# The tutorial ScoreNet's layers (encoder conv1-4, decoder tconv4-1) and where each lives in ours.
_TUTORIAL_LAYERS = {
    "embed.0": "embed.0", "embed.1": "embed.1", "tconv1": "final",
    **{f"conv{i + 1}": f"down.{i}.conv" for i in range(4)},
    **{f"dense{i + 1}.dense": f"down.{i}.dense" for i in range(4)},
    **{f"gnorm{i + 1}": f"down.{i}.norm" for i in range(4)},
    **{f"tconv{4 - i}": f"up.{i}.conv" for i in range(3)},
    **{f"dense{5 + i}.dense": f"up.{i}.dense" for i in range(3)},
    **{f"tgnorm{4 - i}": f"up.{i}.norm" for i in range(3)},
}
_FROM_TUTORIAL_LAYER = {ours: theirs for theirs, ours in _TUTORIAL_LAYERS.items()}


def tutorial_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tutorial ScoreNet's ``state_dict`` (``conv1.weight``, ``dense1.dense.bias``, ...,
    ``tconv1.bias``; with or without DataParallel's ``module.`` prefix) under this ScoreNet's names.

    Raises:
        CheckpointError: a key that is not one of the tutorial ScoreNet's weights, a key given
            twice (with and without the prefix), or a value that is not a finite float tensor.
    """
    renamed = {}
    for key, value in state.items():
        layer, _, name = key.removeprefix("module.").rpartition(".") if isinstance(key, str) else ("", "", "")
        if layer not in _TUTORIAL_LAYERS:
            raise CheckpointError(f"{key!r} is not a weight of the tutorial's ScoreNet")
        if not (isinstance(value, torch.Tensor) and value.is_floating_point() and value.layout == torch.strided
                and value.device.type == "cpu"):
            what = (f"a {value.dtype} {value.layout} tensor on {value.device.type}" if isinstance(value, torch.Tensor)
                    else f"a {type(value).__name__}")
            raise CheckpointError(f"{key!r} holds {what}, not a float tensor of weights")
        if not torch.isfinite(value).all():
            raise CheckpointError(f"{key!r} holds NaN or Inf")
        ours = f"{_TUTORIAL_LAYERS[layer]}.{name}"
        if ours in renamed:
            raise CheckpointError(f"{key!r} is given twice, with and without the 'module.' prefix")
        renamed[ours] = value
    return renamed


def _tutorial_name(key: str) -> str:
    """The tutorial's name of one of this ScoreNet's weights."""
    layer, _, name = key.rpartition(".")
    return f"{_FROM_TUTORIAL_LAYER[layer]}.{name}"


def _load_failure(error: Exception) -> str:
    """The reason in ``torch.load``'s error, without its page of advice on ``weights_only``."""
    text = str(error)
    reason = text.partition("WeightsUnpickler error:")[2].strip() or text.strip()
    return " ".join(reason.split("\n\n")[0].split(". ")[0].split()) or type(error).__name__


def import_tutorial(source: str | os.PathLike, run_dir: str | os.PathLike, *, sigma: float = TUTORIAL_SIGMA,
                    data_dir: str | os.PathLike | None = None) -> Path:
    """Turn the tutorial's ``ckpt.pth`` (its MNIST ScoreNet's ``state_dict``) into a checkpoint
    that :func:`load_model` and every ``scoreops`` command read.

    Args:
        source: the ``.pth`` file, read with ``torch.load(weights_only=True)``.
        run_dir: the new run folder; it must not hold checkpoints yet.
        sigma: the SDE's sigma the model was trained with (the tutorial's is 25).
        data_dir: where MNIST lives, stored for the commands that compare with the data.
    Returns:
        The checkpoint folder, at step 0: the EMA weights are the imported ones and the optimiser
        state is a fresh Adam's (the tutorial saves neither).
    """
    if not (math.isfinite(sigma) and sigma > 1):
        raise ValueError(f"sigma must be a finite number > 1, got {sigma}")
    if not Path(source).is_file():
        raise CheckpointError(f"{source} is a directory, not a file" if Path(source).is_dir() else f"no file {source}")
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises pickle, zip and runtime errors alike
        raise CheckpointError(f"cannot read {source} as a saved state_dict: {_load_failure(e)}") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"{source} holds a {type(state).__name__}, not a state_dict")
    options = model_options("tutorial")
    model = ScoreNet(functools.partial(marginal_prob_std, sigma=sigma), **options)
    weights, expected = tutorial_weights(state), model.state_dict()
    extra = sorted(weights.keys() - expected.keys())
    if extra:
        raise CheckpointError(f"{_tutorial_name(extra[0])} is not a weight of the tutorial's ScoreNet")
    for key, want in expected.items():  # named as in the tutorial, which its user knows
        tutorial_name = _tutorial_name(key)
        if key not in weights:
            raise CheckpointError(f"{source} lacks {tutorial_name}, a weight of the tutorial's ScoreNet")
        if weights[key].shape != want.shape:
            raise CheckpointError(f"{tutorial_name} in {source} has shape {tuple(weights[key].shape)}; the "
                                  f"tutorial's MNIST ScoreNet has {tuple(want.shape)}")
    model.load_state_dict(weights)
    config = {**options, "preset": "tutorial", "sigma": float(sigma), "dataset": "mnist", "image_size": 28,
              "data_dir": data_location("mnist", data_dir), "imported_from": str(Path(source).resolve())}
    with run_lock(run_dir):
        if latest_checkpoint(run_dir) is not None:
            raise FileExistsError(f"{run_dir} already holds checkpoints; import into a new folder")
        return save_checkpoint(run_dir, step=0, model=model, ema=EMA(model),
                               optimizer=torch.optim.Adam(model.parameters()), config=config)
