"""Sample quality per score evaluation and per second: every scoreops sampler, and its peers, on one model.

Each sampler runs over an NFE grid that suits it: the few-step solvers
(:data:`scoreops.samplers.FEW_STEP_SAMPLERS`) at about 5, 10, 20 and 50 score evaluations (NFE;
Heun's N steps cost 2N - 1), Euler-Maruyama, Milstein and predictor-corrector (2 NFE per step)
at about 50 to 1000, and the adaptive ODE and SDE solvers at a few tolerances (the SDE solver
with no step count: the sweep over rtol is its quality-cost curve). For every (sampler, NFE)
there are ``--seeds`` runs of ``--samples`` samples (``--seeds-above-50`` where a fixed budget
exceeds 50 NFE: those runs are long and their spread small); every run of seed s, whatever its sampler,
starts from the same prior noise (the scoreops stream's ``prior_sample``, seed 1000 + s).
Quality is the Frechet distance (FD) in the features of the data set's classifier
(:mod:`scoreops.evaluation.metrics`), printed beside the floor of real data against real data.
NFE is counted by wrapping the model, never taken from a sampler; the seconds are those of the
same runs (synchronised on CUDA, where the SDE samplers run without graph capture so that every
call is counted).

The peers run on the same model, through :func:`scoreops.score_to_denoiser`, when installed:
k-diffusion 0.1.1.post1 (``requirements-peers.txt``) on its Karras grid with the ends of
:func:`scoreops.sigma_grid`, its stochastic samplers with their own (Brownian-tree) noise
seeded by ``torch.manual_seed(s)``, and its adaptive DPM-Solver at a few tolerances; diffusers
0.42.1 (``requirements-bench.txt``) through :mod:`peers_diffusers`: its EDM Euler and
DPM-Solver++ (2M, 2M SDE) and UniPC (orders 2 and 3) on the same Karras grid, and its
ScoreSdeVe predictor-corrector on its own geometric grid, noise from a generator seeded by s.

A difference between two means counts only where it exceeds the larger of their spreads (sample
standard deviations over seeds). Each run's FD, NFE and seconds are cached in
``<out>/quality-cache.json`` under a key of the library, sampler, options, NFE budget, seed,
sample count, model weights, classifier, machine and code version (scoreops's version and a hash
of its sampler, op and kernel sources; k-diffusion's version and a hash of its ``sampling.py``),
so a rerun measures only what changed (``--fresh`` measures everything again). Run
``python benchmarks/bench_quality.py --help``.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shutil
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

import scoreops
from scoreops import samplers
from scoreops.commands.runs import load_run
from scoreops.evaluation import compare, metrics
from scoreops.sde import prior_sample
from scoreops.training.checkpoint import atomic_write

try:
    from . import common, peers, peers_diffusers
except ImportError:  # run as a script: python benchmarks/bench_quality.py
    import common
    import peers
    import peers_diffusers

FEW_STEP = tuple(samplers.FEW_STEP_SAMPLERS)
SDE = ("em", "milstein", "pc")
FEW_STEP_NFE = (5, 10, 20, 50)
SDE_NFE = (50, 100, 200, 500, 1000)
# Adaptive solvers spend what their tolerance asks; their NFE is counted like everyone's.
ODE_TOLERANCES = (1e-2, 1e-3, 1e-4)
ADAPTIVE_SDE_RTOLS = (0.05, 0.02, 0.01)  # 0.01: Jolicoeur-Martineau et al.'s default
# Besides the tutorial's PC: the reverse-diffusion predictor on a log-sigma grid, as score_sde's
# and diffusers' ScoreSdeVe sampler walk it.
PC_VARIANTS = ((), (("predictor", "reverse_diffusion"), ("schedule", "log_sigma")))
K_ADAPTIVE_RTOLS = (0.2, 0.1, 0.05)
# k-diffusion's sampler of each scoreops few-step sampler it also has.
K_SAMPLERS = {"euler": "sample_euler", "heun": "sample_heun", "euler_ancestral": "sample_euler_ancestral",
              "dpmpp_2m": "sample_dpmpp_2m", "dpmpp_2m_sde": "sample_dpmpp_2m_sde",
              "dpmpp_3m_sde": "sample_dpmpp_3m_sde"}
# diffusers' runner (benchmarks/peers_diffusers.py) of each scoreops sampler it also has.
D_RUNNERS = {"euler": ("edm_euler",), "dpmpp_2m": ("edm_dpmpp_2m",), "dpmpp_2m_sde": ("edm_dpmpp_2m_sde",),
             "unipc": ("unipc_2", "unipc_3"), "pc": ("sde_ve_pc",)}
ALL_SAMPLERS = FEW_STEP + SDE + ("ode", "adaptive_sde", "dpm_adaptive")
PEERS = ("k-diffusion", "diffusers")
QUICK = {"samplers": ("heun", "dpmpp_2m_sde", "unipc"), "nfe": (10, 20), "seeds": 2, "samples": 256}
MIN_SAMPLES = 512
MANY_SEEDS_UP_TO = 50  # fixed budgets above this NFE take --seeds-above-50 seeds
HEADLINE_NFE = (10, 20, 50)
DEFAULT_TRAIN_STEPS = 4000
FIRST_SEED = 1000  # prior noise of seed s: prior_sample(..., seed=FIRST_SEED + s)


@dataclasses.dataclass(frozen=True)
class Spec:
    """One (library, sampler, options, budget) cell of the grid; ``steps`` is what the sampler is given."""
    library: str
    sampler: str
    budget: int | None = None
    steps: int | None = None
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        """The figure's line: library, sampler and its options, without the budget."""
        extra = ", ".join(v if isinstance(v, str) else f"{k}={v:g}" for k, v in self.options
                          if k not in ("tol", "rtol"))
        return f"{self.library} {self.sampler}" + (f" ({extra})" if extra else "")


