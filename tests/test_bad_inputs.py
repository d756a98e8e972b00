"""Bad input, across the command line and the public functions: one table row per case.

A command-line row runs ``scoreops ...`` in this process (one row also as a process of its own,
to read its real stderr): it must exit with code 2, print exactly one error line on stderr and
no traceback, and leave no file in its output folder. A function row must raise its specific
exception type, with a message that names the bad argument (or file). The README's "Bad input"
lists are these rows' descriptions, and its counts are the number of rows.
"""
from __future__ import annotations

import errno
import functools
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import safetensors.torch
import torch
from tutorial_net import tutorial_state

import scoreops
from scoreops import ops
from scoreops.cli import main
from scoreops.evaluation.compare import draw_samples
from scoreops.sde import VESDE, marginal_prob_std
from scoreops.training import checkpoint as ckpt
from scoreops.training.ema import EMA
from scoreops.training.models import ScoreNet, model_options
from scoreops.training.train import TrainConfig
from scoreops.training.tutorial_import import import_tutorial

README = Path(__file__).resolve().parents[1] / "README.md"
PACKAGE_PARENT = str(Path(scoreops.__file__).resolve().parents[1])
# A 2-level ScoreNet on 8x8 images: its checkpoint takes milliseconds to write and to sample.
TINY = dict(in_channels=1, channels=[8, 16], embed_dim=16, kernel_size=3, padding=1, activation="swish")
SDE = VESDE(25.0)
SAMPLE = ["sample", "--sampler", "em", "--steps", "3", "--num-samples", "2", "--device", "cpu"]


