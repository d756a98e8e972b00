"""Sampler overhead per score evaluation: scoreops's few-step samplers against k-diffusion's.

A sampler's time is the model's time plus its own: the updates, the noise, the Python and the
host syncs of its loop. To see its own, each sampler here walks a 20-step Karras grid of the VE
SDE (``scoreops.sigma_grid(VESDE(25), 20)``) from the same x with a denoiser that costs almost
nothing (``x * 0.5``); the time per step is then the sampler's overhead plus one (Heun: about two)
calls of that denoiser, whose own time per call is measured and printed beside it. For each
sampler and batch shape, one run times side by side, interleaved:

* ``scoreops.samplers.sigma_space.sample_<name>`` on each scoreops backend asked for
  (``--backend``; default the fastest built for the device), noise made inside the fused update;
* k-diffusion's ``sample_<name>`` (0.1.1.post1, ``requirements-peers.txt``) where it has that
  sampler (it has no iPNDM or UniPC), when it is installed; otherwise scoreops runs alone. Its
  stochastic samplers are given a ``noise_sampler`` of ``torch.randn_like``: the default of
  ``dpmpp_2m_sde`` and ``dpmpp_3m_sde``, a Brownian tree, costs many times more per step and
  would flatter scoreops (``euler_ancestral``'s default is ``randn_like`` already).

Both libraries make the same number of score evaluations (NFE) on this grid, counted in the
warm-up run of each; ``k-diffusion / scoreops`` is the ratio of their median times, so a ratio
above 1 is a sampler that adds less than k-diffusion's per NFE with the same model.

Run ``python benchmarks/bench_overhead.py --help``.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import sys
import types
import warnings
from typing import Callable

import torch

from scoreops import ops
from scoreops.samplers import FEW_STEP_SAMPLERS, sigma_grid, sigma_space
from scoreops.sde import VESDE

try:
    from . import common, peers
except ImportError:  # run as a script: python benchmarks/bench_overhead.py
    import common
    import peers

SIGMA, STEPS = 25.0, 20

CPU_SHAPES = "512x1x16x16,64x3x64x64"
CUDA_SHAPES = "512x1x16x16,64x3x64x64,64x3x256x256"
QUICK_SHAPES = "4x1x8x8"

# k-diffusion's samplers that draw noise, and so take a noise_sampler.
K_STOCHASTIC = ("euler_ancestral", "dpmpp_2m_sde", "dpmpp_3m_sde")


def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The stand-in model: one elementwise kernel, so that what is left of a step is the sampler's."""
    return x * 0.5


