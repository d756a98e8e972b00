"""``scoreops figures``: draw the paper's figures as PNGs."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..core.checks import default_device
from .outputs import output_folder
from .runs import data_images, load_run, loss_runs


def run(args: argparse.Namespace) -> Path:
    """Draw figures 1-5 of the checkpoint's model into ``args.out``."""
    from ..evaluation.figures import make_figures

    device = default_device(args.device)
    model, config, sde, _ = load_run(args.checkpoint, args.raw_weights, device, args.compile)
    out = output_folder(args.out)
    runs = loss_runs(args.checkpoint) if args.loss_runs is None else args.loss_runs
    make_figures(model, sde, data_images(config, args.data_dir), out, loss_runs=runs, steps=args.steps,
                 few_steps=args.few_steps, milstein_steps=args.milstein_steps, tol=args.tol, seed=args.seed, device=device,
                 backend=args.backend)
    return out
