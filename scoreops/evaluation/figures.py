"""The seed paper's figures (``scoreops figures``), drawn for any trained ScoreNet.

=====================================  ==========================================================
``fig1_forward_diffusion.png``         one training image drifting to noise as t goes 0 -> 1
``fig2_milstein_samples.png``          64 random samples of the Milstein sampler (8x8 grids),
                                       after different amounts of sampling (step counts)
``fig3_interpolation.png``             rows of spherical interpolations between two prior
                                       noises, each decoded by the probability-flow ODE
``fig4_samplers.png``                  PC, EM, ODE and Milstein, then the eight few-step
                                       samplers (10 steps), from one seed
``fig5_loss.png``                      the training loss of one or more runs, side by side
=====================================  ==========================================================

Samples are clamped to the data range [0, 1] for display. Figures are drawn on
:class:`matplotlib.figure.Figure` directly, so no pyplot state or display is needed.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torchvision.utils import make_grid, save_image
from tqdm.auto import tqdm

from ..core.checks import check_int
from ..samplers import FEW_STEP_SAMPLERS
from .compare import ALL_SAMPLERS, DEFAULT_FEW_STEPS, SAMPLERS, SampleRun, draw_samples
from ..sde import VESDE, prior_sample

#: Sampler names as the figures print them.
TITLES = {"pc": "PC", "em": "EM", "ode": "ODE", "milstein": "Milstein", "heun": "Heun (EDM)", "euler": "Euler",
          "euler_ancestral": "Euler ancestral", "dpmpp_2m": "DPM-Solver++(2M)", "dpmpp_2m_sde": "DPM-Solver++(2M) SDE",
          "dpmpp_3m_sde": "DPM-Solver++(3M) SDE", "ipndm": "iPNDM", "unipc": "UniPC"}


def save_grid(images: torch.Tensor, path: str | Path, nrow: int = 8, min_tile: int = 64) -> Path:
    """Save ``images`` (N, C, H, W) as a PNG grid of ``nrow`` columns, clamped to [0, 1].

    Tiles smaller than ``min_tile`` pixels are enlarged by an integer factor (nearest neighbour),
    so that 8x8 or 16x16 images stay legible; the saved tensors keep their true size.
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[0] == 0:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a non-empty (N, C, H, W) batch, got {got}")
    nrow = check_int("nrow", nrow, 1)
    grid = make_grid(images.detach().float().cpu().clamp(0.0, 1.0), nrow=nrow, padding=1, pad_value=1.0)
    scale = max(1, math.ceil(min_tile / images.shape[-1]))
    grid = F.interpolate(grid[None], scale_factor=scale, mode="nearest")[0]
    save_image(grid, path)
    return Path(path)


def _show(ax, image: torch.Tensor) -> None:
    """Draw one (C, H, W) image, clamped to [0, 1], on ``ax``, grey for one channel, without ticks."""
    image = image.detach().float().cpu().clamp(0.0, 1.0)
    if image.shape[0] == 1:
        ax.imshow(image[0].numpy(), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


#: Figure 1's times: std(t) grows like sigma**t, so the image fades within the first third.
FORWARD_TIMES = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)


def forward_diffusion_figure(image: torch.Tensor, sde: VESDE, times=FORWARD_TIMES, seed: int = 0) -> Figure:
    """Figure 1: ``x(t) = x(0) + std(t) z`` for one image at each of ``times``, with one fixed z.

    Each panel is scaled from its own minimum to its maximum: clamped to the data range, every
    x(t) with std(t) above ~0.5 would show as black and white salt and pepper.

    Args:
        image: x(0), (C, H, W) in [0, 1].
        sde: gives ``std(t)``.
        times: the times shown, in [0, 1].
        seed: seeds z.
    """
    if not isinstance(image, torch.Tensor) or image.dim() != 3:
        raise ValueError(f"image must be one (C, H, W) tensor, got "
                         f"{tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__}")
    z = torch.randn(image.shape, generator=torch.Generator().manual_seed(seed))
    fig = Figure(figsize=(1.4 * len(times), 1.9), layout="constrained")
    for ax, t in zip(fig.subplots(1, len(times)), times):
        std = float(sde.marginal_prob_std(torch.tensor(float(t), dtype=torch.float64)))
        x = image.cpu() + std * z
        _show(ax, (x - x.min()) / (x.max() - x.min()).clamp_min(1e-12))
        ax.set_title(f"t = {t:.3g}\nstd = {std:.2g}", fontsize=9)
    fig.suptitle(f"Forward diffusion: an image drifting to the prior (each panel scaled to its range), seed {seed}")
    return fig


