"""The ``scoreops`` command line: ``train``, ``sample``, ``import-tutorial``, ``figures``, ``compare``,
``bench`` and ``demo``. This module owns the argument parsing and the dispatch: every option,
its checks and default, the thread count, and the one-line errors; each command's body is
``run`` in its module of :mod:`scoreops.commands`.

Every subcommand writes into one output folder (``--out``), shows progress bars for long work
and prints the folder when it is done. Expected failures (a missing checkpoint or data set, an
output folder that cannot be written, a bad option) end with one line on stderr,
``scoreops: error: <message>``, and exit code 2; ``scoreops --debug ...`` shows the traceback.
``train`` and ``sample`` also run under ``torchrun``, split between its processes. The commands
that compute (all but ``import-tutorial`` and ``bench``, whose benchmarks have their own
``--threads``) print their torch CPU thread count at start and take ``--threads``.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from . import __version__, commands
from .ops import BACKENDS
from .training import distributed

if TYPE_CHECKING:
    from .training.train import TrainConfig

# Training steps of `scoreops demo` (batch 64): a few minutes on a 2-core CPU.
DEMO_TRAIN_STEPS = 4000
# The commands that split their work between torchrun's processes.
DISTRIBUTED_COMMANDS = ("train", "sample")
# A container's CPU quota under cgroup v2: "<quota> <period>" in microseconds, or "max <period>".
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
# Errors a user can cause; anything else is a bug and keeps its traceback.
EXPECTED_ERRORS = (OSError, ValueError, RuntimeError, ArithmeticError)


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line, ``<prog>: error: <message>``, with exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(kind: type, low, what: str, example: str, *, strict: bool = False):
    """An argparse type: one finite ``kind`` value (int or float) >= ``low`` (> ``low`` when
    ``strict``). Its error names ``what`` is expected and gives ``example``, a value that fits."""
    def parse(text: str):
        try:
            value = kind(text)
            fits = (kind is int or math.isfinite(value)) and (value > low if strict else value >= low)
        except ValueError:
            fits = False
        if not fits:
            raise argparse.ArgumentTypeError(f"expected {what} such as {example}, got {text!r}")
        return value
    return parse


def _comma_list(item, what: str, example: str):
    """An argparse type: a comma-separated list of ``item`` values (``what``, e.g. ``example``)."""
    def parse(text: str) -> list:
        try:
            return [item(v) for v in text.split(",")]
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(f"expected {what} such as {example}, got {text!r}") from None
    return parse


def _device(text: str) -> str:
    """An argparse type: a torch device of this machine that holds data (cpu, cuda, cuda:1)."""
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"expected a torch device such as cpu or cuda, got {text!r}") from None
    if device.type == "meta":
        raise argparse.ArgumentTypeError(f"expected a device that holds data, such as cpu or cuda, got {text!r} "
                                         "(meta tensors have shapes only)")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise argparse.ArgumentTypeError(f"expected a device of this machine such as cpu, got {text!r}: "
                                             "it has no CUDA device")
        if device.index is not None and device.index >= count:
            raise argparse.ArgumentTypeError(f"expected a device of this machine such as cuda:0, got {text!r}: "
                                             f"it has {count} CUDA device{'s' if count > 1 else ''}")
    return text


def _sampler_list(text: str) -> list[str]:
    from .evaluation.compare import ALL_SAMPLERS

    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [n for n in names if n not in ALL_SAMPLERS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown sampler(s) {unknown or text!r}; "
                                         f"choose from {','.join(ALL_SAMPLERS)}")
    return names


# One type per kind of number, so that each error's example is a value of that option.
_step_count = _number(int, 2, "a step count of at least 2", "500")
_step_counts = _comma_list(_step_count, "comma-separated step counts of at least 2", "100,500")
_few_step_count = _number(int, 1, "a step count of at least 1", "10")
_few_step_counts = _comma_list(_few_step_count, "comma-separated step counts of at least 1", "10,20")
_sample_count = _number(int, 1, "a positive number of samples", "64")
_train_steps = _number(int, 1, "a positive number of training steps", "4000")
_epochs = _number(int, 1, "a positive number of epochs", "20")
_threads = _number(int, 1, "a positive thread count", "1")
_tolerance = _number(float, 0, "a positive tolerance", "1e-5", strict=True)
_tolerances = _comma_list(_tolerance, "comma-separated positive tolerances", "1e-3,1e-5")
_snr = _number(float, 0, "a positive signal-to-noise ratio", "0.16", strict=True)
_seed = _number(int, 0, "a seed >= 0", "0")
_channels = _comma_list(_number(int, 1, "a channel count", "32"), "comma-separated positive channel counts",
                        "32,64,128")


# --------------------------------------------------------------------------- threads
def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask (taskset, cpusets), capped by a
    container's CPU quota (cgroup v2 ``cpu.max``), which torch's default thread count ignores."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    try:
        quota, period = CGROUP_CPU_MAX.read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, int(quota) // int(period))
    except (OSError, ValueError):  # no cgroup v2 quota to read
        pass
    return max(1, cpus)


def cpu_threads(requested: int | None) -> tuple[int, str]:
    """(torch intra-op threads, why) for a command: ``requested`` (``--threads``) when given, else
    ``OMP_NUM_THREADS`` when set (torchrun sets it to 1 for several processes), else the usable
    CPUs shared among this machine's processes under torchrun, so that none is oversubscribed."""
    if requested is not None:
        return requested, "--threads"
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env:
        first = env.split(",")[0]  # OpenMP also takes a list, one count per nesting level
        if not (first.isdigit() and int(first) >= 1):
            raise ValueError(f"OMP_NUM_THREADS={env!r} is not a positive thread count; set it to one such as 1, "
                             f"or pass --threads")
        return int(first), "OMP_NUM_THREADS"
    cpus = usable_cpus()
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if distributed.launched() else 1
    if local > 1:
        return max(1, cpus // local), f"{cpus} CPUs / {local} processes"
    return cpus, f"the {cpus} CPUs this process may use"


def _busy_hint(threads: int) -> str:
    """How to change the default thread count, and why it may be worth it: when other jobs keep
    the machine's CPUs busy, threads wait for each other at every op and one thread is faster."""
    cpus = os.cpu_count() or 1  # the load average is the whole machine's, as is this count
    try:
        load = os.getloadavg()[0]
    except OSError:  # no load average on this system
        load = 0.0
    if threads > 1 and load >= cpus:
        return f"; this machine is busy, load {load:.1f} on {cpus} CPUs: --threads 1 is likely faster"
    return "; --threads to change"


@contextlib.contextmanager
def _thread_count(requested: int | None, report: bool):
    """Run the block with :func:`cpu_threads`'s count (printed when ``report``), then restore the
    previous one, so that :func:`main` called from Python leaves torch as it found it."""
    threads, why = cpu_threads(requested)
    before = torch.get_num_threads()
    if report:
        if requested is not None:
            advice = ""
        elif why == "OMP_NUM_THREADS":
            advice = "; --threads to change"
        else:  # a count chosen here, not by the user, comes with advice on the machine's load
            advice = _busy_hint(threads)
        print(f"threads: {threads} ({why}{advice})", flush=True)
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------- options
def _add_threads_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=_threads, default=None,
                   help="torch CPU threads per process (default: $OMP_NUM_THREADS when set, else the usable CPUs, "
                        "divided among torchrun's processes on this machine); 1 on a machine shared with other jobs")


