"""Does a seed keep its picture when the step count changes? i.i.d. against Brownian-tree noise.

The stochastic few-step samplers run on one model from the same prior noise (one seed) at two
step counts, once with the default i.i.d. step noise and once with ``noise="brownian"``, whose
increments all come from one Brownian path in sigma. The benchmark prints the mean per-sample
RMS pixel distance between the two step counts' samples (lower: the picture stayed), the
seconds of the same runs (each noise kind's pair of runs back to back, so their ratio shares the
machine's state), and draws
the same seeds at a few step counts for both noise kinds (``--figure``).

Run ``python benchmarks/brownian_stability.py --help``.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from scoreops import samplers
from scoreops.commands.runs import load_run
from scoreops.training.checkpoint import atomic_write

try:
    from . import common
except ImportError:  # run as a script: python benchmarks/brownian_stability.py
    import common

SAMPLERS = ("euler_ancestral", "dpmpp_2m_sde", "dpmpp_3m_sde")
NOISES = ("iid", "brownian")


def draw(model, sde, shape, sampler: str, noise: str, steps: int, batch: int, seed: int) -> torch.Tensor:
    """``batch`` samples of the few-step ``sampler`` at ``steps`` steps, seed ``seed``, in [0, 1]."""
    wrapper = samplers.FEW_STEP_SAMPLERS[sampler][0]
    with torch.no_grad():
        x = wrapper(model, sde, None, batch, steps, shape=shape, seed=seed, device="cpu", noise=noise)
    return x.clamp(0.0, 1.0)


def rms_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over samples of the RMS pixel difference (pixels in [0, 1])."""
    return float((a - b).flatten(1).pow(2).mean(1).sqrt().mean())


def figure(model, sde, shape, sampler: str, steps: list[int], shown: int, seed: int, path: Path, title: str) -> Path:
    """A grid: one row per (noise, steps), ``shown`` samples of one seed in each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torchvision.utils import make_grid

    rows = [(noise, n) for noise in NOISES for n in steps]
    fig, axes = plt.subplots(len(rows), 1, figsize=(1.1 * shown, 1.25 * len(rows) + 0.6), squeeze=False)
    for ax, (noise, n) in zip(axes[:, 0], rows):
        grid = make_grid(draw(model, sde, shape, sampler, noise, n, shown, seed), nrow=shown, padding=1,
                         pad_value=1.0)
        ax.imshow(grid.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(f"{noise} noise, {n} steps", fontsize=9, loc="left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="brownian_stability", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a scoreops run folder or checkpoint")
    parser.add_argument("--samplers", default=",".join(SAMPLERS), help="comma list (default: %(default)s)")
    parser.add_argument("--pair", default="20,40", help="the two step counts compared (default: %(default)s)")
    parser.add_argument("--samples", type=int, default=512, help="samples per run (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="the seed of every run (default: %(default)s)")
    parser.add_argument("--figure", default=None, help="PNG of the same seed at --figure-steps for both noises")
    parser.add_argument("--figure-steps", default="10,20,50", help="step counts of the figure (default: %(default)s)")
    parser.add_argument("--figure-sampler", default="dpmpp_2m_sde", help="the figure's sampler (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", default=None, help="also write brownian-stability.json here")
    args = parser.parse_args(argv)
    names = common.split_list(args.samplers)
    unknown = [n for n in names + [args.figure_sampler] if n not in SAMPLERS]
    if unknown:
        parser.error(f"unknown sampler(s) {unknown}; the stochastic few-step samplers are {','.join(SAMPLERS)}")
    try:
        pair = [int(v) for v in common.split_list(args.pair)]
        figure_steps = [int(v) for v in common.split_list(args.figure_steps)]
    except ValueError:
        parser.error("--pair and --figure-steps take comma lists of integers")
    if len(pair) != 2 or min(pair + figure_steps) < 1 or args.samples < 1:
        parser.error("--pair takes two step counts >= 1, --figure-steps counts >= 1, --samples >= 1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    model, config, sde, shape = load_run(args.checkpoint, False, torch.device("cpu"))
    model.eval()
    rows = []
    for name in names:
        row = {"sampler": name}
        for noise in NOISES:
            start = time.perf_counter()
            a, b = (draw(model, sde, shape, name, noise, n, args.samples, args.seed) for n in pair)
            row[f"{noise}_seconds"] = time.perf_counter() - start
            row[noise] = rms_distance(a, b)
        row["ratio"] = row["brownian"] / row["iid"] if row["iid"] > 0 else math.nan
        row["time_ratio"] = row["brownian_seconds"] / row["iid_seconds"]
        rows.append(row)
    lines = [f"| sampler | RMS distance, {pair[0]} vs {pair[1]} steps, i.i.d. | same, Brownian | Brownian / i.i.d. "
             f"| seconds of both runs, i.i.d. | same, Brownian | Brownian / i.i.d. |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['sampler']} | {r['iid']:.4f} | {r['brownian']:.4f} | {r['ratio']:.3f} | {r['iid_seconds']:.2f} "
              f"| {r['brownian_seconds']:.2f} | {r['time_ratio']:.2f} |" for r in rows]
    info = common.machine_info("cpu")
    print(common.describe_machine(info))
    print(f"Model {args.checkpoint}; {args.samples} samples, seed {args.seed}; pixels in [0, 1].\n")
    print("\n".join(lines))
    result = {"checkpoint": args.checkpoint, "samples": args.samples, "seed": args.seed, "pair": pair,
              "machine": info, "rows": rows}
    if args.figure:
        path = figure(model, sde, shape, args.figure_sampler, figure_steps, 8, args.seed, Path(args.figure),
                      f"{config['dataset']} model, {args.figure_sampler}, seed {args.seed}: "
                      f"i.i.d. noise (top) against Brownian-tree noise (bottom)")
        print(f"figure: {path}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "brownian-stability.json", lambda tmp: tmp.write_text(json.dumps(result, indent=1) + "\n"))
    return result


if __name__ == "__main__":
    main()
