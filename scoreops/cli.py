"""The ``scoreops`` command line: ``train``, ``sample``, ``import-tutorial``, ``figures``, ``compare``,
``bench`` and ``demo``.

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
import importlib
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from . import __version__
from .core.checks import default_device
from .ops import BACKENDS
from .training import distributed

if TYPE_CHECKING:
    from .training.train import TrainConfig

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


def _sampler_list(text: str) -> list[str]:
    from .evaluation.compare import SAMPLERS

    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [n for n in names if n not in SAMPLERS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown sampler(s) {unknown or text!r}; choose from {','.join(SAMPLERS)}")
    return names


# One type per kind of number, so that each error's example is a value of that option.
_step_count = _number(int, 2, "a step count of at least 2", "500")
_step_counts = _comma_list(_step_count, "comma-separated step counts of at least 2", "100,500")
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


# --------------------------------------------------------------------------- shared helpers
def output_folder(path: str | Path) -> Path:
    """Create ``path`` if needed and check that a file can be written in it; raise OSError if not."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise OSError(f"cannot write to the output folder {out}: {e.strerror or e}") from e
    return out.resolve()


def _load(checkpoint: str, raw_weights: bool, device: torch.device):
    """(model, config, sde, sample shape) of a checkpoint or run folder."""
    from .sde import VESDE
    from .training.checkpoint import load_model

    model, config = load_model(checkpoint, ema=not raw_weights, device=device)
    shape = (config["in_channels"], config["image_size"], config["image_size"])
    return model, config, VESDE(float(config["sigma"])), shape


def _data_images(config: dict, data_dir: str | None) -> torch.Tensor:
    """The training images of the run described by a checkpoint's ``config``."""
    from .training.data import load_images

    return load_images(config["dataset"], data_dir or config.get("data_dir"), config["image_size"])