def steps_for(sampler: str, budget: int) -> int:
    """Steps that spend at most ``budget`` score evaluations (Heun: 2N - 1; PC: 2 per step)."""
    if sampler == "heun":
        return (budget + 1) // 2
    return budget // 2 if sampler == "pc" else budget


def min_steps(sampler: str) -> int:
    """The fewest steps a sampler takes (the SDE samplers' tutorial grid needs two)."""
    return 2 if sampler in SDE else 1


def build_grid(names: list[str], budgets: tuple[int, ...] | None, quick: bool,
               peers_ran: tuple[str, ...]) -> list[Spec]:
    """Every run to report, in table order: scoreops first, then the peers in ``peers_ran``; by NFE
    within a sampler."""
    specs = []
    for library in ("scoreops",) + tuple(p for p in PEERS if p in peers_ran):
        for name in names:
            if library == "diffusers":
                grid = budgets or (QUICK["nfe"] if quick else SDE_NFE if name in SDE else FEW_STEP_NFE)
                specs += [Spec(library, name, b, peers_diffusers.steps_for(runner, b), (("runner", runner),))
                          for runner in D_RUNNERS.get(name, ()) for b in grid
                          if peers_diffusers.steps_for(runner, b) >= min_steps(name)]
                continue
            if library == "k-diffusion" and name not in K_SAMPLERS and name != "dpm_adaptive":
                continue
            if library == "scoreops" and name == "dpm_adaptive":
                continue
            if name == "ode":
                specs += [Spec(library, name, options=(("tol", tol),)) for tol in ODE_TOLERANCES]
            elif name == "adaptive_sde":
                specs += [Spec(library, name, options=(("rtol", rtol),)) for rtol in ADAPTIVE_SDE_RTOLS]
            elif name == "dpm_adaptive":
                specs += [Spec(library, name, options=(("rtol", rtol),)) for rtol in K_ADAPTIVE_RTOLS]
            else:
                grid = budgets or (QUICK["nfe"] if quick else SDE_NFE if name in SDE else FEW_STEP_NFE)
                variants = PC_VARIANTS if (library, name) == ("scoreops", "pc") else ((),)
                specs += [Spec(library, name, b, steps_for(name, b), options) for options in variants for b in grid
                          if steps_for(name, b) >= min_steps(name)]
    return specs


