"""``scoreops bench``: run the step-kernel and sampler benchmarks."""
from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from .outputs import output_folder


def benchmark_module(name: str):
    """``scoreops.benchmarks.<name>`` when installed, else ``benchmarks.<name>`` of a source checkout."""
    try:
        return importlib.import_module(f"scoreops.benchmarks.{name}")
    except ModuleNotFoundError as e:
        if not (e.name or "").startswith("scoreops.benchmarks"):
            raise
    try:
        return importlib.import_module(f"benchmarks.{name}")
    except ModuleNotFoundError as e:
        raise RuntimeError("the benchmarks are not installed (scoreops.benchmarks) and this is not a source "
                           "checkout with a benchmarks/ folder") from e


def run(args: argparse.Namespace) -> Path:
    """Run ``args.which`` (steps, samplers or all), passing ``args.extra`` to a named benchmark."""
    out = output_folder(args.out or benchmark_module("common").default_out(args.quick))
    if args.extra and args.which == "all":
        raise ValueError(f"options {' '.join(args.extra)} belong to one benchmark: name it, "
                         "e.g. scoreops bench steps ...")
    names = ("bench_steps", "bench_samplers") if args.which == "all" else (f"bench_{args.which}",)
    common = ["--out", str(out), "--device", args.device] + (["--quick"] if args.quick else [])
    for name in names:
        benchmark_module(name).main(common + args.extra)
    return out