def _loss_runs(checkpoint: str) -> list[Path]:
    """The run folder of a checkpoint when it holds the run's ``loss.csv``, else nothing."""
    from .training.checkpoint import CHECKPOINTS_DIR, resolve_checkpoint

    folder = resolve_checkpoint(checkpoint)
    run = folder.parent.parent
    if folder.parent.name == CHECKPOINTS_DIR and (run / "loss.csv").is_file():
        return [run]
    print(f"no loss.csv beside checkpoint {folder}: skipping the loss figure (pass --loss-runs to draw it)")
    return []


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
    run.add_argument("--device", default=d.device, help="torch device (default: cuda when available, else cpu)")
    _add_threads_option(run)
    run.add_argument("--save-rank-weights", action="store_true",
                     help="debugging: every process also writes its final weights to rank<R>.safetensors in --out, "
                          "to check that DDP replicas agree")


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The :class:`~scoreops.train.TrainConfig` of parsed ``scoreops train`` options."""
    from .training.train import TrainConfig

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in names})


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True,
                   help="a run folder written by `scoreops train` (its newest checkpoint) or a checkpoint folder")
    p.add_argument("--raw-weights", action="store_true", help="use the trained weights instead of their EMA")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="op backend of the samplers' fused steps (default: %(default)s, the fastest built)")
    p.add_argument("--seed", type=_seed, default=0, help="noise-stream seed; one seed gives every sampler "
                                                       "the same x(1) (default: %(default)s)")


def _add_sampler_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=_step_count, default=500,
                   help="steps of the SDE samplers (EM, Milstein, PC) (default: %(default)s)")
    p.add_argument("--tol", type=_tolerance, default=1e-5,
                   help="absolute and relative tolerance of the adaptive ODE sampler (default: %(default)s)")


def _add_figure_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--milstein-steps", type=_step_counts, default=[500, 2000],
                   help="comma list of step counts for the Milstein panels of figure 2 (default: 500,2000)")


# --------------------------------------------------------------------------- subcommands
def write_samples(run, out: Path, info: dict) -> list[Path]:
    """Save a :class:`~scoreops.evaluation.compare.SampleRun` as ``samples-<label>.png`` (a grid of 8 columns)
    and ``samples-<label>.safetensors`` (key ``samples``: the raw (N, C, H, W) float32 tensor,
    not clamped; as metadata ``info``, the settings the run's sampler has, nfe and seconds)."""
    from safetensors.torch import save_file

    from .evaluation.figures import save_grid

    png = save_grid(run.samples, out / f"samples-{run.label}.png")
    metadata = {**{k: str(v) for k, v in info.items()}, **{k: str(v) for k, v in run.settings().items()},
                "nfe": str(run.nfe), "seconds": f"{run.seconds:.3f}"}
    tensors = out / f"samples-{run.label}.safetensors"
    save_file({"samples": run.samples.detach().float().cpu().contiguous()}, str(tensors), metadata=metadata)
    return [png, tensors]


def cmd_train(args: argparse.Namespace) -> Path:
    from .training import train

    config = train_config(args)
    config.validate()  # before the output folder is made
    out = output_folder(args.out)
    train.train(config)
    return out


def cmd_sample(args: argparse.Namespace) -> Path:
    """Draw the samples; under torchrun each process draws its shard of the stream's samples
    (``sample_offset``) and rank 0 gathers and writes them all."""
    from .evaluation.compare import draw_samples

    with distributed.process_group(args.device) as (rank, world_size, device):
        if args.num_samples < world_size:
            raise ValueError(f"--num-samples {args.num_samples} is fewer than the {world_size} processes")
        model, _, sde, shape = _load(args.checkpoint, args.raw_weights, device)
        out = output_folder(args.out)
        offset, count = distributed.shard(args.num_samples, rank, world_size)
        run = draw_samples(args.sampler, model, sde, shape, num_samples=count, sample_offset=offset, steps=args.steps,
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


def cmd_import_tutorial(args: argparse.Namespace) -> Path:
    from .training.checkpoint import import_tutorial

    folder = import_tutorial(args.pth, args.out, sigma=args.sigma, data_dir=args.data_dir)
    print(f"imported {args.pth} as {folder}")
    return Path(args.out).resolve()


def cmd_figures(args: argparse.Namespace) -> Path:
    from .evaluation.figures import make_figures

    device = default_device(args.device)
    model, config, sde, _ = _load(args.checkpoint, args.raw_weights, device)
    out = output_folder(args.out)
    loss_runs = _loss_runs(args.checkpoint) if args.loss_runs is None else args.loss_runs
    make_figures(model, sde, _data_images(config, args.data_dir), out, loss_runs=loss_runs, steps=args.steps,
                 milstein_steps=args.milstein_steps, tol=args.tol, seed=args.seed, device=device,
                 backend=args.backend)
    return out


def run_compare(model, sde, config: dict, out: Path, *, data_dir: str | None, samplers, steps, ode_tols,
                num_samples: int, seed: int, device: torch.device, backend: str, classifier_cache: str | None,
                classifier_epochs: int, checkpoint: str) -> Path:
    """Compare the samplers on ``model`` (see :mod:`scoreops.evaluation.compare`); writes ``compare.md``,
    ``compare.json`` and ``grids/<run>.png`` (each titled with its settings, nfe and seed) into
    ``out`` and returns the markdown's path."""
    from .evaluation import compare, metrics
    from .evaluation.figures import runs_figure, save_figure

    images, labels = compare.load_labelled(config["dataset"], data_dir or config.get("data_dir"),
                                           config["image_size"])
    classifier = metrics.load_or_train_classifier(config["dataset"], images, labels, cache_dir=classifier_cache,
                                                  device=device, epochs=classifier_epochs)
    rows, runs = compare.compare_samplers(model, sde, compare.Reference.build(classifier, images),
                                          sampler_names=samplers, steps=steps, ode_tols=ode_tols,
                                          num_samples=num_samples, seed=seed, device=device, backend=backend)
    grids = output_folder(out / "grids")
    for run in runs:
        title = f"{len(run.samples)} samples of {config['dataset']}, seed {seed}"
        save_figure(runs_figure([run], title, panel_inches=4.0), grids / f"{run.label}.png")
    info = {"checkpoint": checkpoint, "dataset": config["dataset"], "num_samples": num_samples, "seed": seed,
            "device": str(device), "classifier": str(classifier.path)}
    _, md_path = compare.write_report(rows, out, info)
    print(md_path.read_text())
    return md_path


def cmd_compare(args: argparse.Namespace) -> Path:
    device = default_device(args.device)
    model, config, sde, _ = _load(args.checkpoint, args.raw_weights, device)
    out = output_folder(args.out)
    run_compare(model, sde, config, out, data_dir=args.data_dir, samplers=args.samplers, steps=args.steps,
                ode_tols=args.ode_tols, num_samples=args.num_samples, seed=args.seed, device=device,
                backend=args.backend, classifier_cache=args.classifier_cache,
                classifier_epochs=args.classifier_epochs, checkpoint=str(args.checkpoint))
    return out


def _benchmark_module(name: str):
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


def cmd_bench(args: argparse.Namespace) -> Path:
    out = output_folder(args.out or _benchmark_module("common").default_out(args.quick))
    if args.extra and args.which == "all":
        raise ValueError(f"options {' '.join(args.extra)} belong to one benchmark: name it, "
                         "e.g. scoreops bench steps ...")
    names = ("bench_steps", "bench_samplers") if args.which == "all" else (f"bench_{args.which}",)
    common = ["--out", str(out), "--device", args.device] + (["--quick"] if args.quick else [])
    for name in names:
        _benchmark_module(name).main(common + args.extra)
    return out


def cmd_demo(args: argparse.Namespace) -> Path:
    from .evaluation import compare
    from .evaluation.figures import make_figures
    from .training import train

    out = output_folder(args.out)
    device = default_device(args.device)
    run_dir = out / "train"
    shown_run = str(Path(args.out) / "train")  # as the user named it, for the reports
    print(f"1/4 training a ScoreNet on the digits data set for {args.train_steps} steps", flush=True)
    # resume: a rerun reuses (or finishes) the training of an earlier one.
    train.train(train.TrainConfig(dataset="digits", steps=args.train_steps, save_every=args.train_steps,
                                  out=str(run_dir), resume=True, seed=args.seed, device=str(device)))
    model, config, sde, shape = _load(str(run_dir), False, device)

    print("2/4 sampling with all four samplers", flush=True)
    samples_dir = output_folder(out / "samples")
    for name in compare.SAMPLERS:
        run = compare.draw_samples(name, model, sde, shape, num_samples=64, steps=args.steps, tol=args.tol,
                                   seed=args.seed, device=device, backend=args.backend, progress=True)
        write_samples(run, samples_dir, {"checkpoint": shown_run, "seed": args.seed})

    print("3/4 drawing the paper's figures", flush=True)
    figures_dir = output_folder(out / "figures")
    figure_paths = make_figures(model, sde, _data_images(config, None), figures_dir, loss_runs=[run_dir],
                                steps=args.steps, milstein_steps=args.milstein_steps, tol=args.tol, seed=args.seed,
                                device=device, backend=args.backend)

    print("4/4 comparing the samplers", flush=True)
    md_path = run_compare(model, sde, config, output_folder(out / "compare"), data_dir=None, samplers=compare.SAMPLERS,
                          steps=args.compare_steps, ode_tols=args.ode_tols, num_samples=64, seed=args.seed,
                          device=device, backend=args.backend, classifier_cache=args.classifier_cache,
                          classifier_epochs=args.classifier_epochs, checkpoint=shown_run)

    if args.copy_figures:
        target = output_folder(args.copy_figures)
        for path in figure_paths + [md_path]:
            shutil.copy2(path, target / path.name)
        print(f"copied the figures and the comparison table to {target}")
    print(f"samples: {samples_dir}\nfigures: {figures_dir}\ncomparison: {md_path}")
    return out


# --------------------------------------------------------------------------- the parser
def build_parser() -> argparse.ArgumentParser:
    """The ``scoreops`` argument parser, with one subparser per command."""
    from .evaluation.compare import SAMPLERS

    parser = _Parser(prog="scoreops", description="Score-based diffusion with fused samplers: train a ScoreNet, "
                                                  "sample it, draw the paper's figures, compare the samplers.",
                     epilog="Run `scoreops <command> --help` for a command's options.")
    parser.add_argument("--version", action="version", version=f"scoreops {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True, metavar="<command>")

    p = commands.add_parser("train", help="train a ScoreNet by denoising score matching",
                            description="Train a ScoreNet; writes checkpoints/, loss.csv and loss.png into --out.")
    add_train_options(p)
    p.set_defaults(handler=cmd_train)

    p = commands.add_parser("sample", help="draw samples with one sampler: an 8x8 grid PNG and the tensors",
                            description="Draw samples; writes samples-<sampler>-<steps or tol>.png (a grid of 8 "
                                        "columns, 8x8 for 64 samples) and .safetensors (the raw tensor) into --out.")
    _add_model_options(p)
    p.add_argument("--sampler", choices=SAMPLERS, default="milstein", help="sampler (default: %(default)s)")
    _add_sampler_options(p)
    p.add_argument("--num-samples", type=_sample_count, default=64, help="samples to draw (default: %(default)s)")
    p.add_argument("--snr", type=_snr, default=0.16,
                   help="PC corrector signal-to-noise ratio (default: %(default)s)")
    p.add_argument("--correction", choices=("time", "ito"), default="time",
                   help="Milstein correction: time (the paper's dg/dt) or ito (dg/dx = 0, equals EM) "
                        "(default: %(default)s)")
    _add_threads_option(p)
    p.add_argument("--out", default="runs/sample", help="output folder (default: %(default)s)")
    p.set_defaults(handler=cmd_sample)

    p = commands.add_parser("import-tutorial", help="make a run folder of the tutorial's ckpt.pth, for the other "
                                                    "commands",
                            description="Import the tutorial's trained MNIST ScoreNet (the state_dict it saves as "
                                        "ckpt.pth) as a checkpoint that sample, figures and compare read.")
    p.add_argument("pth", help="the tutorial's checkpoint file, e.g. ckpt.pth")
    p.add_argument("--sigma", type=float, default=25.0,
                   help="the sigma the model was trained with (default: %(default)s, the tutorial's)")
    p.add_argument("--data-dir", default=None, help="where MNIST lives, for figures and compare (default: ./data)")
    p.add_argument("--out", default="runs/tutorial", help="the new run folder (default: %(default)s)")
    p.set_defaults(handler=cmd_import_tutorial)

    p = commands.add_parser("figures", help="draw the paper's figures 1-5 as PNGs",
                            description="Draw the paper's figures: forward diffusion, 64 Milstein samples, ODE "
                                        "interpolation, the four samplers side by side, and the loss curves.")
    _add_model_options(p)
    _add_sampler_options(p)
    _add_figure_options(p)
    p.add_argument("--loss-runs", nargs="*", default=None, metavar="RUN",
                   help="run folders whose loss.csv to plot side by side (default: the checkpoint's own run)")
    p.add_argument("--data-dir", default=None, help="where the training data set lives (default: as trained)")
    _add_threads_option(p)
    p.add_argument("--out", default="runs/figures", help="output folder (default: %(default)s)")
    p.set_defaults(handler=cmd_figures)

    p = commands.add_parser("compare", help="compare the samplers: time, nfe, diversity, Frechet distance, colour",
                            description="Compare the samplers at several settings; writes compare.md, compare.json "
                                        "and grids/<run>.png into --out.")
    _add_model_options(p)
    _add_compare_options(p, "--steps")
    p.add_argument("--samplers", type=_sampler_list, default=list(SAMPLERS),
                   help=f"comma list of samplers (default: {','.join(SAMPLERS)})")
    p.add_argument("--num-samples", type=_sample_count, default=64, help="samples per run (default: %(default)s)")
    p.add_argument("--data-dir", default=None, help="where the training data set lives (default: as trained)")
    _add_threads_option(p)
    p.add_argument("--out", default="runs/compare", help="output folder (default: %(default)s)")
    p.set_defaults(handler=cmd_compare)

    p = commands.add_parser("bench", help="run the step-kernel and sampler benchmarks",
                            description="Run the benchmarks; options not listed here go to the named benchmark "
                                        "(see python -m scoreops.benchmarks.bench_steps --help).")
    p.add_argument("which", nargs="?", choices=("all", "steps", "samplers"), default="all",
                   help="which benchmark (default: %(default)s)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="tiny sizes and short timings: a smoke run, not a result")
    p.add_argument("--out", default=None, help="output folder (default: benchmarks/results; runs/bench-quick "
                                               "with --quick, so that a smoke run never replaces the tables)")
    p.set_defaults(handler=cmd_bench)

    p = commands.add_parser("demo", help="train on digits, sample, draw the figures and compare, in one go",
                            description="The whole pipeline on the embedded digits data set, sized for a few "
                                        "minutes on a 2-core CPU: train, sample with all four samplers, draw the "
                                        "figures, compare the samplers. Rerunning reuses the finished training.")
    p.add_argument("--train-steps", type=_train_steps, default=DEMO_TRAIN_STEPS,
                   help="training steps of batch 64 (default: %(default)s)")
    _add_sampler_options(p)
    _add_figure_options(p)
    p.add_argument("--seed", type=_seed, default=0, help="seed of the training and the samplers (default: %(default)s)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="op backend of the samplers' fused steps (default: %(default)s)")
    _add_compare_options(p, "--compare-steps")
    p.add_argument("--copy-figures", default=None, metavar="DIR",
                   help="also copy the figures and the comparison table here, e.g. docs/figures (default: no copy)")
    _add_threads_option(p)
    p.add_argument("--out", default="runs/demo", help="output folder (default: %(default)s)")
    p.set_defaults(handler=cmd_demo)
    return parser


def _add_compare_options(p: argparse.ArgumentParser, steps_flag: str) -> None:
    p.add_argument(steps_flag, type=_step_counts, default=[100, 500],
                   help="comma list of SDE sampler step counts to compare (default: 100,500)")
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