class CountingDenoiser:
    """:func:`denoiser` that counts its calls (the NFE of a run)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return denoiser(x, sigma)


Run = Callable[[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]], torch.Tensor]


def sampler_runs(name: str, x: torch.Tensor, grid: torch.Tensor, backends: list[str],
                 k_sampling: types.ModuleType | None) -> dict[str, Run]:
    """variant -> a function of the denoiser that runs sampler ``name`` once from ``x`` down ``grid``.

    Variants: ``scoreops-<backend>`` for each backend, and ``k-diffusion`` where ``k_sampling``
    has the sampler. Every run starts from the same x and walks the same noise levels, each
    library's grid in the form its own helper makes it: for scoreops float64 on the CPU, as
    :func:`scoreops.sigma_grid` returns it; for k-diffusion float32 on x's device, as its
    ``get_sigmas_karras(device=...)`` does. The seed is fixed: every scoreops run draws the same noise.
    """
    ours = getattr(sigma_space, f"sample_{name}")
    runs: dict[str, Run] = {f"scoreops-{b}": (lambda d, b=b: ours(d, x, grid, seed=0, backend=b)) for b in backends}
    theirs = getattr(k_sampling, f"sample_{name}", None) if k_sampling is not None else None
    if theirs is not None:
        sigmas = grid.to(device=x.device, dtype=torch.float32)
        extra = {"noise_sampler": lambda sigma, sigma_next: torch.randn_like(x)} if name in K_STOCHASTIC else {}
        runs["k-diffusion"] = lambda d: theirs(d, x, sigmas, disable=True, **extra)
    return runs


# The figures of a row and the values they can take (see common.judge).
FIGURES = [common.Figure("scoreops_ms", voids=("ratio",)), common.Figure("k_diffusion_ms", voids=("ratio",)),
           common.Figure("ratio")]


def measure_sampler(name: str, shape: tuple[int, ...], device: torch.device, backends: list[str],
                    k_sampling: types.ModuleType | None, *, rounds: int, min_run_time: float,
                    max_rel_iqr: float) -> list[dict]:
    """Time sampler ``name`` at batch ``shape``: each scoreops backend, k-diffusion and one
    denoiser call, interleaved (:func:`common.median_times`).

    Returns one row per backend, k-diffusion's time and the denoiser's beside it, judged by
    :func:`common.judge` on the timings the ratio is made of (the denoiser's is shown, not judged).
    A row whose two libraries made different NFE is unreliable: its ratio is not per NFE.
    """
    grid = sigma_grid(VESDE(SIGMA), STEPS)
    x = torch.randn(shape, device=device) * float(grid[0])
    sigma = torch.full((shape[0],), float(grid[0]), device=device)  # (B,), as both libraries pass it
    runs = sampler_runs(name, x, grid, backends, k_sampling)
    nfe = {}
    for variant, run in runs.items():  # warm-up, counting the score evaluations
        counter = CountingDenoiser()
        run(counter)
        nfe[variant] = counter.calls
    calls = {"denoiser": lambda: denoiser(x, sigma), **{v: (lambda run=run: run(denoiser)) for v, run in runs.items()}}
    calls["denoiser"]()
    timings = common.median_times(calls, rounds=rounds, min_run_time=min_run_time)

    k_timing = timings.get("k-diffusion")
    rows = []
    for backend in backends:
        ours = timings[f"scoreops-{backend}"]
        row = {
            "sampler": name, "shape": common.format_shape(shape), "backend": backend,
            "nfe": nfe[f"scoreops-{backend}"], "k_diffusion_nfe": nfe.get("k-diffusion"),
            "denoiser_ms": 1e3 * timings["denoiser"].median, "denoiser_timing": timings["denoiser"].as_json(),
            "scoreops_ms": 1e3 * ours.median / STEPS,
            "k_diffusion_ms": None if k_timing is None else 1e3 * k_timing.median / STEPS,
            "ratio": None if k_timing is None else common.ratio(k_timing.median, ours.median),
        }
        used = {f"scoreops-{backend}": ours, **({"k-diffusion": k_timing} if k_timing is not None else {})}
        common.judge(row, used, FIGURES, max_rel_iqr)
        if k_timing is not None and row["k_diffusion_nfe"] != row["nfe"]:
            row["unreliable_reasons"].append(f"NFE differ: scoreops {row['nfe']}, k-diffusion {row['k_diffusion_nfe']}")
            row["reliable"] = False
        rows.append(row)
    return rows


class _NfeColumn(common.Column):
    """The NFE of a row: one number, or ``scoreops / k-diffusion`` where the two differ."""

    def cell(self, row: dict) -> str:
        nfe, k_nfe = row.get("nfe"), row.get("k_diffusion_nfe")
        if nfe is None:
            return "-"
        return str(nfe) if k_nfe is None or k_nfe == nfe else f"{nfe} / {k_nfe}"


COLUMNS = [
    common.Column("sampler", "sampler"), common.Column("shape", "batch shape"), common.Column("backend", "backend"),
    _NfeColumn("nfe", "NFE"), common.Column("denoiser_ms", "denoiser ms/call", "{:.3f}"),
    common.Column("scoreops_ms", "scoreops ms/step", "{:.3f}"),
    common.Column("k_diffusion_ms", "k-diffusion ms/step", "{:.3f}"),
    common.Column("ratio", "k-diffusion / scoreops", "{:.2f}"), *common.RELIABILITY_COLUMNS,
    common.Column("error", "error"),
]

NOTES = f"""
Each sampler walks the same {STEPS}-step Karras grid of the VE SDE (sigma {SIGMA:g}) from the same x,
with the denoiser `x * 0.5`. `ms/step`: the median time of a whole run over its {STEPS} steps.
`denoiser ms/call`: one call of that denoiser, so that a step's time less the denoiser's (twice for
Heun) is the sampler's overhead. `NFE`: denoiser calls of a run (`scoreops / k-diffusion` where
they differ). `scoreops`: `scoreops.samplers.sigma_space.sample_<name>` on `backend`. `k-diffusion`:
its `sample_<name>` (`-`: it has no such sampler, or is not installed), the stochastic ones given
`torch.randn_like` noise instead of their default Brownian tree, which costs far more.
`k-diffusion / scoreops`: the ratio of the two medians; above 1, scoreops adds less per NFE.