def slerp(z0: torch.Tensor, z1: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between the rows of z0 and z1 (B, ...) at ``weights`` (K,) in [0, 1].

    Prior noise lives near a sphere of radius ``std(1) sqrt(d)``; a straight line between two
    such points passes well inside it (its midpoint has about 1/sqrt(2) of the norm), where the
    model sees atypical inputs, while the great circle stays on it.

    Returns:
        (B, K, ...): row b, column k is the point at ``weights[k]`` from ``z0[b]`` to ``z1[b]``.
    """
    if z0.shape != z1.shape or z0.dim() < 2:
        raise ValueError(f"z0 and z1 must be batches (B, ...) of one shape, got {tuple(z0.shape)} and "
                         f"{tuple(z1.shape)}")
    if weights.dim() != 1:
        raise ValueError(f"weights must have shape (K,), got {tuple(weights.shape)}")
    a, b = z0.flatten(1).double(), z1.flatten(1).double()
    cos = (F.normalize(a, dim=1) * F.normalize(b, dim=1)).sum(1, keepdim=True).clamp(-1.0, 1.0)
    angle = torch.acos(cos)[:, None]                                  # (B, 1, 1)
    w = weights.double().to(a.device)[None, :, None]                  # (1, K, 1)
    sin = torch.sin(angle)
    small = sin.abs() < 1e-6  # nearly parallel: the line and the circle agree
    c0 = torch.where(small, 1 - w, torch.sin((1 - w) * angle) / torch.where(small, 1.0, sin))
    c1 = torch.where(small, w, torch.sin(w * angle) / torch.where(small, 1.0, sin))
    out = c0 * a[:, None] + c1 * b[:, None]
    return out.to(z0.dtype).reshape(z0.shape[0], len(weights), *z0.shape[1:])


def interpolation_run(model, sde: VESDE, shape, *, rows: int = 4, columns: int = 8, tol: float = 1e-5,
                      seed: int = 0, device: torch.device | str = "cpu", backend: str = "auto",
                      progress: bool = False) -> SampleRun:
    """Figure 3's images: ``rows`` pairs of prior noises, each joined by ``columns`` slerp points
    (ends included) and decoded by the deterministic probability-flow ODE sampler.

    Returns:
        The ODE's run; its samples are (rows * columns, C, H, W), row-major.
    """
    if rows < 1 or columns < 2:
        raise ValueError(f"need rows >= 1 and columns >= 2, got {rows} and {columns}")
    ends = prior_sample(sde.marginal_prob_std, 2 * rows, shape, seed=seed, device=device, backend=backend)
    path = slerp(ends[:rows], ends[rows:], torch.linspace(0.0, 1.0, columns))
    return draw_samples("ode", model, sde, shape, tol=tol, x_T=path.reshape(rows * columns, *shape), device=device,
                        backend=backend, progress=progress)


def interpolation_figure(run: SampleRun, columns: int, seed: int) -> Figure:
    """Figure 3: the images of :func:`interpolation_run` as rows of ``columns``, the slerp weight
    of each column on the x axis, titled with the ODE's settings, its nfe and the noise ``seed``."""
    images = run.samples.detach().float().cpu()
    if len(images) % columns:
        raise ValueError(f"{len(images)} images do not fill rows of {columns}")
    rows, (height, width) = len(images) // columns, images.shape[-2:]
    fig = Figure(figsize=(0.8 * columns + 1.2, 0.8 * rows + 1.4), layout="constrained")
    ax = fig.add_subplot()
    _show(ax, make_grid(images.clamp(0.0, 1.0), nrow=columns, padding=1, pad_value=1.0))
    # make_grid puts tile k at pixels 1 + k * (side + 1) onwards, after a 1-pixel border.
    ax.set_xticks([1 + c * (width + 1) + (width - 1) / 2 for c in range(columns)],
                  [f"{w:.2g}" for w in torch.linspace(0.0, 1.0, columns).tolist()], fontsize=8)
    ax.set_yticks([1 + r * (height + 1) + (height - 1) / 2 for r in range(rows)],
                  [str(r + 1) for r in range(rows)], fontsize=8)
    ax.tick_params(length=0)
    ax.set_xlabel("slerp weight w: x(1) = slerp(z0, z1, w)")
    ax.set_ylabel("pair of prior noises (z0, z1)")
    fig.suptitle(f"Interpolation between prior noises, decoded by the probability-flow ODE\n"
                 f"{TITLES[run.sampler]}, {run.details()}, seed {seed}", fontsize=11)
    return fig


def runs_figure(runs, title: str, nrow: int = 8, panel_inches: float = 3.2, columns: int | None = None) -> Figure:
    """Sample grids side by side, one panel per :class:`scoreops.evaluation.compare.SampleRun`, each titled
    with its sampler, settings and nfe (Figures 2 and 4, and the grids of ``scoreops compare``).

    Args:
        runs: the runs, in display order.
        title: the figure's title.
        nrow: images per row of each panel.
        panel_inches: the width of each panel.
        columns: panels per row (default: all in one row).
    """
    if not runs:
        raise ValueError("runs_figure needs at least one run")
    columns = min(columns or len(runs), len(runs))
    rows = math.ceil(len(runs) / columns)
    fig = Figure(figsize=(panel_inches * columns, (panel_inches + 0.4) * rows + 0.4 * (rows > 1)),
                 layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, columns)).reshape(-1)
    for ax in axes[len(runs):]:
        ax.set_axis_off()
    for ax, run in zip(axes, runs):
        grid = make_grid(run.samples.detach().float().cpu().clamp(0.0, 1.0), nrow=nrow, padding=1, pad_value=1.0)
        _show(ax, grid)
        ax.set_title(f"{TITLES[run.sampler]}\n{run.details()}", fontsize=10)
    fig.suptitle(title)
    return fig


