"""Training checkpoints: safe to load, written atomically, verified on read.

A run folder holds ``checkpoints/step-NNNNNNNN/``, one folder per saved step, each with

    model.safetensors   the trained weights
    ema.safetensors     the EMA weights (same keys)
    optim.pt            the optimiser state (read back with ``torch.load(weights_only=True)``)
    config.json         everything needed to rebuild the model and continue the run
    state.json          step, EMA update count and the SHA-256 of the four files above

A checkpoint is written into a hidden temporary folder and then renamed into place, so a run
killed at any moment leaves every ``step-*`` folder complete; the newest ``keep`` are kept.
Loading checks the hashes, so a truncated or corrupted file is refused with
:class:`CheckpointError` instead of giving wrong weights. Nothing is unpickled.
:mod:`scoreops.training.tutorial_import` turns the tutorial's ``ckpt.pth`` into such a folder.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..core.checks import check_bool
from ..sde import marginal_prob_std
from .models import ScoreNet

MODEL_FILE, EMA_FILE, OPTIM_FILE = "model.safetensors", "ema.safetensors", "optim.pt"
CONFIG_FILE, STATE_FILE = "config.json", "state.json"
CHECKPOINT_FILES = (MODEL_FILE, EMA_FILE, OPTIM_FILE, CONFIG_FILE, STATE_FILE)
LOCK_FILE = ".lock"  # in the run folder, held by the training run writing to it
CHECKPOINTS_DIR = "checkpoints"
MODEL_KEYS = ("in_channels", "channels", "embed_dim", "kernel_size", "padding", "activation")
_STEP_DIR = re.compile(r"step-(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete, corrupted or does not fit the model."""


@dataclass
class Checkpoint:
    """The verified contents of one checkpoint folder (tensors on the requested device)."""

    path: Path
    config: dict
    step: int
    ema_updates: int
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor]
    optimizer: dict | None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    """The process's file-mode creation mask."""
    try:  # Linux: readable without changing it, so no other thread sees a different mask meanwhile
        with open("/proc/self/status") as status:
            return next(int(line.split()[1], 8) for line in status if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it to ``path``.

    The temporary name is hidden and ends in ``path``'s suffix, for writers that choose the
    format by it (e.g. ``.png``); a failed ``write`` leaves nothing behind.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; give it a new file's mode
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def checkpoint_steps(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """The complete checkpoints of a run folder as (step, folder), oldest first.

    A step folder without its state file (written last, before the folder is renamed into
    place) is not one: it was not made by :func:`save_checkpoint`.
    """
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := _STEP_DIR.match(p.name)) and (p / STATE_FILE).is_file()]
    return sorted(found)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint folder of a run folder, or None when it has none."""
    steps = checkpoint_steps(run_dir)
    return steps[-1][1] if steps else None


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike) -> Iterator[None]:
    """Hold the run folder's lock for the block, so that a second training run on the same folder
    fails at once instead of interleaving its checkpoints with this one's.

    Raises:
        CheckpointError: another process holds the lock.
    """
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    with open(run / LOCK_FILE, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CheckpointError(f"another training run is writing to {run} (it holds {run / LOCK_FILE}); "
                                  "wait for it to finish or choose another --out") from None
        except OSError as e:  # a file system without locks: run unguarded
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
        yield


def save_checkpoint(run_dir: str | os.PathLike, *, step: int, model: torch.nn.Module, ema, optimizer,
                    config: dict, keep: int = 2) -> Path:
    """Write ``run_dir/checkpoints/step-<step>/`` atomically and drop all but the newest ``keep``.

    Args:
        run_dir: the run folder.
        step: optimiser steps taken so far.
        model: the trained model (not the DDP wrapper).
        ema: its :class:`scoreops.training.ema.EMA`.
        optimizer: the optimiser.
        config: JSON-serialisable run configuration; must hold the keys of :data:`MODEL_KEYS`
            and ``sigma`` so that :func:`load_model` can rebuild the model.
        keep: how many of the newest checkpoints to keep (at least 1).
    Returns:
        The checkpoint folder.
    """
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    missing = [k for k in MODEL_KEYS + ("sigma",) if k not in config]
    if missing:
        raise ValueError(f"config lacks {missing}, needed to rebuild the model from the checkpoint")
    root = Path(run_dir) / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    try:
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; give it a new folder's mode
        save_file(model.state_dict(), tmp / MODEL_FILE)
        save_file(ema.module.state_dict(), tmp / EMA_FILE)
        torch.save(optimizer.state_dict(), tmp / OPTIM_FILE)
        _write_json(tmp / CONFIG_FILE, config)
        files = (MODEL_FILE, EMA_FILE, OPTIM_FILE, CONFIG_FILE)
        _write_json(tmp / STATE_FILE, {"step": step, "ema_updates": int(ema.n_averaged),
                                       "sha256": {name: _sha256(tmp / name) for name in files}})
        for name in files + (STATE_FILE,):
            _fsync(tmp / name)
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for _, old in checkpoint_steps(run_dir)[:-keep]:
        shutil.rmtree(old)
    for stale in root.glob(".tmp-*"):  # left by a run killed while saving (the run lock keeps others out)
        shutil.rmtree(stale, ignore_errors=True)
    return final


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint folder meant by ``path``: a checkpoint folder, one of its files, a run
    folder (its newest checkpoint) or a run's ``checkpoints`` folder.

    Raises:
        CheckpointError: ``path`` is none of these, e.g. a run's ``loss.csv``.
    """
    path = Path(path)
    if path.is_file():
        if path.name not in CHECKPOINT_FILES or not (path.parent / STATE_FILE).is_file():
            raise CheckpointError(f"{path} is not a scoreops checkpoint: give the run folder of `scoreops train` "
                                  f"or one of its {CHECKPOINTS_DIR}/step-* folders")
        return path.parent
    if (path / STATE_FILE).is_file():
        return path
    newest = latest_checkpoint(path.parent if path.name == CHECKPOINTS_DIR else path)
    if newest is None:
        raise CheckpointError(f"no checkpoint at {path} (expected a step-* folder with {STATE_FILE}, "
                              f"or a run folder with {CHECKPOINTS_DIR}/step-*)")
    return newest


