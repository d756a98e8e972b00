"""``scoreops sample``: draw samples with one sampler, as a grid PNG and the raw tensor."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from ..training import distributed
from .outputs import output_folder, write_samples
from .runs import load_run


def run(args: argparse.Namespace) -> Path:
    """Draw the samples; under torchrun each process draws its shard of the stream's samples
    (``sample_offset``) and rank 0 gathers and writes them all."""
    from ..evaluation.compare import DEFAULT_FEW_STEPS, draw_samples
    from ..samplers import FEW_STEP_SAMPLERS

    with distributed.process_group(args.device) as (rank, world_size, device):
        if args.num_samples < world_size:
            raise ValueError(f"--num-samples {args.num_samples} is fewer than the {world_size} processes")
        model, _, sde, shape = load_run(args.checkpoint, args.raw_weights, device, args.compile)
        out = output_folder(args.out)
        offset, count = distributed.shard(args.num_samples, rank, world_size)
        steps = args.steps or (DEFAULT_FEW_STEPS if args.sampler in FEW_STEP_SAMPLERS else 500)
        run = draw_samples(args.sampler, model, sde, shape, num_samples=count, sample_offset=offset, steps=steps,
                           tol=args.tol, snr=args.snr, correction=args.correction, seed=args.seed, device=device,
                           backend=args.backend, progress=rank == 0)
        # The ODE's nfe and every wall time differ between shards: report the largest.
        nfe, seconds = distributed.max_over_ranks(
            torch.tensor([run.nfe, run.seconds], dtype=torch.float64, device=device), world_size).tolist()
        run = dataclasses.replace(run, samples=distributed.gather_shards(run.samples, args.num_samples, world_size),
                                  nfe=int(nfe), seconds=seconds)
        if rank == 0:
            write_samples(run, out, {"checkpoint": args.checkpoint, "seed": args.seed, "raw_weights": args.raw_weights,
                                     "backend": args.backend, "device": str(device), "processes": world_size})
            on = f" ({world_size} processes)" if world_size > 1 else ""
            print(f"{run.label}: {len(run.samples)} samples, {run.nfe} score evaluations, {run.seconds:.1f} s{on}")
    return out