def seed_count(spec: Spec, seeds: int, seeds_above_50: int) -> int:
    """Runs of ``spec``: ``seeds``, or ``seeds_above_50`` for a fixed budget above 50 NFE (adaptive
    runs, whose NFE is not known in advance, take ``seeds``)."""
    return seeds if spec.budget is None or spec.budget <= MANY_SEEDS_UP_TO else seeds_above_50


# --------------------------------------------------------------------------- cache keys
def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return h.hexdigest()[:16]


def code_versions(k_sampling, diffusers_ran: bool) -> dict[str, str]:
    """What a cached result depends on besides its settings, per library: the code that made it."""
    package = Path(scoreops.__file__).parent
    source = [p for folder in ("samplers", "ops", "kernels") for p in sorted((package / folder).glob("*.py"))]
    versions = {"scoreops": f"scoreops {scoreops.__version__} {_digest(*(p.read_bytes() for p in source))}"}
    adapter = Path(samplers.denoiser.__file__).read_bytes()
    if k_sampling is not None:
        versions["k-diffusion"] = (f"k-diffusion {peers.version('k-diffusion')} "
                                   f"{_digest(Path(k_sampling.__file__).read_bytes(), adapter)}")
    if diffusers_ran:
        versions["diffusers"] = (f"diffusers {peers_diffusers.diffusers_version()} "
                                 f"{_digest(Path(peers_diffusers.__file__).read_bytes(), adapter)}")
    return versions


def weights_hash(module: torch.nn.Module) -> str:
    """A hash of a module's weights: the cache's key for 'the same model' (or classifier)."""
    return _digest(*(name.encode() + value.detach().cpu().contiguous().numpy().tobytes()
                     for name, value in sorted(module.state_dict().items())))


def cache_key(spec: Spec, seed: int, context: dict[str, Any], code: str) -> str:
    """The cache's key of one run: the spec, the seed, the code and the ``context`` (samples, model, ...)."""
    return json.dumps({"library": spec.library, "sampler": spec.sampler, "options": dict(spec.options),
                       "nfe": spec.budget, "seed": seed, "code": code, **context}, sort_keys=True)


# --------------------------------------------------------------------------- the model
def default_checkpoint() -> Path:
    """The cached digits run of ``scoreops train``'s defaults and 4000 steps, trained on first use."""
    from scoreops.cli import main as cli_main

    run = metrics.default_cache_dir() / "bench-quality" / f"digits-{DEFAULT_TRAIN_STEPS}"
    if (run / "checkpoints").is_dir():
        return run
    partial = run.with_name(run.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)  # what an interrupted training left
    print(f"bench_quality: no --checkpoint; training the digits preset ({DEFAULT_TRAIN_STEPS} steps, once) into "
          f"{run}", flush=True)
    if cli_main(["train", "--dataset", "digits", "--steps", str(DEFAULT_TRAIN_STEPS), "--out", str(partial)]) != 0:
        raise SystemExit("bench_quality: training the digits model failed")
    partial.rename(run)  # only a finished run is ever found under the cache name
    return run


def warm_up(model, x: torch.Tensor) -> None:
    """One uncounted model call at the run's batch, so the first timed run pays no start-up costs."""
    with torch.no_grad():
        model(x, torch.ones(x.shape[0], device=x.device))


