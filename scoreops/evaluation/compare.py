"""Sampler comparison (``scoreops compare``): cost and sample quality of the four samplers on one model.

For every sampler and setting (step counts for the SDE samplers, tolerances for the adaptive
ODE) it draws ``num_samples`` samples from one seed and reports:

* wall time and nfe (score-model evaluations: ``num_steps`` for EM and Milstein, twice that
  for PC with its one corrector step, as counted by the solver for the ODE, and counted by
  wrapping the model for the few-step samplers);
* diversity: the mean pairwise distance between the samples' classifier features;
* the Frechet distance between the Gaussian fits of the samples' features and of the data's;
* what the classifier makes of the samples: its mean max-softmax confidence, and how many of
  the classes it predicts (and the entropy of that histogram);
* colour statistics: the per-channel means and, for RGB, the warm/cool index ``mean(R - B)``.

A ``data`` row gives the same numbers for ``num_samples`` real images, which is the floor each
number can reach at this sample size (the Frechet distance of a finite sample is biased upwards),
and the classifier's accuracy on held-out real images. Samples are clamped to the data range
[0, 1] before they are measured, as they are when saved as images. The feature classifier is
:class:`scoreops.evaluation.metrics.FeatureClassifier`, cached by
:func:`scoreops.evaluation.metrics.load_or_train_classifier`.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import samplers
from ..sde import VESDE
from ..training.data import load_images
from . import metrics

#: The paper's samplers, in the order of its Figure 4, then the paper's own.
SAMPLERS = ("pc", "em", "ode", "milstein")
#: Every sampler ``compare`` and ``sample`` run: the paper's, then the few-step samplers.
ALL_SAMPLERS = SAMPLERS + tuple(samplers.FEW_STEP_SAMPLERS)
#: ``scoreops sample``'s default, and the few-step samplers' steps in the figures: the best FD per
#: second that benchmarks/bench_quality.py measured on the digits model (DPM-Solver++(2M) SDE at
#: 10 steps = 10 NFE: FD 15.8 +- 2.4 over 10 seeds in 1.4 s per 512 samples on a 2-core CPU, where
#: EM needs 1000 NFE and 167 s for 15.0; see the README's "Time to quality").
DEFAULT_SAMPLER = "dpmpp_2m_sde"
DEFAULT_FEW_STEPS = 10
LABELLED_DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10")


@dataclass
class SampleRun:
    """Samples of one sampler run and what they cost.

    Attributes:
        sampler: one of :data:`SAMPLERS`.
        steps: the SDE samplers' ``num_steps``; None for the ODE.
        tol: the ODE's ``atol = rtol``; None for the SDE samplers.
        samples: (N, C, H, W) float32, the sampler's output (not clamped).
        nfe: score-model evaluations.
        seconds: wall time of the sampler call.
        correction: the Milstein sampler's correction; None for the others.
        snr: the PC corrector's signal-to-noise ratio; None for the others.
    """

    sampler: str
    steps: int | None
    tol: float | None
    samples: torch.Tensor
    nfe: int
    seconds: float
    correction: str | None = None
    snr: float | None = None

    @property
    def label(self) -> str:
        """``"em-500"``, ``"milstein-ito-500"`` (the paper's ``"time"`` correction is not named) or
        ``"ode-1e-05"``: names the run in tables and file names."""
        name = self.sampler if self.correction in (None, "time") else f"{self.sampler}-{self.correction}"
        return f"{name}-{self.steps}" if self.tol is None else f"{name}-{self.tol:g}"

    def settings(self) -> dict:
        """The options this run's sampler has, and their values: ``sampler``, then ``steps``
        (SDE samplers) or ``tol`` (ODE), ``snr`` (PC) and ``correction`` (Milstein)."""
        options = {"sampler": self.sampler, "steps": self.steps, "tol": self.tol, "snr": self.snr,
                   "correction": self.correction}
        return {k: v for k, v in options.items() if v is not None}

    def details(self) -> str:
        """The run's settings and cost for a title: ``"500 steps, snr 0.16, 1000 nfe"`` (PC),
        ``"tol 1e-05, 158 nfe"`` (ODE); Milstein names its correction unless it is the paper's, as
        :attr:`label` does."""
        parts = [f"{self.steps} steps" if self.tol is None else f"tol {self.tol:g}"]
        if self.snr is not None:
            parts.append(f"snr {self.snr:g}")
        if self.correction not in (None, "time"):
            parts.append(f"{self.correction} correction")
        return ", ".join(parts + [f"{self.nfe} nfe"])


def draw_samples(sampler: str, model, sde: VESDE, shape, *, num_samples: int = 64, steps: int = 500,
                 tol: float = 1e-5, snr: float = 0.16, correction: str = "time", seed: int = 0,
                 x_T: torch.Tensor | None = None, sample_offset: int = 0, device: torch.device | str = "cpu",
                 backend: str = "auto", progress: bool = False) -> SampleRun:
    """Run one scoreops sampler and time it.

    Args:
        sampler: ``"em"``, ``"milstein"``, ``"pc"``, ``"ode"`` or a few-step sampler of
            :data:`scoreops.samplers.FEW_STEP_SAMPLERS` (on its default Karras grid with the final
            denoise; its nfe is counted by wrapping the model).
        model: the score model, ``model(x, t)``.
        sde: the VE SDE the model was trained for.
        shape: (C, H, W) of one sample.
        num_samples: batch size N (ignored when ``x_T`` is given).
        steps: ``num_steps`` of the SDE and few-step samplers.
        tol: the ODE's absolute and relative tolerance.
        snr: the PC corrector's signal-to-noise ratio.
        correction: the Milstein sampler's ``correction`` (``"time"``, the paper's, or ``"ito"``).
        seed: noise-stream seed; equal seeds give every sampler the same x(1).
        x_T: an explicit starting sample (N, C, H, W) instead of the prior sample of ``seed``.
        sample_offset: global index of sample 0 in the noise stream (a shard under torchrun).
        device, backend: where and with which op backend to sample.
        progress: show a tqdm bar (per step, or per score evaluation for the ODE). On CUDA the
            SDE samplers run without one, as one CUDA graph.
    """
    if sampler not in ALL_SAMPLERS:
        raise ValueError(f"sampler must be one of {ALL_SAMPLERS}, got {sampler!r}")
    device = torch.device(device)
    common = dict(device=device, shape=tuple(shape), seed=seed, sample_offset=sample_offset, backend=backend)
    start = time.perf_counter()
    if sampler == "ode":
        with tqdm(desc="ode", unit="nfe", disable=not progress) as bar:
            result = samplers.ode_sample(_counting(model, bar), sde, None, num_samples, atol=tol, rtol=tol, z=x_T,
                                         full_output=True, **common)
        samples, nfe = result.samples, result.nfe
    elif sampler in samplers.FEW_STEP_SAMPLERS:
        calls = []

        def counted(x, t):
            calls.append(1)
            return model(x, t)

        wrapper = samplers.FEW_STEP_SAMPLERS[sampler][0]
        samples = wrapper(counted, sde, None, num_samples, steps, x_T=x_T, progress=progress, **common)
        nfe = len(calls)
    else:
        sde_common = dict(x_T=x_T, progress=progress and device.type != "cuda", **common)
        if sampler == "em":
            samples = samplers.em_sample(model, sde, None, num_samples, steps, **sde_common)
        elif sampler == "milstein":
            samples = samplers.milstein_sample(model, sde, None, num_samples, steps, correction=correction,
                                               **sde_common)
        else:
            samples = samplers.pc_sample(model, sde, None, num_samples, steps, snr, **sde_common)
        nfe = steps * (2 if sampler == "pc" else 1)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return SampleRun(sampler, None if sampler == "ode" else steps, tol if sampler == "ode" else None, samples,
                     nfe, seconds, correction if sampler == "milstein" else None, snr if sampler == "pc" else None)


def _counting(model, bar: tqdm):
    """``model`` that advances ``bar`` by one per call."""
    def score(x, t):
        bar.update()
        return model(x, t)
    return score


def load_labelled(dataset: str, data_dir: str | None = None, image_size: int | None = None):
    """Images (N, C, S, S) in [0, 1] and their int64 class labels (N,) of a labelled data set.

    Args:
        dataset: one of :data:`LABELLED_DATASETS` (an image ``folder`` has no labels).
        data_dir, image_size: as for :func:`scoreops.training.data.load_images`.
    """
    if dataset not in LABELLED_DATASETS:
        raise ValueError(f"the sample metrics need class labels to train their feature classifier; dataset "
                         f"{dataset!r} has none (labelled: {', '.join(LABELLED_DATASETS)})")
    images = load_images(dataset, data_dir, image_size)
    if dataset == "digits":
        from sklearn.datasets import load_digits

        labels = load_digits().target
    else:
        from torchvision import datasets

        cls = {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST, "cifar10": datasets.CIFAR10}[dataset]
        labels = cls(root=data_dir or "data", train=True, download=False).targets
    return images, torch.as_tensor(labels, dtype=torch.int64)


@dataclass
class Reference:
    """The data side of every comparison: the classifier and the real images' feature statistics."""

    classifier: metrics.Classifier
    images: torch.Tensor
    mean: object
    cov: object

    @classmethod
    def build(cls, classifier: metrics.Classifier, images: torch.Tensor) -> Reference:
        """Fit the Gaussian of the features of all ``images`` (N, C, H, W) in [0, 1]."""
        mean, cov = metrics.gaussian_fit(metrics.extract_features(classifier.net, images))
        return cls(classifier, images, mean, cov)

    def measure(self, images: torch.Tensor) -> dict:
        """The quality numbers of ``images`` (N >= 2, C, H, W) of the reference images' C, H and W,
        clamped to [0, 1] first."""
        if not isinstance(images, torch.Tensor) or images.shape[1:] != self.images.shape[1:]:
            got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images must be (N, *{tuple(self.images.shape[1:])}) like the data they are compared "
                             f"with, got {got}")
        images = images.detach().float().clamp(0.0, 1.0)
        features = metrics.extract_features(self.classifier.net, images)
        return {"diversity": metrics.mean_pairwise_distance(features),
                "frechet_distance": metrics.frechet_distance(*metrics.gaussian_fit(features), self.mean, self.cov),
                **metrics.prediction_statistics(metrics.predict_probs(self.classifier.net, images)),
                **metrics.colour_statistics(images)}