def add_train_options(p: argparse.ArgumentParser) -> None:
    """The options of ``scoreops train`` (and ``python -m scoreops.train``), defaults from TrainConfig."""
    from .training.data import DATASETS
    from .training.models import ACTIVATIONS, PRESETS
    from .training.train import TrainConfig

    d = TrainConfig()
    data = p.add_argument_group("data")
    data.add_argument("--dataset", choices=DATASETS, default=d.dataset, help="training images (default: %(default)s)")
    data.add_argument("--data-dir", default=d.data_dir,
                      help="torchvision data root (default: ./data), or the image folder for --dataset folder")
    data.add_argument("--download", action="store_true", help="let torchvision download a missing data set")
    data.add_argument("--image-size", type=int, default=d.image_size,
                      help="side of the square training images (default: 16 for digits, 28 for the MNISTs, 32 else)")
    model = p.add_argument_group("model (defaults: the preset's)")
    model.add_argument("--preset", choices=tuple(PRESETS), default=d.preset,
                       help="ScoreNet preset (default: digits for digits, tutorial for the MNISTs, paper else)")
    model.add_argument("--channels", type=_channels, default=d.channels, help="channels per level, e.g. 32,64,128")
    model.add_argument("--embed-dim", type=int, default=d.embed_dim, help="time-embedding size")
    model.add_argument("--kernel-size", type=int, default=d.kernel_size, help="convolution kernel size")
    model.add_argument("--padding", type=int, default=d.padding, help="convolution padding (0 tutorial, 1 paper)")
    model.add_argument("--activation", choices=ACTIVATIONS, default=d.activation, help="activation function")
    model.add_argument("--sigma", type=float, default=d.sigma,
                       help="VE SDE sigma, g(t) = sigma**t (default: %(default)s)")
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--steps", type=int, default=d.steps, help="optimiser steps in total (default: %(default)s)")
    opt.add_argument("--batch-size", type=int, default=d.batch_size,
                     help="images per step and per process (default: %(default)s)")
    opt.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate (default: %(default)s)")
    opt.add_argument("--ema-decay", type=float, default=d.ema_decay, help="EMA decay (default: %(default)s)")
    opt.add_argument("--grad-clip", type=float, default=d.grad_clip,
                     help="clip the gradient norm to this, 0 = off (default: %(default)s)")
    opt.add_argument("--loss-eps", type=float, default=d.loss_eps,
                     help="smallest training time t, t ~ U(eps, 1) (default: %(default)s)")
    opt.add_argument("--bf16", action="store_true", help="run the model under bfloat16 autocast")
    opt.add_argument("--seed", type=int, default=d.seed,
                     help="seed of the initial weights, data order and noise (default: %(default)s)")
    run = p.add_argument_group("run")
    run.add_argument("--out", default=d.out,
                     help="run folder for checkpoints and the loss curve (default: %(default)s)")
    run.add_argument("--save-every", type=int, default=d.save_every,
                     help="write a checkpoint every this many steps, and at the end (default: %(default)s)")
    run.add_argument("--resume", action="store_true",
                     help="continue from the newest checkpoint in --out (start afresh if there is none)")
    run.add_argument("--device", type=_device, default=d.device,
                     help="torch device (default: cuda when available, else cpu)")
    _add_threads_option(run)
    run.add_argument("--save-rank-weights", action="store_true",
                     help="debugging: every process also writes its final weights to rank<R>.safetensors in --out, "
                          "to check that DDP replicas agree")