def sample(spec: Spec, score, denoiser, x: torch.Tensor, sde, seed: int, k_sampling) -> torch.Tensor:
    """One run of ``spec`` from the prior sample ``x``; ``score`` and ``denoiser`` count their calls."""
    device = x.device
    options = dict(spec.options)
    ends = samplers.sigma_grid(sde, 2)  # [std(1), std(eps), 0]: the same ends as scoreops's grids
    sigma_min, sigma_max = float(ends[1]), float(ends[0])
    if spec.library == "diffusers":
        return peers_diffusers.RUNNERS[options["runner"]](denoiser, x, sigma_max, sigma_min, spec.steps, seed)
    if spec.library == "k-diffusion":
        torch.manual_seed(seed)
        with warnings.catch_warnings():
            # torchsde's Brownian interval warns about float rounding of its own interval ends.
            warnings.filterwarnings("ignore", module="torchsde")
            if spec.sampler == "dpm_adaptive":
                return k_sampling.sample_dpm_adaptive(denoiser, x, sigma_min, sigma_max, rtol=options["rtol"],
                                                      disable=True)
            sigmas = k_sampling.get_sigmas_karras(spec.steps, sigma_min, sigma_max, device=device)
            return getattr(k_sampling, K_SAMPLERS[spec.sampler])(denoiser, x, sigmas, disable=True)
    if spec.sampler in FEW_STEP:
        core = samplers.FEW_STEP_SAMPLERS[spec.sampler][1]
        return core(denoiser, x, samplers.sigma_grid(sde, spec.steps), seed=seed)
    if spec.sampler == "ode":
        return samplers.ode_sample(score, sde, None, x.shape[0], atol=options["tol"], rtol=options["tol"], z=x,
                                   seed=seed, device=device)
    if spec.sampler == "adaptive_sde":
        return samplers.adaptive_sde_sample(score, sde, None, x.shape[0], device, rtol=options["rtol"], x_T=x,
                                            seed=seed)
    fn = {"em": samplers.em_sample, "milstein": samplers.milstein_sample, "pc": samplers.pc_sample}[spec.sampler]
    # No graph capture: a replayed graph would call the model without being counted.
    return fn(score, sde, None, x.shape[0], spec.steps, x_T=x, seed=seed, device=device, cuda_graph=False,
              **options)


# --------------------------------------------------------------------------- the report
def summarise(spec: Spec, runs: list[dict], samples: int) -> dict:
    """The row of one spec from its runs (one per seed): FD mean and sample std, median seconds."""
    fds = [r["fd"] for r in runs]
    nfes = [r["nfe"] for r in runs]
    # The median: one run slowed by another process on the machine does not move it.
    seconds = statistics.median(r["seconds"] for r in runs)
    return {"library": spec.library, "sampler": spec.sampler, "options": dict(spec.options), "budget": spec.budget,
            "steps": spec.steps, "nfe": nfes[0] if len(set(nfes)) == 1 else statistics.fmean(nfes),
            "nfe_max": max(nfes), "nfe_per_seed": nfes, "fd_mean": statistics.fmean(fds),
            "fd_std": statistics.stdev(fds) if len(fds) > 1 else None, "fds": fds, "seconds": seconds,
            "seconds_per_512": seconds * 512 / samples, "label": spec.label}


def verdict(ours: dict | None, theirs: dict | None) -> str:
    """scoreops's best against a peer's: a win only where the means differ by more than the larger spread."""
    if ours is None or theirs is None:
        return "-"
    if ours["fd_std"] is None or theirs["fd_std"] is None:
        return "no spread (1 seed)"
    gap = theirs["fd_mean"] - ours["fd_mean"]
    if abs(gap) <= max(ours["fd_std"], theirs["fd_std"]):
        return "within spread"
    return "scoreops lower FD" if gap > 0 else "peer lower FD"