def data_row(reference: Reference, num_samples: int, seed: int = 0) -> dict:
    """The ``data`` row: the numbers of ``num_samples`` random real images, and the classifier's
    held-out accuracy. The images come from those the classifier was not trained on (from all
    when there are fewer than ``num_samples``), so its confidence on them is a fair comparison."""
    heldout = reference.classifier.heldout
    pool = heldout if len(heldout) >= num_samples else torch.arange(len(reference.images))
    pick = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:num_samples]]
    return {"sampler": "data", "steps": None, "tol": None, "nfe": None, "seconds": None,
            **reference.measure(reference.images[pick]), "heldout_accuracy": reference.classifier.heldout_accuracy}


def run_row(run: SampleRun, reference: Reference) -> dict:
    """The row of one sampler run."""
    return {"sampler": run.sampler, "steps": run.steps, "tol": run.tol, "nfe": run.nfe, "seconds": run.seconds,
            **reference.measure(run.samples), "heldout_accuracy": None}


def compare_samplers(model, sde: VESDE, reference: Reference, *, sampler_names=ALL_SAMPLERS, steps=(100, 500),
                     few_steps=(10, 20), ode_tols=(1e-3, 1e-5), num_samples: int = 64, seed: int = 0,
                     device: torch.device | str = "cpu", backend: str = "auto",
                     progress: bool = True) -> tuple[list[dict], list[SampleRun]]:
    """Run every sampler at every setting and measure the samples against ``reference``.

    Args:
        model, sde: the score model and its SDE.
        reference: the classifier and data statistics (:meth:`Reference.build`).
        sampler_names: which of :data:`ALL_SAMPLERS` to run.
        steps: step counts of the SDE samplers (EM, Milstein, PC).
        few_steps: step counts (sigma intervals) of the few-step samplers.
        ode_tols: tolerances (atol = rtol) of the ODE sampler.
        num_samples: samples per run (>= 2).
        seed: one noise-stream seed for every run, so all start from the same x(1).
        device, backend: where and how to sample.
        progress: show a tqdm bar over the runs.

    Returns:
        The rows (the ``data`` row, then one per run; see the module docstring for the keys)
        and the runs, with their samples.
    """
    unknown = [s for s in sampler_names if s not in ALL_SAMPLERS]
    if unknown or not sampler_names or len(set(sampler_names)) != len(sampler_names):
        raise ValueError(f"samplers must be a non-empty selection of {ALL_SAMPLERS} without repeats, "
                         f"got {list(sampler_names)}")
    if num_samples < 2:
        raise ValueError(f"num_samples must be at least 2 to measure diversity, got {num_samples}")
    runs = []
    for name in sampler_names:
        if name == "ode":
            runs += [dict(sampler=name, tol=tol) for tol in ode_tols]
        else:
            runs += [dict(sampler=name, steps=n) for n in (few_steps if name in samplers.FEW_STEP_SAMPLERS else steps)]
    if not runs:
        raise ValueError(f"nothing to run: samplers {list(sampler_names)} with steps {list(steps)}, few-step "
                         f"steps {list(few_steps)} and ODE tolerances {list(ode_tols)}")
    shape = reference.images.shape[1:]
    options = dict(num_samples=num_samples, seed=seed, device=device, backend=backend)
    if torch.device(device).type == "cuda":
        # The first call of each sampler captures its CUDA graph; keep that out of the timings.
        for run in runs:
            draw_samples(model=model, sde=sde, shape=shape, **run, **options)
    results = [draw_samples(model=model, sde=sde, shape=shape, **run, **options)
               for run in tqdm(runs, desc="compare", unit="run", disable=not progress)]
    return [data_row(reference, num_samples, seed)] + [run_row(r, reference) for r in results], results