def _train(args: argparse.Namespace) -> Path:
    return commands.train.run(train_config(args))


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The :class:`~scoreops.train.TrainConfig` of parsed ``scoreops train`` options."""
    from .training.train import TrainConfig

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in names})


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True,
                   help="a run folder written by `scoreops train` (its newest checkpoint) or a checkpoint folder")
    p.add_argument("--raw-weights", action="store_true", help="use the trained weights instead of their EMA")
    p.add_argument("--device", type=_device, default=None,
                   help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="op backend of the samplers' fused steps (default: %(default)s, the fastest built)")
    p.add_argument("--seed", type=_seed, default=0, help="noise-stream seed; one seed gives every sampler "
                                                       "the same x(1) (default: %(default)s)")


def _add_sampler_options(p: argparse.ArgumentParser, few_step: bool = False) -> None:
    from .evaluation.compare import DEFAULT_FEW_STEPS

    if few_step:
        p.add_argument("--steps", type=_step_count, default=None,
                       help="steps of the SDE samplers (EM, Milstein, PC; default 500) or sigma intervals of the "
                            f"few-step samplers (default {DEFAULT_FEW_STEPS})")
    else:
        p.add_argument("--steps", type=_step_count, default=500,
                       help="steps of the SDE samplers (EM, Milstein, PC) (default: %(default)s)")
        p.add_argument("--few-steps", type=_few_step_count, default=DEFAULT_FEW_STEPS,
                       help="sigma intervals of the few-step samplers (default: %(default)s)")
    p.add_argument("--tol", type=_tolerance, default=1e-5,
                   help="absolute and relative tolerance of the adaptive ODE sampler (default: %(default)s)")


def _add_compile_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--compile", action="store_true",
                   help="compile the score model with torch.compile (default mode): on a 2-core CPU its forward "
                        "pass is 1.3-1.9x faster at batch 512 after a cold compile of 20-45 s, which pays for long "
                        "runs (compare, demo), not for one short sample")


def _add_figure_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--milstein-steps", type=_step_counts, default=[500, 2000],
                   help="comma list of step counts for the Milstein panels of figure 2 (default: 500,2000)")


# --------------------------------------------------------------------------- the parser
def build_parser() -> argparse.ArgumentParser:
    """The ``scoreops`` argument parser, with one subparser per command."""
    from .evaluation.compare import ALL_SAMPLERS, DEFAULT_SAMPLER

    parser = _Parser(prog="scoreops", description="Score-based diffusion with fused samplers: train a ScoreNet, "
                                                  "sample it, draw the paper's figures, compare the samplers.",
                     epilog="Run `scoreops <command> --help` for a command's options.")
    parser.add_argument("--version", action="version", version=f"scoreops {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="<command>")

    p = subparsers.add_parser("train", help="train a ScoreNet by denoising score matching",
                            description="Train a ScoreNet; writes checkpoints/, loss.csv and loss.png into --out.")
    add_train_options(p)
    p.set_defaults(handler=_train)

    p = subparsers.add_parser("sample", help="draw samples with one sampler: an 8x8 grid PNG and the tensors",
                            description="Draw samples; writes samples-<sampler>-<steps or tol>.png (a grid of 8 "
                                        "columns, 8x8 for 64 samples) and .safetensors (the raw tensor) into --out.")
    _add_model_options(p)
    p.add_argument("--sampler", choices=ALL_SAMPLERS, default=DEFAULT_SAMPLER,
                   help="sampler: the paper's four, or a few-step sampler on the Karras grid with the final "
                        "denoise (default: %(default)s, the best FD per second measured on the digits model)")
    _add_sampler_options(p, few_step=True)
    _add_compile_option(p)
    p.add_argument("--num-samples", type=_sample_count, default=64, help="samples to draw (default: %(default)s)")
    p.add_argument("--snr", type=_snr, default=0.16,
                   help="PC corrector signal-to-noise ratio (default: %(default)s)")
    p.add_argument("--correction", choices=("time", "ito"), default="time",
                   help="Milstein correction: time (the paper's dg/dt) or ito (dg/dx = 0, equals EM) "
                        "(default: %(default)s)")
    _add_threads_option(p)
    p.add_argument("--out", default="runs/sample", help="output folder (default: %(default)s)")
    p.set_defaults(handler=commands.sample.run)

    p = subparsers.add_parser("import-tutorial", help="make a run folder of the tutorial's ckpt.pth, for the other "
                                                    "commands",
                            description="Import the tutorial's trained MNIST ScoreNet (the state_dict it saves as "
                                        "ckpt.pth) as a checkpoint that sample, figures and compare read.")
    p.add_argument("pth", help="the tutorial's checkpoint file, e.g. ckpt.pth")
    p.add_argument("--sigma", type=float, default=25.0,
                   help="the sigma the model was trained with (default: %(default)s, the tutorial's)")
    p.add_argument("--data-dir", default=None, help="where MNIST lives, for figures and compare (default: ./data)")
    p.add_argument("--out", default="runs/tutorial", help="the new run folder (default: %(default)s)")
    p.set_defaults(handler=commands.import_tutorial.run)

    p = subparsers.add_parser("figures", help="draw the paper's figures 1-5 as PNGs",
                            description="Draw the paper's figures: forward diffusion, 64 Milstein samples, ODE "
                                        "interpolation, the four samplers and the few-step samplers side by side, "
                                        "and the loss curves.")
    _add_model_options(p)
    _add_sampler_options(p)
    _add_figure_options(p)
    _add_compile_option(p)
    p.add_argument("--loss-runs", nargs="*", default=None, metavar="RUN",
                   help="run folders whose loss.csv to plot side by side (default: the checkpoint's own run)")
    p.add_argument("--data-dir", default=None, help="where the training data set lives (default: as trained)")
    _add_threads_option(p)
    p.add_argument("--out", default="runs/figures", help="output folder (default: %(default)s)")
    p.set_defaults(handler=commands.figures.run)

    p = subparsers.add_parser("compare", help="compare the samplers: time, nfe, diversity, Frechet distance, colour",
                            description="Compare the samplers at several settings; writes compare.md, compare.json "
                                        "and grids/<run>.png into --out.")
    _add_model_options(p)
    _add_compare_options(p, "--steps")
    _add_compile_option(p)
    p.add_argument("--samplers", type=_sampler_list, default=list(ALL_SAMPLERS),
                   help=f"comma list of samplers, from {','.join(ALL_SAMPLERS)} (default: all)")
    p.add_argument("--num-samples", type=_sample_count, default=64, help="samples per run (default: %(default)s)")
    p.add_argument("--data-dir", default=None, help="where the training data set lives (default: as trained)")
    _add_threads_option(p)
    p.add_argument("--out", default="runs/compare", help="output folder (default: %(default)s)")
    p.set_defaults(handler=commands.compare.run)

    p = subparsers.add_parser("bench", help="run the step-kernel and sampler benchmarks",
                            description="Run the benchmarks; options not listed here go to the named benchmark "
                                        "(see python -m scoreops.benchmarks.bench_steps --help).")
    p.add_argument("which", nargs="?", choices=("all", "steps", "samplers"), default="all",
                   help="which benchmark (default: %(default)s)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="tiny sizes and short timings: a smoke run, not a result")
    p.add_argument("--out", default=None, help="output folder (default: benchmarks/results; runs/bench-quick "
                                               "with --quick, so that a smoke run never replaces the tables)")
    p.set_defaults(handler=commands.bench.run)

    p = subparsers.add_parser("demo", help="train on digits, sample, draw the figures and compare, in one go",
                            description="The whole pipeline on the embedded digits data set, sized for a few "
                                        "minutes on a 2-core CPU: train, sample with the paper's four samplers and "
                                        "the few-step samplers, draw the figures, compare the samplers. Rerunning "
                                        "reuses the finished training.")
    p.add_argument("--train-steps", type=_train_steps, default=DEMO_TRAIN_STEPS,
                   help="training steps of batch 64 (default: %(default)s)")
    _add_sampler_options(p)
    _add_figure_options(p)
    p.add_argument("--seed", type=_seed, default=0, help="seed of the training and the samplers (default: %(default)s)")
    p.add_argument("--device", type=_device, default=None,
                   help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="op backend of the samplers' fused steps (default: %(default)s)")
    _add_compare_options(p, "--compare-steps", "--compare-few-steps")
    _add_compile_option(p)
    p.add_argument("--copy-figures", default=None, metavar="DIR",
                   help="also copy the figures and the comparison table here, e.g. docs/figures (default: no copy)")
    _add_threads_option(p)
    p.add_argument("--out", default="runs/demo", help="output folder (default: %(default)s)")
    p.set_defaults(handler=commands.demo.run)
    return parser


def _add_compare_options(p: argparse.ArgumentParser, steps_flag: str, few_steps_flag: str = "--few-steps") -> None:
    p.add_argument(steps_flag, type=_step_counts, default=[100, 500],
                   help="comma list of SDE sampler step counts to compare (default: 100,500)")
    p.add_argument(few_steps_flag, type=_few_step_counts, default=[10, 20],
                   help="comma list of few-step sampler step counts (sigma intervals) to compare (default: 10,20)")
    p.add_argument("--ode-tols", type=_tolerances, default=[1e-3, 1e-5],
                   help="comma list of ODE tolerances to compare (default: 1e-3,1e-5)")
    p.add_argument("--classifier-cache", default=None, metavar="DIR",
                   help="folder of the cached feature classifiers (default: $XDG_CACHE_HOME/scoreops, "
                        "else ~/.cache/scoreops)")
    p.add_argument("--classifier-epochs", type=_epochs, default=20,
                   help="epochs of the feature classifier when it is not cached yet (default: %(default)s)")


def main(argv: list[str] | None = None) -> int:
    """Run the ``scoreops`` command with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra and args.command != "bench":
            parser.exit(2, f"scoreops {args.command}: error: unrecognized arguments: {' '.join(extra)} "
                           f"(see scoreops {args.command} --help)\n")
    except SystemExit as e:  # --help, --version, or a usage error already printed
        return e.code if isinstance(e.code, int) else 2
    args.extra = extra
    # Under torchrun every process runs this; errors name their rank, and rank 0 reports.
    where = f" (rank {distributed.rank()})" if distributed.launched() else ""
    try:
        if distributed.launched() and args.command not in DISTRIBUTED_COMMANDS:
            raise ValueError(f"scoreops {args.command} runs in one process; start it without torchrun "
                             f"(under torchrun: {', '.join(DISTRIBUTED_COMMANDS)})")
        threads = (_thread_count(args.threads, report=distributed.rank() == 0) if hasattr(args, "threads")
                   else contextlib.nullcontext())
        with threads:
            out = args.handler(args)
    except KeyboardInterrupt:
        print(f"scoreops: interrupted{where}", file=sys.stderr)
        return 130
    except EXPECTED_ERRORS as e:
        if args.debug:
            raise
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"scoreops: error{where}: {message}", file=sys.stderr)
        return 2
    if distributed.rank() == 0:
        print(f"scoreops {args.command}: results in {out}")
    return 0