class Inputs:
    """The bad files of one test, each made on first use in its own folder."""

    def __init__(self, folder: Path, seed: int):
        self.folder, self.seed = folder, seed

    def run(self, name: str, *, nan: bool = False) -> Path:
        """A run folder holding one checkpoint of a tiny ScoreNet (its weights NaN when ``nan``)."""
        model = ScoreNet(functools.partial(marginal_prob_std, sigma=25.0), **TINY)
        if nan:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))
        config = {**TINY, "sigma": 25.0, "image_size": 8, "dataset": "digits"}
        ckpt.save_checkpoint(self.folder / name, step=1, model=model, ema=EMA(model),
                             optimizer=torch.optim.Adam(model.parameters()), config=config)
        return self.folder / name

    def step_dir(self, run: Path) -> Path:
        return ckpt.latest_checkpoint(run)

    @functools.cached_property
    def good(self) -> Path:
        return self.run("good")

    @functools.cached_property
    def nan_weights(self) -> Path:
        return self.run("nan", nan=True)

    @functools.cached_property
    def truncated(self) -> Path:
        """A run whose EMA weights lost their second half (a copy cut short)."""
        file = self.step_dir(self.run("truncated")) / ckpt.EMA_FILE
        data = file.read_bytes()
        file.write_bytes(data[:len(data) // 2])
        return self.folder / "truncated"

    @functools.cached_property
    def wrong_hash(self) -> Path:
        """A run whose weights file has one bit flipped: still a valid file, but not the one hashed."""
        file = self.step_dir(self.run("wrong_hash")) / ckpt.MODEL_FILE
        data = bytearray(file.read_bytes())
        data[-1] ^= 1  # a weight's last byte
        file.write_bytes(bytes(data))
        safetensors.torch.load_file(file)  # the file alone reads fine: only the hash tells
        return self.folder / "wrong_hash"

    @functools.cached_property
    def truncated_state(self) -> Path:
        file = self.step_dir(self.run("truncated_state")) / ckpt.STATE_FILE
        file.write_text(file.read_text()[:20])
        return self.folder / "truncated_state"

    @functools.cached_property
    def loss_csv(self) -> Path:
        (self.folder / "loss.csv").write_text("step,loss\n1,0.5\n")
        return self.folder / "loss.csv"

    def tutorial(self, name: str, change: Callable[[dict], None] = lambda state: None) -> Path:
        """The tutorial's ``ckpt.pth`` of random weights, after ``change(state)``."""
        state = tutorial_state(self.seed & (2**63 - 1))
        change(state)
        torch.save(state, self.folder / name)
        return self.folder / name

    def tutorial_truncated(self) -> Path:
        path = self.tutorial("truncated.pth")
        path.write_bytes(path.read_bytes()[:1000])
        return path


def nan_score(x, t):
    return torch.full_like(x, float("nan"))


def minus_x(x, t):
    return -x


def set_weight(name: str, value: torch.Tensor):
    return lambda state: state.__setitem__(name, value)


@dataclass(frozen=True)
class Command:
    """``scoreops <argv(inputs)> --out <folder>``: exit code 2 and one error line holding ``error``."""

    what: str  # the README's line for this case
    argv: Callable[[Inputs], list]
    error: str  # a regular expression the error line must match
    patch: Callable[[pytest.MonkeyPatch], None] | None = None
    own_process: bool = False


@dataclass(frozen=True)
class Call:
    """``call(inputs)`` raises ``exception`` with a message matching ``match``."""

    what: str
    call: Callable[[Inputs], object]
    exception: type[Exception]
    match: str


def _disk_full(monkeypatch):
    def save_file(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(safetensors.torch, "save_file", save_file)


COMMANDS = [
    Command("wrong shape: `import-tutorial` of a `ckpt.pth` whose `conv1.weight` has another shape",
            lambda i: ["import-tutorial", i.tutorial("shape.pth", set_weight("conv1.weight", torch.ones(32, 1, 5, 5)))],
            r"conv1\.weight in .*shape\.pth has shape \(32, 1, 5, 5\)"),
    Command("wrong dtype: `import-tutorial` of a `ckpt.pth` holding integer weights",
            lambda i: ["import-tutorial", i.tutorial("dtype.pth", set_weight("conv1.weight",
                                                                              torch.ones(32, 1, 3, 3, dtype=torch.int64)))],
            r"'conv1\.weight' holds a torch\.int64 .*not a float tensor"),
    Command("wrong device: `sample --device meta` (a device without data)",
            lambda i: [*SAMPLE, "--checkpoint", i.good, "--device", "meta"],
            r"argument --device: expected a device that holds data.* got 'meta'"),
    Command("wrong device: `sample --device gpu` (not a torch device)",
            lambda i: [*SAMPLE, "--checkpoint", i.good, "--device", "gpu"],
            r"argument --device: expected a torch device such as cpu or cuda, got 'gpu'"),
    Command("wrong device: `train --device cuda:7` (a device this machine does not have)",
            lambda i: ["train", "--steps", "1", "--device", "cuda:7"],
            r"argument --device: expected a device of this machine .* got 'cuda:7'"),
    Command("NaN: `sample` from a checkpoint whose weights are NaN",
            lambda i: [*SAMPLE, "--checkpoint", i.nan_weights], r"weights in .* hold NaN or Inf"),
    Command("NaN: `import-tutorial` of a `ckpt.pth` with a NaN weight",
            lambda i: ["import-tutorial", i.tutorial("nan.pth", set_weight("dense1.dense.bias",
                                                                            torch.full((32,), float("nan"))))],
            r"'dense1\.dense\.bias' holds NaN or Inf"),
    Command("empty batch: `sample --num-samples 0`",
            lambda i: [*SAMPLE, "--checkpoint", i.good, "--num-samples", "0"],
            r"argument --num-samples: expected a positive number of samples"),
    Command("empty batch: `train --batch-size 0`",
            lambda i: ["train", "--steps", "1", "--batch-size", "0", "--device", "cpu"],
            r"batch_size must be an int >= 1, got 0"),
    Command("truncated checkpoint: `sample` from a run whose `ema.safetensors` was cut short",
            lambda i: [*SAMPLE, "--checkpoint", i.truncated], r"ema\.safetensors is corrupted or truncated"),
    Command("truncated checkpoint: `sample` from a run whose `state.json` was cut short",
            lambda i: [*SAMPLE, "--checkpoint", i.truncated_state], r"cannot read .*state\.json"),
    Command("truncated checkpoint: `import-tutorial` of a `ckpt.pth` cut short",
            lambda i: ["import-tutorial", i.tutorial_truncated()], r"cannot read .*truncated\.pth as a saved state_dict"),
    Command("wrong hash: `sample` from a run with one bit of `model.safetensors` flipped",
            lambda i: [*SAMPLE, "--checkpoint", i.wrong_hash],
            r"model\.safetensors is corrupted or truncated \(SHA-256 does not match state\.json\)", own_process=True),
    Command("not a checkpoint: `sample --checkpoint loss.csv`",
            lambda i: [*SAMPLE, "--checkpoint", i.loss_csv], r"loss\.csv is not a scoreops checkpoint"),
    Command("unknown preset: `train --preset large`",
            lambda i: ["train", "--preset", "large"], r"argument --preset: invalid choice: 'large'"),
    Command("unknown sampler: `sample --sampler nosuch`",
            lambda i: [*SAMPLE, "--checkpoint", i.good, "--sampler", "nosuch"],
            r"argument --sampler: invalid choice: 'nosuch'"),
    Command("unknown sampler: `compare --samplers em,nosuch`",
            lambda i: ["compare", "--checkpoint", i.good, "--samplers", "em,nosuch"],
            r"argument --samplers: unknown sampler\(s\) \['nosuch'\]"),
    Command("disk full while `sample` writes its files: neither the PNG nor the tensors stay",
            lambda i: [*SAMPLE, "--checkpoint", i.good], r"No space left on device", patch=_disk_full),
]

CALLS = [
    Call("wrong shape: `ops.sde_step` with a score of another shape than x",
         lambda i: ops.sde_step(torch.randn(2, 3), torch.randn(2, 4), 0.1, 0.1, seed=0, step=0),
         ValueError, r"score has shape \(2, 4\), expected \(2, 3\)"),
    Call("wrong shape: `em_sample` with a 0-d `x_T`",
         lambda i: scoreops.em_sample(minus_x, SDE, num_steps=3, x_T=torch.randn(())),
         ValueError, r"x_T must have a non-empty leading batch dimension"),
    Call("wrong shape: `milstein_sample` with a score model that returns another shape",
         lambda i: scoreops.milstein_sample(lambda x, t: x[:1], SDE, batch_size=2, num_steps=3, shape=(3,),
                                            device="cpu"),
         ValueError, r"score_model returned shape \(1, 3\) for x of shape \(2, 3\)"),
    Call("wrong dtype: `em_sample` with a float64 `x_T`",
         lambda i: scoreops.em_sample(minus_x, SDE, num_steps=3, x_T=torch.randn(2, 3, dtype=torch.float64)),
         TypeError, r"x_T must be float32, float16 or bfloat16, got torch\.float64"),
    Call("wrong dtype: `ops.sde_step` on int32 tensors",
         lambda i: ops.sde_step(torch.ones(2, 3, dtype=torch.int32), torch.ones(2, 3, dtype=torch.int32), 0.1, 0.1,
                                seed=0, step=0),
         TypeError, r"x must be float32, float16 or bfloat16, got torch\.int32"),
    Call("wrong dtype: `pc_sample` with a score model that returns another dtype",
         lambda i: scoreops.pc_sample(lambda x, t: -x.double(), SDE, batch_size=2, num_steps=3, shape=(3,),
                                      device="cpu"),
         TypeError, r"score_model returned torch\.float64 for x of dtype torch\.float32"),
    Call("wrong device: `em_sample(device=\"meta\")`",
         lambda i: scoreops.em_sample(minus_x, SDE, batch_size=2, num_steps=3, shape=(3,), device="meta"),
         ValueError, r"the meta device has no data to sample"),
    Call("wrong device: `em_sample(device=\"nope\")` (not a device)",
         lambda i: scoreops.em_sample(minus_x, SDE, batch_size=2, num_steps=3, shape=(3,), device="nope"),
         ValueError, r"device must be a torch device .* got 'nope'"),
    Call("wrong device: `em_sample(device=\"cuda:7\")` (not on this machine)",
         lambda i: scoreops.em_sample(minus_x, SDE, batch_size=2, num_steps=3, shape=(3,), device="cuda:7"),
         ValueError, r"device 'cuda:7' does not exist on this machine"),
    Call("wrong device: `ode_sample` with `z` on the meta device",
         lambda i: scoreops.ode_sample(minus_x, SDE, z=torch.empty(2, 3, device="meta")),
         ValueError, r"the meta device has no data to sample"),
    Call("wrong device: `ops.sde_step` with x on the CPU and the score on the meta device",
         lambda i: ops.sde_step(torch.randn(2, 3), torch.empty(2, 3, device="meta"), 0.1, 0.1, seed=0, step=0),
         ValueError, r"score is on meta, expected cpu"),
    Call("NaN: `em_sample` with NaN in `x_T`",
         lambda i: scoreops.em_sample(minus_x, SDE, num_steps=3,
                                      x_T=torch.randn(2, 3).index_fill_(1, torch.tensor([1]), float("nan"))),
         ValueError, r"x_T contains NaN or Inf"),
    Call("NaN: `em_sample` with a score model that returns NaN",
         lambda i: scoreops.em_sample(nan_score, SDE, batch_size=2, num_steps=3, shape=(3,), device="cpu"),
         RuntimeError, r"em_sample: the samples contain NaN or Inf; first at step 0 of 3"),
    Call("NaN: `milstein_sample` with a score model that returns NaN",
         lambda i: scoreops.milstein_sample(nan_score, SDE, batch_size=2, num_steps=3, shape=(3,), device="cpu"),
         RuntimeError, r"milstein_sample: the samples contain NaN or Inf; first at step 0 of 3"),
    Call("NaN: `pc_sample` with a score model that returns NaN",
         lambda i: scoreops.pc_sample(nan_score, SDE, batch_size=2, num_steps=3, shape=(3,), device="cpu"),
         RuntimeError, r"pc_sample: the samples contain NaN or Inf; first at step 0 of 3"),
    Call("NaN: `ode_sample` with a score model that returns NaN",
         lambda i: scoreops.ode_sample(nan_score, SDE, batch_size=2, shape=(3,), device="cpu"),
         RuntimeError, r"ode_sample: the score at t = 1 is NaN or Inf"),
    Call("NaN: `load_model` of a checkpoint whose weights are NaN",
         lambda i: scoreops.load_model(i.nan_weights), ckpt.CheckpointError, r"weights in .* hold NaN or Inf"),
    Call("empty batch: `em_sample(batch_size=0)`",
         lambda i: scoreops.em_sample(minus_x, SDE, batch_size=0, num_steps=3, shape=(3,), device="cpu"),
         ValueError, r"batch_size must be an int >= 1, got 0"),
    Call("empty batch: `ode_sample` with a `z` of 0 samples",
         lambda i: scoreops.ode_sample(minus_x, SDE, z=torch.empty(0, 3)),
         ValueError, r"z must have a non-empty leading batch dimension, got shape \(0, 3\)"),
    Call("non-increasing grid: `sdeint` with a repeated time",
         lambda i: scoreops.sdeint(minus_x, minus_x, torch.randn(2, 3), [0.0, 0.5, 0.5, 1.0]),
         ValueError, r"ts must be finite and strictly increasing"),
    Call("non-increasing grid: `sdeint` with a decreasing grid",
         lambda i: scoreops.sdeint(minus_x, minus_x, torch.randn(2, 3), [1.0, 0.5, 0.0]),
         ValueError, r"ts must be finite and strictly increasing"),
    Call("truncated checkpoint: `load_model` of a run whose `ema.safetensors` was cut short",
         lambda i: scoreops.load_model(i.truncated), ckpt.CheckpointError, r"ema\.safetensors is corrupted or truncated"),
    Call("truncated checkpoint: `import_tutorial` of a `ckpt.pth` cut short",
         lambda i: import_tutorial(i.tutorial_truncated(), i.folder / "imported"), ckpt.CheckpointError,
         r"cannot read .*truncated\.pth as a saved state_dict"),
    Call("wrong hash: `load_model` of a run with one bit of `model.safetensors` flipped",
         lambda i: scoreops.load_model(i.wrong_hash, ema=False), ckpt.CheckpointError,
         r"model\.safetensors is corrupted or truncated \(SHA-256 does not match state\.json\)"),
    Call("not a checkpoint: `load_model(\"loss.csv\")`",
         lambda i: scoreops.load_model(i.loss_csv), ckpt.CheckpointError, r"loss\.csv is not a scoreops checkpoint"),
    Call("unknown preset: `model_options(\"large\")`",
         lambda i: model_options("large"), ValueError, r"preset must be one of .*, got 'large'"),
    Call("unknown preset: `TrainConfig(preset=\"large\")`",
         lambda i: TrainConfig(preset="large").validate(), ValueError, r"preset must be one of .*, got 'large'"),
    Call("unknown sampler: `draw_samples(\"nosuch\", ...)`",
         lambda i: draw_samples("nosuch", minus_x, SDE, (3,), num_samples=2, steps=3),
         ValueError, r"sampler must be one of .*, got 'nosuch'"),
    Call("unknown sampler: `pc_sample(predictor=\"nosuch\")`",
         lambda i: scoreops.pc_sample(minus_x, SDE, batch_size=2, num_steps=3, shape=(3,), device="cpu",
                                      predictor="nosuch"),
         ValueError, r"predictor must be one of .*, got 'nosuch'"),
]


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """Commands take their thread count from OMP_NUM_THREADS: one, as the suite runs everything."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture
def inputs(tmp_path, seed) -> Inputs:
    (tmp_path / "inputs").mkdir()
    return Inputs(tmp_path / "inputs", seed)


def _one_error_line(code: int, err: str, pattern: str) -> None:
    """Exit code 2; stderr's last line is the only error line and matches ``pattern``; no traceback
    (progress bars may precede it)."""
    assert code == 2, (code, err)
    assert "Traceback" not in err, err
    lines = err.rstrip("\n").split("\n")
    errors = [line for line in lines if "error" in line]
    assert errors == [lines[-1]] and re.match(r"scoreops( \w[\w-]*)?: error: ", lines[-1]), err
    assert re.search(pattern, lines[-1]), err


@pytest.mark.parametrize("case", COMMANDS, ids=[c.what.partition(":")[0] + "-" + str(n) for n, c in
                                                 enumerate(COMMANDS)])
def test_a_bad_command_line_is_one_error_line_and_leaves_no_output(case, inputs, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    argv = [str(a) for a in case.argv(inputs)] + ["--out", str(out)]
    capsys.readouterr()
    if case.own_process:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [PACKAGE_PARENT,
                                                                          os.environ.get("PYTHONPATH")]))}
        proc = subprocess.run([sys.executable, "-m", "scoreops", *argv], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=120)
        code, err = proc.returncode, proc.stderr
    else:
        if case.patch is not None:
            case.patch(monkeypatch)
        code = main(argv)
        err = capsys.readouterr().err
    _one_error_line(code, err, case.error)
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*") if not p.is_dir()) if out.exists() else []
    assert left == [], left


@pytest.mark.parametrize("case", CALLS, ids=[c.what.partition(":")[0] + "-" + str(n) for n, c in enumerate(CALLS)])
def test_a_bad_argument_raises_a_specific_error_naming_it(case, inputs):
    with pytest.raises(Exception) as raised:  # the exact type is checked below
        case.call(inputs)
    assert type(raised.value) is case.exception, repr(raised.value)
    assert re.search(case.match, str(raised.value)), str(raised.value)
    assert "\n" not in str(raised.value)


def _readme_section(heading: str) -> str:
    text = README.read_text()
    start = text.index(f"\n{heading}\n")
    end = re.search(r"\n#+ ", text[start + 1:])
    return text[start: start + 1 + end.start()] if end else text[start:]


def _bullets_after(section: str, label: str) -> list[str]:
    """The ``- `` lines of the list that follows the line ``label`` (and blank lines) in ``section``."""
    lines = section[section.index(f"\n{label}\n") + len(label) + 2:].lstrip("\n").split("\n")
    bullets = []
    for line in lines:
        if not line.startswith("- "):
            break
        bullets.append(line[2:])
    return bullets


def test_the_readme_lists_every_case_and_counts_them():
    section = _readme_section("### Bad input")
    counts = re.search(r"runs (\d+) cases: (\d+) on the command line\b.* (\d+) on the public functions",
                       " ".join(section.split()))
    assert counts, section
    assert [int(n) for n in counts.groups()] == [len(COMMANDS) + len(CALLS), len(COMMANDS), len(CALLS)]
    assert _bullets_after(section, "On the command line:") == [c.what for c in COMMANDS]
    assert _bullets_after(section, "In the public functions:") == [c.what for c in CALLS]
