"""The training entry point under torchrun: two CPU processes with the gloo backend."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import scoreops
from scoreops.training import checkpoint as ckpt

# The workers import the same scoreops as this process (the source tree or the installed one).
PACKAGE_PARENT = str(Path(scoreops.__file__).resolve().parents[1])


@pytest.mark.parametrize("threads", [1, 2])
def test_two_processes_keep_identical_weights_and_the_loss_falls(tmp_path, threads):
    """The all-reduced gradient is the same on both ranks, so the weights stay bit-identical
    whatever each rank's thread count."""
    steps = 30
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "scoreops.train", "--dataset", "digits", "--image-size", "8", "--preset", "digits",
           "--channels", "8,16", "--embed-dim", "16", "--batch-size", "16", "--device", "cpu",
           "--steps", str(steps), "--save-every", "10", "--save-rank-weights", "--out", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join(filter(None, [PACKAGE_PARENT, os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]

    rank0, rank1 = (load_file(tmp_path / f"rank{r}.safetensors") for r in (0, 1))
    saved = ckpt.read_checkpoint(tmp_path)
    assert saved.step == steps and saved.config["world_size"] == 2
    assert rank0.keys() == rank1.keys() == saved.model.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
        assert torch.equal(rank0[key], saved.model[key]), key
    # Only rank 0 writes checkpoints and the log: one row per step.
    with open(tmp_path / "loss.csv", newline="") as f:
        losses = [float(r["loss"]) for r in csv.DictReader(f)]
    assert len(losses) == steps and np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])


@pytest.mark.parametrize("threads", [1, 2])
def test_two_processes_sample_what_one_process_samples(tmp_path, threads):
    """Each rank draws its shard of the stream (sample_offset); rank 0 gathers and writes them all.
    7 samples on 2 ranks: shards of 4 and 3.

    The noise and the fused steps are bit-exact whatever the shard (tests/test_samplers.py), but
    the conv net is not: oneDNN picks its convolution algorithm by batch size and thread count,
    and two algorithms sum a float32 dot product of K = 9 * 16 terms in other orders. That moves a
    score by about sqrt(K) * 2**-24 ~ 7e-7 of its size. Each of the 5 EM steps adds a * s to x,
    whose size is at most that of the final |x| here, and the steps' errors add: one and two
    processes agree to about 5 * 7e-7 = 3.5e-6 of max |x|. The tolerance, 1e-5 of max |x|, leaves
    a margin of 3 over that estimate (seen: 1.9e-5 for max |x| = 138, 1.4e-7 of it, in one process
    with 2 threads); a wrong shard or seed moves samples by O(max |x|).
    """
    env = {**os.environ, "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join(filter(None, [PACKAGE_PARENT, os.environ.get("PYTHONPATH")]))}
    cli = [sys.executable, "-m", "scoreops"]
    train = [*cli, "train", "--image-size", "8", "--channels", "8,16", "--embed-dim", "16", "--batch-size", "16",
             "--steps", "2", "--device", "cpu", "--out", str(tmp_path / "run")]
    assert subprocess.run(train, env=env, capture_output=True, timeout=120).returncode == 0
    sample = ["sample", "--checkpoint", str(tmp_path / "run"), "--sampler", "em", "--steps", "5",
              "--num-samples", "7", "--seed", "11", "--device", "cpu"]
    one = subprocess.run([*cli, *sample, "--out", str(tmp_path / "one")], env=env, capture_output=True, text=True,
                         timeout=120)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "scoreops", *sample, "--out", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=120)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("results in") == 1  # rank 0 alone reports
    got = load_file(tmp_path / "two" / "samples-em-5.safetensors")["samples"]
    want = load_file(tmp_path / "one" / "samples-em-5.safetensors")["samples"]
    assert got.shape == (7, 1, 8, 8)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5 * float(want.abs().max()))
