"""compare.py's numbers against independent computations: the Frechet and diversity columns
(with the clamp to [0, 1]), the data row's held-out images, the ranking, nfe as counted model
calls, and runs that cannot be made."""
import math

import numpy as np
import pytest
import scipy.linalg
import torch

from scoreops.evaluation import compare, metrics
from scoreops.sde import VESDE

SDE = VESDE(25.0)


def reference(images: torch.Tensor, heldout: torch.Tensor) -> compare.Reference:
    """A Reference on an untrained (but fixed) feature net: a feature map is all the columns need."""
    net = metrics.FeatureClassifier(images.shape[1], 10).eval()
    return compare.Reference.build(metrics.Classifier(net, heldout, 0.5), images)


def gaussian_score(x, t):
    return -x / (0.5 + SDE.marginal_prob_std(t) ** 2).reshape(-1, *([1] * (x.dim() - 1)))


# An untrained net's ReLU features can have dead columns: sqrtm then warns of a singular matrix.
@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")
def test_measure_matches_independent_formulas(seed):
    torch.manual_seed(seed & 0xFFFFFFFF)
    images = torch.rand(150, 1, 8, 8)
    ref = reference(images, torch.arange(30))
    samples = torch.rand(120, 1, 8, 8) * 1.4 - 0.2  # some values outside [0, 1]: measured clamped
    got = ref.measure(samples)

    clamped = samples.clamp(0, 1)
    with torch.no_grad():
        f, d = (ref.classifier.net.features(v).double().numpy() for v in (clamped, images))
        probs = ref.classifier.net(clamped).softmax(1).double()
    c1, c2 = np.cov(f, rowvar=False), np.cov(d, rowvar=False)
    frechet = np.sum((f.mean(0) - d.mean(0)) ** 2) + np.trace(c1 + c2 - 2 * scipy.linalg.sqrtm(c1 @ c2).real)
    pairs = [np.linalg.norm(f[i] - f[j]) for i in range(len(f)) for j in range(i + 1, len(f))]
    assert got["frechet_distance"] == pytest.approx(frechet, rel=1e-6)
    assert got["diversity"] == pytest.approx(np.mean(pairs), rel=1e-9)
    assert got["mean_confidence"] == pytest.approx(probs.max(1).values.mean().item(), rel=1e-5)
    assert got["channel_means"] == [pytest.approx(clamped.double().mean().item(), rel=1e-9)]


def test_data_row_measures_held_out_images_only():
    images = torch.full((60, 1, 8, 8), 0.25)
    heldout = torch.arange(0, 60, 3)
    images[heldout] = 0.75
    row = compare.data_row(reference(images, heldout), num_samples=8)
    assert row["sampler"] == "data" and row["heldout_accuracy"] == 0.5
    assert row["channel_means"] == [pytest.approx(0.75)]


def test_diversity_ranking_takes_each_sampler_at_its_finest_setting():
    rows = [{"sampler": "data", "steps": None, "tol": None, "diversity": 99.0},
            {"sampler": "em", "steps": 100, "tol": None, "diversity": 9.0},
            {"sampler": "em", "steps": 500, "tol": None, "diversity": 1.0},
            {"sampler": "pc", "steps": 500, "tol": None, "diversity": 2.0},
            {"sampler": "ode", "steps": None, "tol": 1e-3, "diversity": 5.0},
            {"sampler": "ode", "steps": None, "tol": 1e-5, "diversity": 0.5}]
    assert compare.diversity_ranking(rows) == "pc > em > ode"


@pytest.mark.parametrize("sampler", compare.SAMPLERS)
def test_nfe_is_the_number_of_model_calls(sampler, seed):
    calls = 0

    def model(x, t):
        nonlocal calls
        calls += 1
        return gaussian_score(x, t)

    run = compare.draw_samples(sampler, model, SDE, (1, 4, 4), num_samples=3, steps=5, tol=1e-2, seed=seed)
    assert run.nfe == calls and run.samples.shape == (3, 1, 4, 4)
    assert run.label == (f"{sampler}-0.01" if sampler == "ode" else f"{sampler}-5")


@pytest.mark.parametrize("sampler,settings,details", [
    ("em", {"steps": 5}, "5 steps, 5 nfe"),
    ("milstein", {"steps": 5, "correction": "ito"}, "5 steps, ito correction, 5 nfe"),
    ("pc", {"steps": 5, "snr": 0.2}, "5 steps, snr 0.2, 10 nfe"),
    ("ode", {"tol": 0.01}, None),
])
def test_a_run_records_the_settings_its_sampler_has_and_no_others(sampler, settings, details):
    run = compare.draw_samples(sampler, gaussian_score, SDE, (1, 4, 4), num_samples=2, steps=5, tol=1e-2, snr=0.2,
                               correction="ito")
    assert run.settings() == {"sampler": sampler, **settings}
    assert run.details() == (details or f"tol 0.01, {run.nfe} nfe")
    # The paper's Milstein correction is not named, as in the run's label.
    paper = compare.draw_samples("milstein", gaussian_score, SDE, (1, 4, 4), num_samples=2, steps=5)
    assert paper.settings()["correction"] == "time" and paper.details() == "5 steps, 5 nfe"


def test_runs_that_cannot_be_made_are_refused():
    ref = reference(torch.rand(20, 1, 8, 8), torch.arange(5))
    with pytest.raises(ValueError, match="nothing to run"):
        compare.compare_samplers(gaussian_score, SDE, ref, sampler_names=["em"], steps=(), progress=False)
    with pytest.raises(ValueError, match="without repeats"):
        compare.compare_samplers(gaussian_score, SDE, ref, sampler_names=["em", "em"], progress=False)


def test_measure_refuses_images_unlike_the_data():
    ref = reference(torch.rand(20, 1, 8, 8), torch.arange(5))
    for bad in (torch.rand(4, 1, 16, 16), torch.rand(4, 3, 8, 8), torch.rand(4, 8, 8)):
        with pytest.raises(ValueError, match=r"images must be \(N, \*\(1, 8, 8\)\)"):
            ref.measure(bad)


def test_report_goes_into_a_folder_it_makes(tmp_path):
    rows = [{"sampler": "data", "steps": None, "tol": None, "diversity": 1.0, "warm_cool": None},
            {"sampler": "em", "steps": 5, "tol": None, "diversity": 0.5, "warm_cool": None}]
    info = {"checkpoint": "c", "dataset": "digits", "num_samples": 4, "seed": 0, "device": "cpu"}
    json_path, md_path = compare.write_report(rows, tmp_path / "new" / "report", info)
    assert md_path.read_text().startswith("# Sampler comparison") and json_path.parent == tmp_path / "new" / "report"


def test_report_refuses_non_finite_numbers(tmp_path):
    row = {"sampler": "em", "steps": 5, "tol": None, "frechet_distance": math.nan}
    with pytest.raises(ValueError, match="frechet_distance of the em row is nan"):
        compare.write_report([row], tmp_path, {})