def _read_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} does not hold a JSON object")
    return obj


def read_checkpoint(path: str | os.PathLike, device: torch.device | str = "cpu",
                    with_optimizer: bool = True) -> Checkpoint:
    """Verify and load a checkpoint (see :func:`resolve_checkpoint` for ``path``).

    Raises:
        CheckpointError: a file is missing, truncated or does not match its recorded hash.
    """
    folder = resolve_checkpoint(path)
    state = _read_json(folder / STATE_FILE)
    try:
        step, ema_updates, hashes = int(state["step"]), int(state["ema_updates"]), dict(state["sha256"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{folder / STATE_FILE} is incomplete: {e!r}") from e
    for name in (MODEL_FILE, EMA_FILE, CONFIG_FILE) + ((OPTIM_FILE,) if with_optimizer else ()):
        file = folder / name
        if not file.is_file():
            raise CheckpointError(f"checkpoint {folder} lacks {name}")
        if _sha256(file) != hashes.get(name):
            older = [p for n, p in checkpoint_steps(folder.parent.parent) if n < step]
            remedy = (f"delete {folder} to use the one before it, {older[-1].name}" if older
                      else "retrain, or restore it from a copy")
            raise CheckpointError(f"checkpoint file {file} is corrupted or truncated (SHA-256 does not match "
                                  f"{STATE_FILE}); {remedy}")
    device = torch.device(device)
    optimizer = (torch.load(folder / OPTIM_FILE, map_location=device, weights_only=True)
                 if with_optimizer else None)
    return Checkpoint(path=folder, config=_read_json(folder / CONFIG_FILE), step=step, ema_updates=ema_updates,
                      model=load_file(folder / MODEL_FILE, device=str(device)),
                      ema=load_file(folder / EMA_FILE, device=str(device)), optimizer=optimizer)


def build_model(config: dict) -> ScoreNet:
    """A freshly initialised ScoreNet as described by a checkpoint's ``config``."""
    try:
        options = {k: config[k] for k in MODEL_KEYS}
        sigma = float(config["sigma"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint config cannot describe a model: {e!r}") from e
    return ScoreNet(functools.partial(marginal_prob_std, sigma=sigma), **options)


def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], source: str | os.PathLike) -> None:
    """``model.load_state_dict(weights)``, turning a key or shape mismatch, or a weight that is NaN
    or Inf, into a CheckpointError (such a model would only ever draw NaN samples)."""
    bad = next((k for k, v in weights.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad is not None:
        raise CheckpointError(f"the weights in {source} hold NaN or Inf (first in {bad}): the run that wrote them "
                              "diverged; use an earlier checkpoint")
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointError(f"the weights in {source} do not fit the model (its config does not match): "
                              f"{_first_mismatch(model.state_dict(), weights)}") from e


def _first_mismatch(expected: dict[str, torch.Tensor], weights: dict[str, torch.Tensor]) -> str:
    """One line on how ``weights`` differ from a model's ``expected`` state (load_state_dict lists all)."""
    missing, unexpected = sorted(expected.keys() - weights.keys()), sorted(weights.keys() - expected.keys())
    if missing or unexpected:
        return (f"{len(missing)} weights missing (e.g. {missing[:1]}), "
                f"{len(unexpected)} unexpected (e.g. {unexpected[:1]})")
    wrong = [k for k in expected if weights[k].shape != expected[k].shape]
    return (f"{len(wrong)} weights of another shape, e.g. {wrong[0]}: {tuple(weights[wrong[0]].shape)} in the "
            f"checkpoint, {tuple(expected[wrong[0]].shape)} in the model" if wrong else "load_state_dict refused them")


def load_model(path: str | os.PathLike, ema: bool = True,
               device: torch.device | str = "cpu") -> tuple[ScoreNet, dict]:
    """Rebuild a trained ScoreNet from a checkpoint, in eval mode.

    Args:
        path: a checkpoint folder, a file in one, or a run folder (its newest checkpoint).
        ema: load the EMA weights (default) instead of the raw trained ones.
        device: where the model goes.
    Returns:
        (model, config); ``config["in_channels"]``, ``config["image_size"]`` and ``config["sigma"]``
        give the sample shape and the SDE.
    """
    ema = check_bool("ema", ema)
    ckpt = read_checkpoint(path, device=device, with_optimizer=False)
    model = build_model(ckpt.config).to(device)
    load_weights(model, ckpt.ema if ema else ckpt.model, ckpt.path)
    return model.eval(), ckpt.config
