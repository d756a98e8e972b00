"""``scoreops compare``: compare the samplers' time, nfe, diversity, Frechet distance and colour."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..core.checks import default_device
from .outputs import output_folder
from .runs import load_run


def run_compare(model, sde, config: dict, out: Path, *, data_dir: str | None, samplers, steps, few_steps, ode_tols,
                num_samples: int, seed: int, device: torch.device, backend: str, classifier_cache: str | None,
                classifier_epochs: int, checkpoint: str) -> Path:
    """Compare the samplers on ``model`` (see :mod:`scoreops.evaluation.compare`); writes ``compare.md``,
    ``compare.json`` and ``grids/<run>.png`` (each titled with its settings, nfe and seed) into
    ``out`` and returns the markdown's path."""
    from ..evaluation import compare, metrics
    from ..evaluation.figures import runs_figure, save_figure

    images, labels = compare.load_labelled(config["dataset"], data_dir or config.get("data_dir"),
                                           config["image_size"])
    classifier = metrics.load_or_train_classifier(config["dataset"], images, labels, cache_dir=classifier_cache,
                                                  device=device, epochs=classifier_epochs)
    rows, runs = compare.compare_samplers(model, sde, compare.Reference.build(classifier, images),
                                          sampler_names=samplers, steps=steps, few_steps=few_steps,
                                          ode_tols=ode_tols,
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


def run(args: argparse.Namespace) -> Path:
    """Compare the samplers on the checkpoint's model; the report goes to ``args.out``."""
    device = default_device(args.device)
    model, config, sde, _ = load_run(args.checkpoint, args.raw_weights, device, args.compile)
    out = output_folder(args.out)
    run_compare(model, sde, config, out, data_dir=args.data_dir, samplers=args.samplers, steps=args.steps,
                few_steps=args.few_steps, ode_tols=args.ode_tols, num_samples=args.num_samples, seed=args.seed, device=device,
                backend=args.backend, classifier_cache=args.classifier_cache,
                classifier_epochs=args.classifier_epochs, checkpoint=str(args.checkpoint))
    return out