def headline(rows: list[dict], libraries: list[str]) -> list[dict]:
    """Per NFE limit of :data:`HEADLINE_NFE` that the grid reached (a run at that budget, or an
    adaptive run above the limit before it), each library's best run (lowest mean FD) within it."""
    table = []
    for previous, limit in zip((0,) + HEADLINE_NFE, HEADLINE_NFE):
        if not any(r["budget"] == limit or (r["budget"] is None and previous < r["nfe_max"] <= limit) for r in rows):
            continue
        entry = {"nfe_limit": limit}
        for library in libraries:
            fits = [r for r in rows if r["library"] == library and r["nfe_max"] <= limit]
            entry[library] = min(fits, key=lambda r: r["fd_mean"]) if fits else None
        verdicts = [(peer, verdict(entry["scoreops"], entry[peer])) for peer in libraries[1:]]
        entry["verdict"] = ("-" if not verdicts else verdicts[0][1] if len(verdicts) == 1
                            else "; ".join(f"vs {peer}: {v}" for peer, v in verdicts))
        table.append(entry)
    return table


def _fd_cell(row: dict | None) -> str:
    if row is None:
        return "-"
    spread = f" ± {row['fd_std']:.2f}" if row["fd_std"] is not None else ""
    return f"{row['fd_mean']:.2f}{spread}"


def _options_cell(options: dict) -> str:
    return ", ".join(v if isinstance(v, str) else f"{k} {v:g}" for k, v in options.items()) or "-"


def headline_markdown(table: list[dict], libraries: list[str]) -> str:
    """FD at NFE <= 10, 20 and 50, and seconds per 512 samples, of each library's best sampler."""
    header = ["NFE ≤"]
    for library in libraries:
        header += [f"{library}: best sampler", "FD (mean ± std)", "s / 512 samples"]
    lines = ["| " + " | ".join(header + ["verdict"]) + " |", "|" + "---|" * (len(header) + 1)]
    for entry in table:
        cells = [str(entry["nfe_limit"])]
        for library in libraries:
            row = entry[library]
            cells += (["-", "-", "-"] if row is None else
                      [f"{row['sampler']} ({row['nfe']:g} NFE)", _fd_cell(row), f"{row['seconds_per_512']:.2f}"])
        lines.append("| " + " | ".join(cells + [entry["verdict"]]) + " |")
    return "\n".join(lines)


ROW_COLUMNS = [common.Column("library", "library"), common.Column("sampler", "sampler"),
               common.Column("options", "options", _options_cell), common.Column("steps", "steps"),
               common.Column("nfe", "NFE (counted)", "{:g}"), common.Column("fd_mean", "FD mean", "{:.2f}"),
               common.Column("fd_std", "FD std", "{:.2f}"), common.Column("seconds", "s per run", "{:.2f}"),
               common.Column("seconds_per_512", "s per 512 samples", "{:.2f}")]


