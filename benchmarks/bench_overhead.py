"""What a few-step sampler adds to the model's time per score evaluation: scoreops against k-diffusion.

Each sampler walks the same 20-step Karras grid from the same x with a denoiser that costs almost
nothing (``x * 0.5``), so the time per step is the sampler's own: its updates, its noise and its
Python. scoreops's samplers (``scoreops.samplers.sigma_space``) run on every backend built for
the device; k-diffusion 0.1.1.post1's run beside them when it is installed
(``requirements-peers.txt``), its stochastic samplers given ``torch.randn_like`` noise (its
default Brownian tree costs far more, and would flatter scoreops). The denoiser's own time per
call is printed beside them, as is the ratio k-diffusion / scoreops (above 1: scoreops adds less).

Run ``python benchmarks/bench_overhead.py --help``.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import types

import torch

from scoreops import ops
from scoreops.samplers import FEW_STEP_SAMPLERS, sigma_grid
from scoreops.sde import VESDE

try:
    from . import common
except ImportError:  # run as a script: python benchmarks/bench_overhead.py
    import common

STEPS = 20
STOCHASTIC = ("euler_ancestral", "dpmpp_2m_sde", "dpmpp_3m_sde")
SHAPES = {"cpu": ["512x1x16x16", "64x3x64x64"], "cuda": ["512x1x16x16", "64x3x64x64", "16x3x256x256"]}
QUICK_SHAPES = ["8x1x8x8"]


def k_diffusion_sampling():
    """k-diffusion's sampling module loaded without the package ``__init__`` (which imports its
    training code), or None when it is not installed."""
    if "k_diffusion.sampling" in sys.modules:
        return sys.modules["k_diffusion.sampling"]
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        return None
    package = types.ModuleType("k_diffusion")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["k_diffusion"] = package
    return importlib.import_module("k_diffusion.sampling")


def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """A near-free stand-in for a model: the time left per step is the sampler's."""
    return x * 0.5


def sampler_calls(name: str, x: torch.Tensor, sigmas: torch.Tensor, backends: list[str], k) -> dict:
    """variant -> a function of no arguments that runs sampler ``name`` once."""
    core = FEW_STEP_SAMPLERS[name][1]
    calls = {f"scoreops-{b}": (lambda b=b: core(denoiser, x, sigmas, seed=0, backend=b)) for b in backends}
    theirs = getattr(k, f"sample_{name}", None) if k is not None else None
    if theirs is not None:
        extra = {"noise_sampler": lambda s, t: torch.randn_like(x)} if name in STOCHASTIC else {}
        calls["k-diffusion"] = lambda: theirs(denoiser, x, sigmas, disable=True, **extra)
    return calls


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench_overhead", description=__doc__.split("\n\n")[0])
    common.add_common_arguments(parser)
    parser.add_argument("--shapes", default=None,
                        help="comma list of batch shapes such as 512x1x16x16 (default: two to three per device)")
    parser.add_argument("--samplers", default=",".join(FEW_STEP_SAMPLERS),
                        help="comma list of few-step samplers (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> tuple:
    args = build_parser().parse_args(argv)
    device, timing = common.prepare(args)
    names = [n.strip() for n in args.samplers.split(",") if n.strip()]
    unknown = [n for n in names if n not in FEW_STEP_SAMPLERS]
    if unknown or not names:
        raise SystemExit(f"bench_overhead: unknown sampler(s) {unknown}; choose from {','.join(FEW_STEP_SAMPLERS)}")
    shapes = [common.parse_shape(s) for s in (args.shapes.split(",") if args.shapes else
                                              QUICK_SHAPES if args.quick else SHAPES[device.type])]
    backends = [b for b in ops.available_backends(device) if not (b == "triton" and device.type == "cpu")]
    k = k_diffusion_sampling()
    if k is None:
        print("k-diffusion is not installed (pip install --no-deps -r requirements-peers.txt): scoreops alone")
    sigmas = sigma_grid(VESDE(25.0), STEPS).to(torch.float32)
    info, rows = common.machine_info(device), []
    settings = {"steps": STEPS, "backends": backends, "k_diffusion": k is not None, **timing,
                **common.reliability_settings(args)}
    columns = [common.Column("sampler", "sampler"), common.Column("shape", "batch shape"),
               common.Column("denoiser_ms", "denoiser ms/call", "{:.3f}"),
               *[common.Column(f"scoreops-{b}_ms", f"scoreops {b} ms/step", "{:.3f}") for b in backends],
               common.Column("k-diffusion_ms", "k-diffusion ms/step", "{:.3f}"),
               common.Column("ratio", "k-diffusion / scoreops", "{:.2f}x"), *common.RELIABILITY_COLUMNS]
    for shape in shapes:
        x = torch.randn(shape, device=device) * float(sigmas[0])
        sig = sigmas.to(device)
        for name in names:
            calls = {"denoiser": lambda: denoiser(x, sig[:1].expand(x.shape[0])),
                     **sampler_calls(name, x, sig, backends, k)}
            for fn in calls.values():
                fn()  # warm-up
            timings = common.median_times(calls, **timing)
            row = {"sampler": name, "shape": common.format_shape(shape),
                   "denoiser_ms": timings["denoiser"].median * 1e3,
                   **{f"{v}_ms": t.median * 1e3 / STEPS for v, t in timings.items() if v != "denoiser"}}
            fastest = min(row[f"scoreops-{b}_ms"] for b in backends)
            if "k-diffusion" in timings:
                row["ratio"] = common.ratio(row["k-diffusion_ms"], fastest)
            rows.append(common.judge(row, timings, [common.Figure("ratio")], args.max_rel_iqr))
            paths = common.write_results(args.out, "overhead", "Few-step sampler overhead per step",
                                         info, settings, rows, columns, finished=False)
    notes = (f"ms/step: median time of a whole {STEPS}-step run over {STEPS}, with a denoiser of `x * 0.5`; "
             "k-diffusion's stochastic samplers get `torch.randn_like` noise. The ratio uses the fastest "
             "scoreops backend.")
    paths = common.write_results(args.out, "overhead", "Few-step sampler overhead per step", info, settings, rows,
                                 columns, notes=notes)
    print(paths[1].read_text())
    return rows, paths


if __name__ == "__main__":
    main()
