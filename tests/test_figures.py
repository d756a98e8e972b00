"""The figures' building blocks: grids, slerp, the forward-diffusion strip, ODE interpolation, loss curves."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

from scoreops import samplers
from scoreops.evaluation import figures
from scoreops.evaluation.compare import SampleRun, draw_samples
from scoreops.sde import VESDE, prior_sample

SDE = VESDE(25.0)


def angle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.flatten(1).double(), b.flatten(1).double()
    return torch.acos((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).clamp(0, math.pi)


def test_save_grid_tiles_are_the_images_enlarged(tmp_path):
    images = torch.rand(5, 3, 8, 8) * 1.4 - 0.2  # some values outside [0, 1]
    path = figures.save_grid(images, tmp_path / "grid.png", nrow=3)
    pixels = np.asarray(Image.open(path).convert("RGB"))
    scale = 8  # 8-pixel images are enlarged to 64
    assert pixels.shape == ((2 * 9 + 1) * scale, (3 * 9 + 1) * scale, 3)
    expected = (images.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for i in range(5):
        row, col = divmod(i, 3)
        top, left = (1 + 9 * row) * scale, (1 + 9 * col) * scale
        tile = pixels[top:top + 8 * scale:scale, left:left + 8 * scale:scale]
        np.testing.assert_array_equal(tile, expected[i])


def test_slerp_follows_the_great_circle(seed):
    generator = torch.Generator().manual_seed(seed & 0xFFFFFFFF)
    z0, z1 = torch.randn(3, 1, 6, 6, generator=generator), torch.randn(3, 1, 6, 6, generator=generator)
    z1 = z1 * (z0.flatten(1).norm(dim=1) / z1.flatten(1).norm(dim=1)).view(3, 1, 1, 1)  # equal norms
    weights = torch.rand(7, generator=generator)
    path = figures.slerp(z0, z1, torch.cat([torch.tensor([0.0, 1.0]), weights]))
    assert path.shape == (3, 9, 1, 6, 6)
    torch.testing.assert_close(path[:, 0], z0)
    torch.testing.assert_close(path[:, 1], z1)
    total = angle(z0, z1)
    for k, w in enumerate(weights.tolist(), start=2):
        # Same norm as the ends, at a fraction w of the angle from z0 and 1 - w from z1.
        torch.testing.assert_close(path[:, k].flatten(1).norm(dim=1), z0.flatten(1).norm(dim=1))
        torch.testing.assert_close(angle(z0, path[:, k]), w * total, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(angle(path[:, k], z1), (1 - w) * total, atol=1e-5, rtol=1e-5)


def test_slerp_of_parallel_ends_is_the_straight_line():
    z0 = torch.randn(2, 10)
    path = figures.slerp(z0, 3 * z0, torch.tensor([0.0, 0.25, 1.0]))
    assert torch.isfinite(path).all()
    torch.testing.assert_close(path[:, 1], 1.5 * z0)


def test_forward_diffusion_strip_goes_from_the_image_to_noise():
    image = torch.rand(1, 32, 32)
    times = (0.0, 0.5, 1.0)
    fig = figures.forward_diffusion_figure(image, SDE, times)
    assert len(fig.axes) == 3
    panels = [np.asarray(ax.images[0].get_array()) for ax in fig.axes]
    np.testing.assert_allclose(panels[0], ((image - image.min()) / (image.max() - image.min()))[0], atol=1e-6)
    # std(1) = sqrt((25**2 - 1) / (2 ln 25)) ~ 9.84 buries the image: x(1) hardly correlates with it.
    std1 = math.sqrt((25.0**2 - 1) / (2 * math.log(25.0)))
    assert f"std = {std1:.2g}" in fig.axes[2].get_title()
    corr = [np.corrcoef(p.ravel(), image.numpy().ravel())[0, 1] for p in panels]
    assert corr[0] > 0.999 and corr[0] > corr[1] > corr[2] and abs(corr[2]) < 0.25


class GaussianScore(torch.nn.Module):
    """Exact score of data N(0, s0**2 I) noised by the VE SDE: -x / (s0**2 + std(t)**2)."""

    def __init__(self, s0: float):
        super().__init__()
        self.s0 = s0

    def forward(self, x, t):
        var = self.s0**2 + SDE.marginal_prob_std(t) ** 2
        return -x / var.view(-1, *([1] * (x.dim() - 1))).to(x.dtype)


def test_interpolation_decodes_the_slerp_path_with_the_ode(seed):
    # For Gaussian data the probability-flow ODE is linear: x(eps) = x(1) * sqrt(v(eps) / v(1)),
    # v(t) = s0**2 + std(t)**2, so each decoded image is the slerp point scaled by that factor.
    seed &= 2**63 - 1
    s0, eps, shape = 0.7, 1e-3, (1, 5, 5)
    run = figures.interpolation_run(GaussianScore(s0), SDE, shape, rows=2, columns=5, tol=1e-7, seed=seed)
    images = run.samples
    assert images.shape == (10, *shape) and (run.sampler, run.tol) == ("ode", 1e-7)
    ends = prior_sample(SDE.marginal_prob_std, 4, shape, seed=seed, device="cpu")
    path = figures.slerp(ends[:2], ends[2:], torch.linspace(0, 1, 5)).reshape(10, *shape)
    var = lambda t: s0**2 + float(SDE.marginal_prob_std(torch.tensor(t, dtype=torch.float64))) ** 2  # noqa: E731
    torch.testing.assert_close(images, path * math.sqrt(var(eps) / var(1.0)), rtol=1e-4, atol=1e-5)


def test_runs_figure_titles_name_sampler_settings_and_nfe():
    model = GaussianScore(0.5)
    runs = [draw_samples("em", model, SDE, (1, 4, 4), num_samples=4, steps=3),
            draw_samples("ode", model, SDE, (1, 4, 4), num_samples=4, tol=1e-3),
            draw_samples("pc", model, SDE, (1, 4, 4), num_samples=4, steps=2, snr=0.2),
            draw_samples("milstein", model, SDE, (1, 4, 4), num_samples=4, steps=2, correction="ito")]
    fig = figures.runs_figure(runs, "title", nrow=2)
    assert fig.get_suptitle() == "title"
    assert [ax.get_title() for ax in fig.axes] == ["EM\n3 steps, 3 nfe", f"ODE\ntol 0.001, {runs[1].nfe} nfe",
                                                   "PC\n2 steps, snr 0.2, 4 nfe",
                                                   "Milstein\n2 steps, ito correction, 2 nfe"]


def test_interpolation_figure_labels_its_columns_with_their_slerp_weights():
    # Black 5x5 tiles on make_grid's white padding: the white pixel columns are the padding.
    run = SampleRun("ode", None, 1e-3, torch.zeros(10, 1, 5, 5), nfe=17, seconds=0.1)
    fig = figures.interpolation_figure(run, columns=5, seed=3)
    (ax,) = fig.axes
    assert fig.get_suptitle().endswith("\nODE, tol 0.001, 17 nfe, seed 3")
    assert ax.get_xlabel() and ax.get_ylabel()
    drawn = np.asarray(ax.images[0].get_array())  # (height, width) or (height, width, colours)
    padding = np.flatnonzero((drawn == 1.0).reshape(*drawn.shape[:2], -1).all(axis=(0, 2)))
    tiles = [(a + b) / 2 for a, b in zip(padding, padding[1:]) if b > a + 1]  # each tile's middle column
    np.testing.assert_allclose(ax.get_xticks(), tiles)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "0.25", "0.5", "0.75", "1"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["1", "2"]
    with pytest.raises(ValueError, match="10 images do not fill rows of 3"):
        figures.interpolation_figure(run, columns=3, seed=3)


def test_loss_curves_are_read_and_drawn_per_run(tmp_path):
    runs = []
    for name, n in (("run-a", 120), ("run-b", 7)):
        (tmp_path / name).mkdir()
        losses = np.exp(-np.arange(n) / 50) + 1
        (tmp_path / name / "loss.csv").write_text("step,loss\n" + "".join(f"{i + 1},{float(v)!r}\n" for i, v in
                                                                        enumerate(losses)))
        runs.append(tmp_path / name)
    steps, losses = figures.read_loss(runs[0])
    np.testing.assert_array_equal(steps, np.arange(1, 121))
    np.testing.assert_allclose(losses, np.exp(-np.arange(120) / 50) + 1)
    fig = figures.loss_figure({figures.run_title(run): figures.read_loss(run) for run in runs})
    assert [ax.get_title() for ax in fig.axes] == ["run-a", "run-b"]  # no checkpoint: the folder name alone
    # run-a: the raw curve and a moving average over 120 // 50 = 2 steps; run-b is too short to smooth.
    assert [len(ax.lines) for ax in fig.axes] == [2, 1]
    np.testing.assert_allclose(fig.axes[0].lines[1].get_ydata(), (losses[1:] + losses[:-1]) / 2)


def test_read_loss_without_a_valid_log_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="loss.csv"):
        figures.read_loss(tmp_path)
    (tmp_path / "loss.csv").write_text("step,loss\n1,nope\n")
    with pytest.raises(ValueError, match="loss.csv"):
        figures.read_loss(tmp_path)


def test_make_figures_draws_what_the_paper_shows(tmp_path, monkeypatch):
    """Figure 2: 64 Milstein samples at each step count; figure 3: the ODE; figure 4: all four
    samplers from one seed."""
    calls = []

    def spy(sampler, *args, **kwargs):
        calls.append((sampler, kwargs.get("num_samples"), kwargs.get("steps"), kwargs.get("seed")))
        return draw_samples(sampler, *args, **kwargs)

    monkeypatch.setattr(figures, "draw_samples", spy)

    def score(x, t):
        return -x / (0.5 + SDE.marginal_prob_std(t) ** 2).reshape(-1, 1, 1, 1)

    titles = {}

    def titled(fig, path):
        titles[path.name] = fig.get_suptitle()
        return save_figure(fig, path)

    save_figure = figures.save_figure
    monkeypatch.setattr(figures, "save_figure", titled)
    paths = figures.make_figures(score, SDE, torch.rand(5, 1, 4, 4), tmp_path, steps=3, few_steps=2,
                                 milstein_steps=(3, 4), tol=1e-2, seed=7, progress=False)
    assert [p.name for p in paths] == ["fig1_forward_diffusion.png", "fig2_milstein_samples.png",
                                       "fig3_interpolation.png", "fig4_samplers.png"]
    for path in paths:
        Image.open(path).verify()
    # Every figure is titled with the seed that made it (the panels carry the samplers' settings).
    assert list(titles) == [p.name for p in paths] and all(t.endswith(", seed 7") for t in titles.values())
    assert "ODE, tol 0.01, " in titles["fig3_interpolation.png"]
    assert calls[:2] == [("milstein", 64, 3, 7), ("milstein", 64, 4, 7)]
    assert calls[2][0] == "ode"  # from the slerp path (x_T), not from a seed
    assert [(c[0], c[1], c[3]) for c in calls[3:]] == [(name, 16, 7) for name in ("pc", "em", "ode", "milstein")
                                                        + tuple(samplers.FEW_STEP_SAMPLERS)]
    assert [c[2] for c in calls[7:]] == [2] * len(samplers.FEW_STEP_SAMPLERS)


def test_bad_figure_input_gets_clear_errors(tmp_path):
    for images in (torch.rand(0, 1, 8, 8), torch.rand(1, 8, 8), [torch.rand(1, 8, 8)]):
        with pytest.raises(ValueError, match=r"non-empty \(N, C, H, W\) batch"):
            figures.save_grid(images, tmp_path / "grid.png")
    with pytest.raises(ValueError, match="nrow must be an int >= 1"):
        figures.save_grid(torch.rand(2, 1, 8, 8), tmp_path / "grid.png", nrow=0)
    with pytest.raises(ValueError, match="one shape"):
        figures.slerp(torch.randn(2, 3), torch.randn(3, 3), torch.linspace(0, 1, 4))
    with pytest.raises(ValueError, match=r"weights must have shape \(K,\)"):
        figures.slerp(torch.randn(2, 3), torch.randn(2, 3), torch.tensor(0.5))
    with pytest.raises(ValueError, match=r"one \(C, H, W\) tensor"):
        figures.forward_diffusion_figure(torch.rand(2, 1, 8, 8), SDE)
    with pytest.raises(ValueError, match="at least one run"):
        figures.runs_figure([], "none")
    with pytest.raises(ValueError, match="at least one run"):
        figures.loss_figure({})