Every time is the median of interleaved rounds (one sample per round; `rounds` in the settings),
and the ratio is taken between medians. `rel. IQR`: the wider relative interquartile range
((75th - 25th percentile) / median of the rounds) of the two timings the ratio uses (the
denoiser's spread is in the JSON, not judged). `reliable`: **no** when one of them spreads wider
than `max_rel_iqr` of the settings, a figure is impossible (a time or ratio that is not positive
and finite) or the two libraries made different NFE, with the reasons. An unreliable row is not a
result.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench_overhead", description=__doc__.split("\n\n")[0])
    common.add_common_arguments(parser)
    parser.add_argument("--shapes", default=None,
                        help=f"comma list of batch shapes (default {CPU_SHAPES} on the CPU, {CUDA_SHAPES} on a GPU)")
    parser.add_argument("--samplers", default=",".join(FEW_STEP_SAMPLERS),
                        help="comma list of few-step samplers (default: %(default)s)")
    parser.add_argument("--backend", default="auto",
                        help=f"comma list of scoreops backends, each of {', '.join(ops.BACKENDS)} that is built for "
                             "the device (default: auto, the fastest built one)")
    return parser


def main(argv: list[str] | None = None) -> tuple:
    """Run the overhead benchmark from command-line arguments; returns the (JSON, markdown) paths written."""
    args = build_parser().parse_args(argv)
    device, timing = common.prepare(args)
    default_shapes = QUICK_SHAPES if args.quick else CUDA_SHAPES if device.type == "cuda" else CPU_SHAPES
    shapes = [common.parse_shape(s) for s in common.split_list(args.shapes or default_shapes)]
    names = common.split_list(args.samplers)
    unknown = sorted(set(names) - set(FEW_STEP_SAMPLERS))
    if unknown or not names:
        raise ValueError(f"--samplers: unknown or no samplers {unknown}; choose from {list(FEW_STEP_SAMPLERS)}")
    # A clear error now, naming the device's backends, rather than after minutes of timing.
    backends = list(dict.fromkeys(ops.resolve_backend(b, device) for b in common.split_list(args.backend)))
    if not backends:
        raise ValueError(f"--backend: no backend given; available for {device.type}: {ops.available_backends(device)}")
    k_sampling, k_missing = peers.k_diffusion_sampling()

    info = common.machine_info(device)
    print(common.describe_machine(info))
    if k_missing:
        print(f"k-diffusion skipped: {k_missing}; timing scoreops alone.")
    print(common.markdown_table([], COLUMNS), flush=True)
    settings = {"shapes": [common.format_shape(s) for s in shapes], "samplers": names, "backends": backends,
                "available_backends": ops.available_backends(device), "sigma": SIGMA, "steps": STEPS,
                "schedule": "karras", "denoiser": "x * 0.5", "k_diffusion_noise": "torch.randn_like",
                "k_diffusion": None if k_missing else importlib.metadata.version("k-diffusion"),
                "k_diffusion_skipped": k_missing, "quick": args.quick, **timing, **common.reliability_settings(args)}
    title = "Sampler overhead per step: scoreops vs k-diffusion, near-free denoiser"
    rows = []
    for shape in shapes:
        for name in names:
            try:
                case_rows = measure_sampler(name, shape, device, backends, k_sampling,
                                            max_rel_iqr=args.max_rel_iqr, **timing)
            except Exception as e:  # noqa: BLE001  (one failing sampler, a kernel or memory, must not cost the rest)
                warnings.warn(f"{name} at {common.format_shape(shape)} failed: {common.error_text(e)}", RuntimeWarning)
                case_rows = [{"sampler": name, "shape": common.format_shape(shape), "error": common.error_text(e)}]
            print(common.markdown_table(case_rows, COLUMNS, header=False), flush=True)
            rows += case_rows
            common.write_results(args.out, "overhead", title, info, settings, rows, COLUMNS, NOTES, finished=False)
    paths = common.write_results(args.out, "overhead", title, info, settings, rows, COLUMNS, NOTES)
    print(common.describe_reliability(common.reliability_summary(rows, args.max_rel_iqr), args.max_rel_iqr))
    print("wrote", *paths, flush=True)
    return paths


if __name__ == "__main__":
    main(sys.argv[1:])