def plot(rows: list[dict], x_key: str, x_label: str, path: Path, title: str, floor: float) -> Path:
    """FD against ``x_key`` on a log x axis, one line per sampler; peers dashed, in their scoreops twin's colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    names = list(dict.fromkeys(r["sampler"] for r in rows))
    # tab20's strong colours first, then its pale ones: neighbouring samplers stay distinct.
    palette = [plt.get_cmap("tab20")(i) for i in list(range(0, 20, 2)) + list(range(1, 20, 2))]
    colours = {name: palette[i % 20] for i, name in enumerate(names)}
    fig, ax = plt.subplots(figsize=(10, 5))
    for label in dict.fromkeys(r["label"] for r in rows):
        line = sorted((r for r in rows if r["label"] == label), key=lambda r: r[x_key])
        peer = line[0]["library"] != "scoreops"
        ax.errorbar([r[x_key] for r in line], [r["fd_mean"] for r in line],
                    yerr=[r["fd_std"] or 0.0 for r in line], color=colours[line[0]["sampler"]],
                    linestyle="--" if peer else "-", marker="s" if peer else "o", markersize=4, capsize=2,
                    label=label)
    ax.axhline(floor, color="grey", linestyle=":", label=f"real data ({floor:.2f})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel(x_label)
    ax.set_ylabel("FD to data (mean ± std over seeds)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120))
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench_quality", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=None,
                        help="a scoreops run folder or checkpoint (default: the digits preset, trained once with "
                             f"scoreops train's defaults and {DEFAULT_TRAIN_STEPS} steps into the scoreops cache "
                             "folder, ~4 min on 2 CPU cores)")
    parser.add_argument("--samplers", default=None,
                        help=f"comma list of samplers, each run in every library that has it (default: all of "
                             f"{','.join(ALL_SAMPLERS)}; --quick: {','.join(QUICK['samplers'])})")
    parser.add_argument("--nfe", default=None,
                        help=f"comma list of NFE budgets for every fixed-step sampler (default: few-step "
                             f"{','.join(map(str, FEW_STEP_NFE))}, em/milstein/pc {','.join(map(str, SDE_NFE))}; "
                             f"--quick: {','.join(map(str, QUICK['nfe']))})")
    parser.add_argument("--seeds", type=int, default=None, help="runs per (sampler, NFE), >= 1 (default: 3)")
    parser.add_argument("--seeds-above-50", type=int, default=1,
                        help="runs per (sampler, NFE) of the fixed budgets above 50 NFE, >= 1 and at most --seeds "
                             "(default: %(default)s)")
    parser.add_argument("--samples", type=int, default=None,
                        help=f"samples per run, >= {MIN_SAMPLES} unless --quick (default: 512)")
    parser.add_argument("--quick", action="store_true",
                        help=f"minutes: {','.join(QUICK['samplers'])} at NFE {','.join(map(str, QUICK['nfe']))}, "
                             f"{QUICK['seeds']} seeds x {QUICK['samples']} samples (a smoke run, not for comparison)")
    parser.add_argument("--fresh", action="store_true", help="measure every run again, replacing its cached result")
    parser.add_argument("--device", default="auto", help="auto (CUDA when there is one), cpu or cuda[:i]")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--compile", action="store_true",
                        help="run every library's samplers on the torch.compile'd model (default mode); its runs "
                             "are cached apart from the eager ones")
    parser.add_argument("--out", default="benchmarks/results",
                        help="folder of quality.json, quality.md and the result cache (default: %(default)s)")
    parser.add_argument("--figures-dir", default=None,
                        help="folder of fd_vs_nfe.png and fd_vs_seconds.png (default: --out)")
    parser.add_argument("--classifier-cache", default=None,
                        help="folder of the cached feature classifier (default: scoreops's cache folder)")
    return parser


def _names(text: str | None, quick: bool) -> list[str]:
    if text is None:
        return list(QUICK["samplers"] if quick else ALL_SAMPLERS)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in ALL_SAMPLERS]
    if unknown or not names:
        raise SystemExit(f"bench_quality: --samplers: unknown {unknown or 'empty list'}; choose from "
                         f"{','.join(ALL_SAMPLERS)}")
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The checked options; ``samplers`` becomes a list and ``nfe`` a tuple of ints (or None)."""
    args = build_parser().parse_args(argv)
    args.samplers = _names(args.samplers, args.quick)
    if args.nfe is not None:
        try:
            args.nfe = tuple(int(v) for v in args.nfe.split(","))
        except ValueError:
            raise SystemExit(f"bench_quality: --nfe must be a comma list of integers, got {args.nfe!r}") from None
        if min(args.nfe) < 1:
            raise SystemExit(f"bench_quality: --nfe budgets must be >= 1, got {args.nfe}")
    args.seeds = args.seeds if args.seeds is not None else QUICK["seeds"] if args.quick else 3
    args.samples = args.samples if args.samples is not None else QUICK["samples"] if args.quick else 512
    if args.seeds < 1:
        raise SystemExit(f"bench_quality: --seeds must be >= 1, got {args.seeds}")
    if args.seeds_above_50 < 1:
        raise SystemExit(f"bench_quality: --seeds-above-50 must be >= 1, got {args.seeds_above_50}")
    args.seeds_above_50 = min(args.seeds_above_50, args.seeds)
    if args.samples < MIN_SAMPLES and not args.quick:
        raise SystemExit(f"bench_quality: --samples must be >= {MIN_SAMPLES} (FD is biased at fewer), got "
                         f"{args.samples}; --quick allows fewer")
    if args.threads is not None and args.threads < 1:
        raise SystemExit(f"bench_quality: --threads must be >= 1, got {args.threads}")
    return args