# --------------------------------------------------------------------------- reports
_COLUMNS = (  # (key, header, format)
    ("sampler", "sampler", "{}"),
    ("steps", "steps", "{}"),
    ("tol", "ODE tol", "{:g}"),
    ("nfe", "nfe", "{}"),
    ("seconds", "wall s", "{:.2f}"),
    ("diversity", "diversity (mean pairwise feature distance)", "{:.3f}"),
    ("frechet_distance", "Frechet distance to data", "{:.3f}"),
    ("mean_confidence", "classifier confidence (mean max softmax)", "{:.3f}"),
    ("classes_covered", "classes predicted", "{}"),
    ("class_entropy_bits", "predicted-class entropy (bits)", "{:.2f}"),
    ("heldout_accuracy", "classifier accuracy (held-out real)", "{:.3f}"),
    ("channel_means", "channel means", None),
    ("warm_cool", "warm/cool mean(R-B)", "{:+.4f}"),
)


def _cell(value, fmt) -> str:
    if value is None:
        return "-"
    if fmt is None:
        return ", ".join(f"{v:.3f}" for v in value)
    return fmt.format(value)


def markdown_table(rows: list[dict]) -> str:
    """The rows as a GitHub markdown table (missing values as ``-``)."""
    lines = ["| " + " | ".join(header for _, header, _ in _COLUMNS) + " |",
             "|" + "|".join("---" for _ in _COLUMNS) + "|"]
    lines += ["| " + " | ".join(_cell(row.get(key), fmt) for key, _, fmt in _COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def diversity_ranking(rows: list[dict]) -> str:
    """``"pc > em > ..."``: the samplers by diversity, each at its largest step count (the ODE at
    its tightest tolerance), as the paper ranks them."""
    finest = {}
    for row in sorted((r for r in rows if r["sampler"] != "data"), key=lambda r: (r["steps"] or 0, -(r["tol"] or 0))):
        finest[row["sampler"]] = row
    return " > ".join(r["sampler"] for r in sorted(finest.values(), key=lambda r: r["diversity"], reverse=True))


def write_report(rows: list[dict], out_dir: str | Path, info: dict) -> tuple[Path, Path]:
    """Write ``compare.json`` (``info`` and the rows) and ``compare.md`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for row in rows:
        for key, value in row.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"compare: {key} of the {row['sampler']} row is {value}")
    json_path, md_path = out / "compare.json", out / "compare.md"
    json_path.write_text(json.dumps({**info, "rows": rows}, indent=1) + "\n")
    grey = rows[0]["warm_cool"] is None
    notes = [
        f"Checkpoint `{info['checkpoint']}`, data set `{info['dataset']}`, {info['num_samples']} samples per run, "
        f"seed {info['seed']}, device `{info['device']}`.",
        f"Diversity ranking (most diverse first, each sampler at its finest setting): {diversity_ranking(rows)}. "
        "Noise is diverse too: read the ranking beside the Frechet distance.",
        "Features are those of a small CNN classifier trained on the same data set (its held-out accuracy is in the "
        "`data` row). Samples have no labels, so for them the table gives the classifier's confidence and how many "
        "classes it predicts, not an accuracy. The `data` row measures the same number of real images: the floor "
        "each number can reach at this sample size.",
    ]
    if grey:
        notes.append("The warm/cool index needs RGB images; this data set has one channel.")
    md_path.write_text("# Sampler comparison\n\n" + markdown_table(rows) + "\n\n" + "\n\n".join(notes) + "\n")
    return json_path, md_path
