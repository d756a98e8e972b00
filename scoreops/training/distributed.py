"""torchrun support for training and sampling: the process group, and each rank's share of a batch.

Under ``torchrun`` every process runs the same command. Outside it, everything here is the
single-process case (rank 0 of 1), so callers need no branch of their own.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist

from ..core.checks import default_device


def launched() -> bool:
    """Whether this process was started by torchrun with more than one process."""
    return dist.is_torchelastic_launched() and int(os.environ.get("WORLD_SIZE", "1")) > 1


def rank() -> int:
    """This process's rank under torchrun (0 outside it), readable before the group is joined."""
    return int(os.environ.get("RANK", "0")) if dist.is_torchelastic_launched() else 0


def local_rank() -> int:
    """This process's rank on its machine under torchrun (0 outside it)."""
    return int(os.environ.get("LOCAL_RANK", "0")) if dist.is_torchelastic_launched() else 0


@contextlib.contextmanager
def process_group(device: str | torch.device | None) -> Iterator[tuple[int, int, torch.device]]:
    """Join torchrun's process group for the block (NCCL on CUDA, gloo on CPU) and leave it after.

    Yields ``(rank, world_size, device)``: ``device`` defaults to CUDA when available, else the CPU,
    and under torchrun a CUDA device is the one of this process's ``LOCAL_RANK``.
    """
    device = default_device(device)
    if not dist.is_torchelastic_launched():
        yield 0, 1, device
        return
    if device.type == "cuda":
        device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield dist.get_rank(), dist.get_world_size(), device
    finally:
        dist.destroy_process_group()


def shard(num_samples: int, rank: int, world_size: int) -> tuple[int, int]:
    """``(sample_offset, count)`` of this rank's contiguous share of ``num_samples`` samples.

    The shares differ by at most one sample, so every rank has some when
    ``num_samples >= world_size``.
    """
    base, extra = divmod(num_samples, world_size)
    return rank * base + min(rank, extra), base + (rank < extra)


def gather_shards(part: torch.Tensor, num_samples: int, world_size: int) -> torch.Tensor:
    """Every rank's ``part`` (its :func:`shard`, ``(count, ...)``) concatenated in rank order, on every rank.

    Returns ``(num_samples, ...)``. Parts are padded to one size for ``all_gather``, which NCCL
    and gloo both provide.
    """
    if world_size == 1:
        return part
    padded = part.new_zeros((-(-num_samples // world_size), *part.shape[1:]))
    padded[:len(part)] = part
    parts = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(parts, padded)
    counts = [shard(num_samples, r, world_size)[1] for r in range(world_size)]
    return torch.cat([p[:n] for p, n in zip(parts, counts, strict=True)])


def barrier(world_size: int) -> None:
    """Wait until every rank gets here."""
    if world_size > 1:
        dist.barrier()


def mean_over_ranks(values: torch.Tensor, world_size: int) -> list[float]:
    """The means of the 1-D ``values`` over all ranks, read to the host at once (one sync)."""
    if world_size > 1:
        values = values.clone()
        dist.all_reduce(values)
        values = values / world_size
    return values.tolist()


def max_over_ranks(value: torch.Tensor, world_size: int) -> torch.Tensor:
    """The elementwise largest ``value`` of all ranks (e.g. the slowest rank's wall time)."""
    if world_size > 1:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return value
