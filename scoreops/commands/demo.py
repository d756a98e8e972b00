"""``scoreops demo``: train on the embedded digits, sample with every sampler, draw the figures and
compare the samplers, in one go."""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from ..core.checks import default_device
from .compare import run_compare
from .outputs import output_folder, write_samples
from .runs import data_images, load_run


def run(args: argparse.Namespace) -> Path:
    """The whole pipeline into ``args.out``: ``train/``, ``samples/``, ``figures/`` and ``compare/``."""
    from ..evaluation import compare
    from ..evaluation.figures import make_figures
    from ..training import train

    out = output_folder(args.out)
    device = default_device(args.device)
    run_dir = out / "train"
    shown_run = str(Path(args.out) / "train")  # as the user named it, for the reports
    print(f"1/4 training a ScoreNet on the digits data set for {args.train_steps} steps", flush=True)
    # resume: a rerun reuses (or finishes) the training of an earlier one.
    train.train(train.TrainConfig(dataset="digits", steps=args.train_steps, save_every=args.train_steps,
                                  out=str(run_dir), resume=True, seed=args.seed, device=str(device)))
    model, config, sde, shape = load_run(str(run_dir), False, device, args.compile)

    print("2/4 sampling with the paper's four samplers and the few-step samplers", flush=True)
    samples_dir = output_folder(out / "samples")
    for name in compare.ALL_SAMPLERS:
        steps = args.few_steps if name in compare.samplers.FEW_STEP_SAMPLERS else args.steps
        drawn = compare.draw_samples(name, model, sde, shape, num_samples=64, steps=steps, tol=args.tol,
                                     seed=args.seed, device=device, backend=args.backend, progress=True)
        write_samples(drawn, samples_dir, {"checkpoint": shown_run, "seed": args.seed})

    print("3/4 drawing the paper's figures", flush=True)
    figures_dir = output_folder(out / "figures")
    figure_paths = make_figures(model, sde, data_images(config, None), figures_dir, loss_runs=[run_dir],
                                steps=args.steps, few_steps=args.few_steps, milstein_steps=args.milstein_steps,
                                tol=args.tol, seed=args.seed,
                                device=device, backend=args.backend)

    print("4/4 comparing the samplers", flush=True)
    md_path = run_compare(model, sde, config, output_folder(out / "compare"), data_dir=None,
                          samplers=compare.ALL_SAMPLERS, steps=args.compare_steps,
                          few_steps=args.compare_few_steps, ode_tols=args.ode_tols, num_samples=64, seed=args.seed,
                          device=device, backend=args.backend, classifier_cache=args.classifier_cache,
                          classifier_epochs=args.classifier_epochs, checkpoint=shown_run)

    if args.copy_figures:
        target = output_folder(args.copy_figures)
        for path in figure_paths + [md_path]:
            shutil.copy2(path, target / path.name)
        print(f"copied the figures and the comparison table to {target}")
    print(f"samples: {samples_dir}\nfigures: {figures_dir}\ncomparison: {md_path}")
    return out
