"""Train a ScoreNet by denoising score matching: ``scoreops train`` / ``python -m scoreops.train``.

One entry point for one process and for ``torchrun --nproc_per_node=N -m scoreops.train``; under
torchrun the model is wrapped in DistributedDataParallel (gloo on CPU, NCCL on GPUs), every
rank trains on its own shard of each epoch, and rank 0 alone writes checkpoints and logs.

Reproducibility: the order of epoch e is ``DistributedSampler(seed=seed).set_epoch(e)``'s, and
the noise of step k on rank r comes from a generator seeded by (seed, r, k). A checkpoint at
step k therefore fixes the rest of the run, and ``--resume`` ends with the same weights as an
uninterrupted run.

Outputs in ``--out``: ``checkpoints/step-*/`` (see :mod:`scoreops.training.checkpoint`), ``loss.csv`` and
``loss.png``, rewritten with every checkpoint.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import save_file
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from . import checkpoint as ckpt
from ..core.checks import check_choice, check_int
from .data import DATASETS, data_location, load_images
from .distributed import barrier, local_rank, mean_over_ranks, process_group
from .ema import EMA
from .models import PRESETS, ScoreNet, model_options
from ..sde import marginal_prob_std

# The model each data set gets when --preset is not given.
DEFAULT_PRESET = {"digits": "digits", "mnist": "tutorial", "fashion-mnist": "tutorial",
                  "cifar10": "paper", "folder": "paper"}
# Options that may change between a run and its resumption; all others must match the checkpoint.
RESUME_MAY_CHANGE = ("steps", "save_every", "data_dir", "download", "out", "resume", "device", "save_rank_weights")


@dataclasses.dataclass
class TrainConfig:
    """Training options (``scoreops train --help`` describes each); ``None`` means the data set's
    or preset's default."""

    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False
    image_size: int | None = None
    preset: str | None = None
    channels: list[int] | None = None
    embed_dim: int | None = None
    kernel_size: int | None = None
    padding: int | None = None
    activation: str | None = None
    sigma: float = 25.0
    loss_eps: float = 1e-5
    steps: int = 3000
    batch_size: int = 64
    lr: float = 1e-3
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    bf16: bool = False
    seed: int = 0
    save_every: int = 500
    out: str = "runs/train"
    resume: bool = False
    device: str | None = None
    save_rank_weights: bool = False

    def validate(self) -> None:
        """Raise ValueError naming the first option out of range."""
        check_choice("dataset", self.dataset, DATASETS)
        for name in ("steps", "batch_size", "save_every", "seed"):
            check_int(name, getattr(self, name), 0 if name == "seed" else 1)
        if self.image_size is not None:
            check_int("image_size", self.image_size, 1)
        if self.preset is not None:
            check_choice("preset", self.preset, tuple(PRESETS))
        for name in ("lr", "loss_eps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not (self.sigma > 1 and math.isfinite(self.sigma)):
            raise ValueError(f"sigma must be a finite number > 1, got {self.sigma}")
        if not self.loss_eps < 1:
            raise ValueError(f"loss_eps must be in (0, 1), got {self.loss_eps}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.grad_clip < 0:
            raise ValueError(f"grad_clip must be >= 0 (0 = off), got {self.grad_clip}")


def dsm_loss(model: Callable, x: torch.Tensor, marginal_prob_std: Callable, eps: float = 1e-5,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Denoising score-matching loss of the tutorial.

    ``t ~ U(eps, 1)``, ``z ~ N(0, I)``, ``s = model(x + std(t) z, t)``, and the loss is the batch
    mean of ``sum((s * std(t) + z)**2)`` over each image.

    Args:
        model: score model, ``model(x, t)`` with t of shape (B,).
        x: clean images (B, ...).
        marginal_prob_std: t (B,) -> std (B,).
        eps: smallest time sampled.
        generator: source of t and z (on x's device).
    Returns:
        0-d float32 tensor.
    """
    if not 0 < eps < 1:
        raise ValueError(f"eps must be in (0, 1), got {eps}")
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch, got shape {tuple(x.shape)}")
    t = torch.rand(x.shape[0], device=x.device, generator=generator) * (1.0 - eps) + eps
    z = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
    std = marginal_prob_std(t).view(-1, *([1] * (x.dim() - 1)))
    score = model(x + z * std, t).float()
    return (score * std + z).square().flatten(1).sum(1).mean()


def step_seed(seed: int, rank: int, step: int) -> int:
    """A 63-bit generator seed for the noise of ``step`` on ``rank``, independent across all three."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1, np.uint64)[0] >> np.uint64(1))


class LossLog:
    """The loss of every step, written as ``loss.csv`` and drawn as ``loss.png`` in the run folder."""

    def __init__(self, run_dir: Path):
        self.csv_path, self.png_path = run_dir / "loss.csv", run_dir / "loss.png"
        self.rows: list[tuple[int, float]] = []

    def load(self, upto_step: int) -> None:
        """Read the rows of a previous run up to ``upto_step`` (the checkpoint resumed from)."""
        if self.csv_path.is_file():
            with open(self.csv_path, newline="") as f:
                self.rows = [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)
                             if int(r["step"]) <= upto_step]

    def append(self, step: int, loss: float) -> None:
        self.rows.append((step, loss))

    def write(self) -> None:
        def write_csv(path):
            with open(path, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["step", "loss"])
                writer.writerows((s, repr(v)) for s, v in self.rows)

        ckpt.atomic_write(self.csv_path, write_csv)
        ckpt.atomic_write(self.png_path, lambda path: self.figure().savefig(path, format="png", dpi=120))

    def figure(self):
        """The loss curve (the seed paper's Figures 5-6): raw per-step loss and a moving average."""
        from matplotlib.figure import Figure

        steps, losses = np.array([r[0] for r in self.rows]), np.array([r[1] for r in self.rows])
        fig = Figure(figsize=(6, 4), layout="tight")
        ax = fig.add_subplot()
        ax.plot(steps, losses, color="tab:blue", alpha=0.3, linewidth=0.8, label="per step")
        window = max(1, len(losses) // 50)
        if window > 1:
            smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
            ax.plot(steps[window - 1:], smooth, color="tab:blue", label=f"mean of {window}")
        ax.set(xlabel="step", ylabel="denoising score-matching loss", yscale="log", title="Training loss")
        ax.legend()
        return fig


def _run_config(config: TrainConfig, images: torch.Tensor, world_size: int) -> dict:
    """The resolved configuration stored with every checkpoint (preset and data defaults filled in)."""
    preset = config.preset or DEFAULT_PRESET[config.dataset]
    options = model_options(preset, in_channels=images.shape[1], channels=config.channels,
                            embed_dim=config.embed_dim, kernel_size=config.kernel_size, padding=config.padding,
                            activation=config.activation)
    local = ("download", "out", "resume", "device", "save_rank_weights")
    stored = {k: v for k, v in dataclasses.asdict(config).items() if k not in local}
    stored["data_dir"] = data_location(config.dataset, config.data_dir)
    return {**stored, **options, "preset": preset, "image_size": images.shape[-1], "world_size": world_size}


def _check_resumable(saved: dict, current: dict, source: Path) -> None:
    differ = {k: (saved.get(k), v) for k, v in current.items() if k not in RESUME_MAY_CHANGE and saved.get(k) != v}
    if differ:
        listed = ", ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in sorted(differ.items()))
        raise ckpt.CheckpointError(f"checkpoint {source} does not match this run's config ({listed}); "
                                   f"resume with the same options or use another --out")


def _restore(config: TrainConfig, run_config: dict, model, ema, optimizer, device) -> int:
    """Load the newest checkpoint of ``config.out`` if resuming; returns the step to continue from."""
    newest = ckpt.latest_checkpoint(config.out)
    if newest is None:
        return 0
    if not config.resume:
        raise FileExistsError(f"{config.out} already holds checkpoints; pass --resume to continue that run, "
                              f"or choose another --out")
    saved = ckpt.read_checkpoint(newest, device=device)
    _check_resumable(saved.config, run_config, saved.path)
    ckpt.load_weights(model, saved.model, saved.path)
    ckpt.load_weights(ema.module, saved.ema, saved.path)
    ema.n_averaged.fill_(saved.ema_updates)
    optimizer.load_state_dict(saved.optimizer)
    return saved.step


class _Batches:
    """The batch of step k (from 1) on this rank: batch ``(k - 1) % steps_per_epoch`` of the rank's
    shard of epoch ``(k - 1) // steps_per_epoch``, in DistributedSampler's order for that epoch."""

    def __init__(self, images: torch.Tensor, batch_size: int, rank: int, world_size: int, seed: int):
        self.images, self.batch_size = images, batch_size
        self.sampler = DistributedSampler(images, num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                          drop_last=True)
        self.steps_per_epoch = len(self.sampler) // batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f"the data set has {len(images)} images, fewer than batch_size ({batch_size}) "
                             f"times the number of processes ({world_size})")
        self._epoch, self._order = None, None

    def __call__(self, step: int) -> torch.Tensor:
        epoch, index = divmod(step - 1, self.steps_per_epoch)
        if epoch != self._epoch:
            self.sampler.set_epoch(epoch)
            self._epoch, self._order = epoch, torch.tensor(list(self.sampler), device=self.images.device)
        return self.images[self._order[index * self.batch_size:(index + 1) * self.batch_size]]


def train(config: TrainConfig) -> Path:
    """Train as ``config`` says; returns the final checkpoint folder.

    Raises:
        FloatingPointError: the loss became NaN or infinite; nothing is saved for that step, so
            the newest checkpoint is the last good one.
    """
    config.validate()
    with process_group(config.device) as (rank, world_size, device), \
            (ckpt.run_lock(config.out) if rank == 0 else contextlib.nullcontext()):
        return _train(config, rank, world_size, device)


def _training_images(config: TrainConfig, world_size: int) -> torch.Tensor:
    """The data set; under torchrun one process per machine (local rank 0) may download it, while
    the others wait."""
    load = functools.partial(load_images, config.dataset, config.data_dir, config.image_size)
    if not (config.download and world_size > 1):
        return load(download=config.download)
    images = load(download=True) if local_rank() == 0 else None
    barrier(world_size)
    return load(download=False) if images is None else images


def _train(config: TrainConfig, rank: int, world_size: int, device: torch.device) -> Path:
    images = _training_images(config, world_size).to(device)
    run_config = _run_config(config, images, world_size)
    std = functools.partial(marginal_prob_std, sigma=config.sigma)
    torch.manual_seed(config.seed)
    model = ScoreNet(std, **{k: run_config[k] for k in ckpt.MODEL_KEYS}).to(device)
    model.check_input(images[:1])
    ema = EMA(model, config.ema_decay)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    start = _restore(config, run_config, model, ema, optimizer, device)
    if start > config.steps:
        raise ValueError(f"the checkpoint in {config.out} is at step {start}, beyond --steps {config.steps}")
    net = model
    if world_size > 1:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    batches = _Batches(images, config.batch_size, rank, world_size, config.seed)
    out = Path(config.out)
    log = LossLog(out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        log.load(start)
    generator = torch.Generator(device=device)
    model.train()
    saved_at = start
    with tqdm(total=config.steps, initial=start, desc="train", unit="step", disable=rank != 0) as bar:
        for step in range(start + 1, config.steps + 1):
            generator.manual_seed(step_seed(config.seed, rank, step))
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16):
                loss = dsm_loss(net, batches(step), std, config.loss_eps, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            # A finite loss can still have Inf/NaN gradients, which the step would spread into the
            # weights and the EMA (and a save into the 'last good' checkpoint). Loss and gradient
            # norm (equal on every rank after DDP's all-reduce) come to the host in one read.
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip or math.inf)
            value, norm = mean_over_ranks(torch.stack([loss.detach().float(), grad_norm.float()]), world_size)
            for what, v in (("loss", value), ("gradient norm", norm)):
                if not math.isfinite(v):
                    raise FloatingPointError(f"non-finite {what} ({v}) at step {step}; stopped before the step, so "
                                             f"the last good checkpoint is {ckpt.latest_checkpoint(out) or 'none'}")
            optimizer.step()
            ema.update_parameters(model)
            log.append(step, value)
            bar.set_postfix(loss=f"{value:.4g}", refresh=False)
            bar.update()
            if step % config.save_every == 0 or step == config.steps:
                if rank == 0:
                    ckpt.save_checkpoint(out, step=step, model=model, ema=ema, optimizer=optimizer, config=run_config)
                    log.write()
                saved_at = step
    if config.save_rank_weights:
        out.mkdir(parents=True, exist_ok=True)
        save_file(model.state_dict(), out / f"rank{rank}.safetensors")
    return out / ckpt.CHECKPOINTS_DIR / f"step-{saved_at:08d}"
