"""``scoreops import-tutorial``: make a run folder of the tutorial's ``ckpt.pth``."""
from __future__ import annotations

import argparse
from pathlib import Path


def run(args: argparse.Namespace) -> Path:
    """Import ``args.pth`` into the new run folder ``args.out``."""
    from ..training.tutorial_import import import_tutorial

    folder = import_tutorial(args.pth, args.out, sigma=args.sigma, data_dir=args.data_dir)
    print(f"imported {args.pth} as {folder}")
    return Path(args.out).resolve()