def run(args: argparse.Namespace) -> dict:
    """Measure what the cache lacks, then write quality.json, quality.md and the two figures.

    Args:
        args: from :func:`parse_args` (tests may lower ``samples`` after it).
    Returns:
        The result written to quality.json.
    """
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = common.resolve_device(args.device)
    checkpoint = Path(args.checkpoint) if args.checkpoint else default_checkpoint()
    model, config, sde, shape = load_run(str(checkpoint), False, device, args.compile)
    model.eval()
    images, labels = compare.load_labelled(config["dataset"], config.get("data_dir"), config["image_size"])
    classifier = metrics.load_or_train_classifier(config["dataset"], images, labels,
                                                  cache_dir=args.classifier_cache)
    reference = compare.Reference.build(classifier, images)
    floor = compare.data_row(reference, args.samples)["frechet_distance"]

    k_sampling, k_missing = peers.k_diffusion_sampling()
    d_schedulers, d_missing = peers_diffusers.diffusers_schedulers()
    notes = [why + ": skipped" for why in (k_missing, d_missing) if why]
    peers_ran = tuple(p for p, module in zip(PEERS, (k_sampling, d_schedulers)) if module is not None)
    libraries = ["scoreops", *peers_ran]
    specs = build_grid(args.samplers, args.nfe, args.quick, peers_ran)
    if not specs:
        raise SystemExit(f"bench_quality: nothing to run for --samplers {','.join(args.samplers)} and --nfe "
                         f"{args.nfe}")

    info = common.machine_info(device)
    code = code_versions(k_sampling, d_schedulers is not None)
    context = {"samples": args.samples, "model": weights_hash(getattr(model, "_orig_mod", model)), "classifier": weights_hash(classifier.net),
               "device": info["device_name"], "threads": torch.get_num_threads(), "compile": args.compile}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache_path = out / "quality-cache.json"
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    seeds = {spec: seed_count(spec, args.seeds, args.seeds_above_50) for spec in specs}
    keys = {(spec, seed): cache_key(spec, seed, context, code[spec.library])
            for spec in specs for seed in range(seeds[spec])}
    todo = [(spec, seed) for (spec, seed), key in keys.items() if args.fresh or key not in cache]
    # The libraries' runs of one sampler, budget and seed follow each other, so that a machine whose
    # speed drifts over the run (load, clocks) moves every library's seconds alike.
    todo.sort(key=lambda run: (run[0].sampler, run[0].budget or 0, dict(run[0].options).get("rtol", 0),
                               dict(run[0].options).get("tol", 0), run[1]))
    print(f"bench_quality: {len(keys)} runs, {len(keys) - len(todo)} cached, {len(todo)} to measure", flush=True)

    calls = [0]

    def score(x, t):
        calls[0] += 1
        return model(x, t)

    denoiser = samplers.score_to_denoiser(score, sde)
    priors: dict[int, torch.Tensor] = {}
    if todo:
        warm_up(model, prior_sample(sde.marginal_prob_std, args.samples, shape, seed=FIRST_SEED, device=device))
    for spec, seed in tqdm(todo, desc="bench_quality", unit="run", file=sys.stdout):
        if seed not in priors:
            priors[seed] = prior_sample(sde.marginal_prob_std, args.samples, shape, seed=FIRST_SEED + seed,
                                        device=device)
        x = priors[seed].clone()  # a sampler must not see another's in-place changes
        calls[0] = 0
        common.synchronize(device)
        start = time.perf_counter()
        with torch.no_grad():
            samples_ = sample(spec, score, denoiser, x, sde, seed, k_sampling)
        common.synchronize(device)
        seconds = time.perf_counter() - start
        fd = reference.measure(samples_.float().cpu())["frechet_distance"]
        cache[keys[spec, seed]] = {"fd": fd, "nfe": calls[0], "seconds": seconds}
        text = json.dumps(cache, indent=0, sort_keys=True) + "\n"
        atomic_write(cache_path, lambda tmp, text=text: tmp.write_text(text))

    rows = [summarise(spec, [cache[keys[spec, seed]] for seed in range(seeds[spec])], args.samples)
            for spec in specs]
    best = headline(rows, libraries)
    info["load_average_end"] = common.load_average()
    result = {"benchmark": "quality", "quick": args.quick, "checkpoint": str(checkpoint), "machine": info,
              "settings": {"samples": args.samples, "seeds": args.seeds, "seeds_above_50": args.seeds_above_50,
                           "samplers": args.samplers,
                           "nfe": list(args.nfe) if args.nfe else None, "first_seed": FIRST_SEED},
              "code": code, "data_floor_fd": floor, "libraries": libraries, "notes": notes, "rows": rows,
              "headline": [{"nfe_limit": e["nfe_limit"], "verdict": e["verdict"],
                            **{lib: e[lib] and {k: e[lib][k] for k in ("sampler", "options", "nfe", "fd_mean",
                                                                       "fd_std", "seconds_per_512")}
                               for lib in libraries}} for e in best]}
    atomic_write(out / "quality.json", lambda tmp: tmp.write_text(json.dumps(result, indent=1) + "\n"))

    peer_lines = [f"k-diffusion {peers.version('k-diffusion')} (sampling.py) ran"] if k_sampling else []
    peer_lines += [f"diffusers {peers_diffusers.diffusers_version()} ran (its schedulers through "
                   f"benchmarks/peers_diffusers.py)"] if d_schedulers else []
    peer_lines += notes
    quick_warning = ["**--quick: a smoke run at fewer samples and seeds; its numbers are not for comparison.**"]
    text = "\n\n".join(
        ["# Sample quality per score evaluation"] + (quick_warning if args.quick else []) + [
            common.describe_machine(info),
            f"Model `{checkpoint}` ({config['dataset']}"
            f"{', torch.compile default mode, the same compiled model for every library' if args.compile else ''}); "
            f"{args.seeds} seeds x {args.samples} samples per row "
            f"({args.seeds_above_50} at fixed budgets above {MANY_SEEDS_UP_TO} NFE), every "
            f"run of a seed from the same prior noise. FD in the features of the {config['dataset']} classifier; "
            f"**data floor** (real against real, {args.samples} images): **{floor:.2f}**. NFE is counted; seconds "
            f"are the median over seeds of the same runs.",
            "Peers: " + "; ".join(peer_lines) + ".",
            "Best sampler of each library within an NFE limit. A verdict names a winner only where the means "
            "differ by more than the larger of the two standard deviations over seeds.",
            headline_markdown(best, libraries),
            "Every run:",
            common.markdown_table(rows, ROW_COLUMNS)])
    atomic_write(out / "quality.md", lambda tmp: tmp.write_text(text + "\n"))

    figures = Path(args.figures_dir) if args.figures_dir else out
    figures.mkdir(parents=True, exist_ok=True)
    title = (f"{config['dataset']} model, {args.seeds} seeds x {args.samples} samples"
             + (" (--quick: not for comparison)" if args.quick else "") + f"; {info['device_name']}")
    plot(rows, "nfe", "score evaluations (NFE, counted)", figures / "fd_vs_nfe.png", title, floor)
    plot(rows, "seconds_per_512", "seconds per 512 samples", figures / "fd_vs_seconds.png", title, floor)
    print(text, flush=True)
    return result


def main(argv: list[str] | None = None) -> dict:
    return run(parse_args(argv))


if __name__ == "__main__":
    main()
