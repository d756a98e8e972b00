"""Sample quality per score evaluation: scoreops's few-step samplers against k-diffusion's, on one model.

For every sampler and NFE budget, ``--seeds`` runs of ``--samples`` samples each, every run of a
seed starting from the same prior noise (the scoreops stream's, seed 1000 + s); quality is the
Frechet distance (FD) in the features of the data set's classifier
(:mod:`scoreops.evaluation.metrics`), printed beside the floor of real data against real data.
NFE is counted by wrapping the model, never taken from a sampler. k-diffusion (0.1.1.post1,
``requirements-peers.txt``) runs on its Karras grid with the same ends, through
:func:`scoreops.score_to_denoiser`, when it is installed; its stochastic samplers draw their own
(Brownian-tree) noise. A difference between two means is a result only where it exceeds the
spread over seeds.

This is the first cut of the quality benchmark: no cache of results and no figures yet.
Run ``python benchmarks/bench_quality.py --help``.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from scoreops.evaluation import compare, metrics
from scoreops.samplers import FEW_STEP_SAMPLERS, score_to_denoiser, sigma_grid, sigma_space
from scoreops.sde import VESDE, prior_sample
from scoreops.training.checkpoint import load_model

try:
    from . import common
    from .bench_overhead import k_diffusion_sampling
except ImportError:  # run as a script: python benchmarks/bench_quality.py
    import common
    from bench_overhead import k_diffusion_sampling

PEERS = {"heun": "sample_heun", "euler": "sample_euler", "euler_ancestral": "sample_euler_ancestral",
         "dpmpp_2m": "sample_dpmpp_2m", "dpmpp_2m_sde": "sample_dpmpp_2m_sde", "dpmpp_3m_sde": "sample_dpmpp_3m_sde"}


def steps_for(name: str, nfe: int) -> int:
    """Grid steps that spend at most ``nfe`` score evaluations (Heun: 2N - 1 for N steps)."""
    return max(1, (nfe + 1) // 2) if name == "heun" else nfe


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench_quality", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a scoreops run folder or checkpoint (e.g. of the digits "
                                                            "preset: scoreops train --dataset digits --steps 4000)")
    parser.add_argument("--nfe", default="10,20", help="comma list of NFE budgets (default: %(default)s)")
    parser.add_argument("--samplers", default=",".join(FEW_STEP_SAMPLERS), help="comma list (default: all few-step)")
    parser.add_argument("--seeds", type=int, default=3, help="runs per (sampler, NFE) (default: %(default)s)")
    parser.add_argument("--samples", type=int, default=512, help="samples per run (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", default="benchmarks/results", help="folder for quality.json and quality.md")
    parser.add_argument("--classifier-cache", default=None, help="folder of the cached feature classifier "
                                                                 "(default: scoreops's cache folder)")
    return parser


def main(argv: list[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.seeds < 2 or args.samples < 2:
        raise SystemExit("bench_quality: --seeds and --samples must be at least 2 (a spread needs two)")
    budgets = [int(v) for v in args.nfe.split(",")]
    names = [n.strip() for n in args.samplers.split(",") if n.strip()]
    unknown = [n for n in names if n not in FEW_STEP_SAMPLERS]
    if unknown:
        raise SystemExit(f"bench_quality: unknown sampler(s) {unknown}; choose from {','.join(FEW_STEP_SAMPLERS)}")
    model, config = load_model(args.checkpoint, device="cpu")
    sde = VESDE(float(config["sigma"]))
    shape = (config["in_channels"], config["image_size"], config["image_size"])
    images, labels = compare.load_labelled(config["dataset"], config.get("data_dir"), config["image_size"])
    reference = compare.Reference.build(metrics.load_or_train_classifier(config["dataset"], images, labels,
                                                                            cache_dir=args.classifier_cache), images)
    floor = compare.data_row(reference, args.samples)["frechet_distance"]
    k = k_diffusion_sampling()
    calls = [0]

    def counted(x, t):
        calls[0] += 1
        return model(x, t)

    denoiser = score_to_denoiser(counted, sde)
    runs = [(lib, n, b) for b in budgets for lib in ("scoreops", "k-diffusion") for n in names
            if lib == "scoreops" or (k is not None and n in PEERS)]
    rows = []
    with tqdm(total=len(runs) * args.seeds, desc="bench_quality", unit="run") as bar:
        for lib, name, budget in runs:
            sigmas = sigma_grid(sde, steps_for(name, budget)).to(torch.float32)
            fds, seconds, nfes = [], [], []
            for seed in range(args.seeds):
                x = prior_sample(sde.marginal_prob_std, args.samples, shape, seed=1000 + seed)
                calls[0] = 0
                start = time.perf_counter()
                with torch.no_grad():
                    if lib == "scoreops":
                        out = getattr(sigma_space, f"sample_{name}")(denoiser, x, sigmas, seed=seed)
                    else:
                        torch.manual_seed(seed)
                        out = getattr(k, PEERS[name])(denoiser, x, sigmas, disable=True)
                seconds.append(time.perf_counter() - start)
                nfes.append(calls[0])
                fds.append(reference.measure(out)["frechet_distance"])
                bar.update()
            mean = sum(fds) / len(fds)
            spread = math.sqrt(sum((f - mean) ** 2 for f in fds) / (len(fds) - 1))
            rows.append({"library": lib, "sampler": name, "budget": budget, "nfe": max(nfes), "fd_mean": mean,
                         "fd_std": spread, "fds": fds, "seconds": sum(seconds) / len(seconds)})
    columns = [common.Column("library", "library"), common.Column("sampler", "sampler"),
               common.Column("nfe", "NFE (counted)"), common.Column("fd_mean", "FD mean", "{:.2f}"),
               common.Column("fd_std", "FD std over seeds", "{:.2f}"),
               common.Column("seconds", f"s per {args.samples} samples", "{:.2f}")]
    info = common.machine_info(torch.device("cpu"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"checkpoint": args.checkpoint, "machine": info, "samples": args.samples, "seeds": args.seeds,
              "data_floor_fd": floor, "k_diffusion": k is not None, "rows": rows}
    (out / "quality.json").write_text(json.dumps(result, indent=1) + "\n")
    text = "\n\n".join([
        "# Quality per score evaluation", common.describe_machine(info),
        f"Checkpoint `{args.checkpoint}`; {args.seeds} seeds x {args.samples} samples per row; FD of real "
        f"against real data (the floor): {floor:.2f}." + ("" if k is not None else " k-diffusion is not installed."),
        common.markdown_table(rows, columns)])
    (out / "quality.md").write_text(text + "\n")
    print(text)
    return rows


if __name__ == "__main__":
    main()