def read_loss(run_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(steps, losses) of a training run, from its ``loss.csv`` (written by ``scoreops train``)."""
    path = Path(run_dir) / "loss.csv"
    if not path.is_file():
        raise FileNotFoundError(f"no training loss log {path} (scoreops train writes loss.csv in its --out folder)")
    with open(path, newline="") as f:
        try:
            rows = [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path} is not a step,loss table: {e!r}") from e
    if not rows:
        raise ValueError(f"{path} holds no loss values")
    steps, losses = zip(*rows)
    return np.array(steps), np.array(losses)


def run_title(run_dir: str | Path) -> str:
    """A loss panel's title: the run folder's name and, when it holds a checkpoint, the model
    options the paper's loss figures compare (time-embedding size, convolution padding)."""
    from ..training.checkpoint import CONFIG_FILE, CheckpointError, resolve_checkpoint

    name = Path(run_dir).resolve().name
    try:
        config = json.loads((resolve_checkpoint(run_dir) / CONFIG_FILE).read_text())
        return f"{name}\nembed_dim {config['embed_dim']}, padding {config['padding']}"
    except (CheckpointError, OSError, ValueError, KeyError):
        return name


def loss_figure(curves: dict) -> Figure:
    """Figures 5-6: one panel per run, side by side on a shared log axis: the per-step loss and
    its moving average over 1/50 of the run.

    Args:
        curves: panel title -> (steps, losses), as :func:`read_loss` returns them.
    """
    if not curves:
        raise ValueError("loss_figure needs at least one run's loss curve")
    fig = Figure(figsize=(4.5 * len(curves), 3.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(curves), sharey=True))
    for ax, (title, (steps, losses)) in zip(axes, curves.items()):
        ax.plot(steps, losses, color="tab:blue", alpha=0.3, linewidth=0.8, label="per step")
        window = max(1, len(losses) // 50)
        if window > 1:
            smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
            ax.plot(steps[window - 1:], smooth, color="tab:blue", label=f"mean of {window} steps")
        ax.set(xlabel="step", yscale="log", title=title)
        ax.legend()
    axes[0].set_ylabel("denoising score-matching loss")
    return fig


def make_figures(model, sde: VESDE, data_images: torch.Tensor, out_dir: str | Path, *, loss_runs=(),
                 steps: int = 500, few_steps: int = DEFAULT_FEW_STEPS, milstein_steps=(500, 2000), tol: float = 1e-5,
                 samplers_shown: int = 16,
                 seed: int = 0, device: torch.device | str = "cpu", backend: str = "auto",
                 progress: bool = True) -> list[Path]:
    """Draw all five figures into ``out_dir``.

    Args:
        model: the trained score model; ``sde`` its SDE.
        data_images: training images (N, C, H, W) in [0, 1]; Figure 1 shows one of them.
        loss_runs: run folders (holding ``loss.csv``) for Figure 5; none skips it.
        steps: steps of the SDE samplers in Figure 4; ``tol`` the ODE's tolerance.
        few_steps: steps (sigma intervals) of the few-step samplers in Figure 4.
        milstein_steps: the step counts of Figure 2's panels. The paper's Milstein correction
            adds noise of order ``g g' dt``, so its samples need more steps than EM's to be clean.
        samplers_shown: samples per sampler in Figure 4.
        seed: seeds the data image, the noise and every sampler.
        device, backend: where and how to sample.
        progress: show a tqdm bar over the figures.

    Returns:
        The paths written.
    """
    out = Path(out_dir)
    shape = tuple(data_images.shape[1:])
    sample = dict(seed=seed, device=device, backend=backend)
    curves = {run_title(run): read_loss(run) for run in loss_runs}  # before the sampling, to fail early
    paths = []
    with tqdm(total=4 + bool(curves), desc="figures", unit="fig", disable=not progress) as bar:
        index = int(torch.randint(len(data_images), (), generator=torch.Generator().manual_seed(seed)))
        paths.append(save_figure(forward_diffusion_figure(data_images[index], sde, seed=seed),
                                 out / "fig1_forward_diffusion.png"))
        bar.update()
        milstein = [draw_samples("milstein", model, sde, shape, num_samples=64, steps=n, **sample)
                    for n in milstein_steps]
        paths.append(save_figure(runs_figure(milstein, f"64 samples of the paper's Milstein sampler (dg/dt "
                                                       f"correction), seed {seed}"),
                                 out / "fig2_milstein_samples.png"))
        bar.update()
        columns = 8
        paths.append(save_figure(interpolation_figure(interpolation_run(model, sde, shape, columns=columns, tol=tol,
                                                                        **sample), columns, seed),
                                 out / "fig3_interpolation.png"))
        bar.update()
        runs = [draw_samples(name, model, sde, shape, num_samples=samplers_shown, tol=tol, **sample,
                             steps=few_steps if name in FEW_STEP_SAMPLERS else steps)
                for name in ALL_SAMPLERS]
        title = (f"One model: the paper's four samplers, then the few-step samplers; {samplers_shown} samples "
                 f"each, seed {seed}")
        paths.append(save_figure(runs_figure(runs, title, nrow=math.ceil(math.sqrt(samplers_shown)),
                                             columns=len(SAMPLERS)), out / "fig4_samplers.png"))
        bar.update()
        if curves:
            paths.append(save_figure(loss_figure(curves), out / "fig5_loss.png"))
            bar.update()
    return paths


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG at 120 dpi; returns ``path``."""
    fig.savefig(path, format="png", dpi=120)
    return Path(path)
