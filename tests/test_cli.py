"""Every ``scoreops`` subcommand on a tiny model, and the one-line errors of bad input."""
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from tutorial_net import tutorial_state

from scoreops import cli, samplers
from scoreops.evaluation import figures
from scoreops.training.checkpoint import load_model
from scoreops.cli import build_parser, main
from scoreops.sde import VESDE

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--channels", "8,16", "--embed-dim", "16", "--image-size", "8", "--batch-size", "16"]


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """Commands take their thread count from OMP_NUM_THREADS: one, as the suite runs everything."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def grid_side(n_columns: int, image_side: int) -> int:
    """Side of a square save_grid PNG: tiles with 1-pixel padding, enlarged to at least 64 pixels."""
    return (n_columns * (image_side + 1) + 1) * math.ceil(64 / image_side)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A run folder of `scoreops train`: a tiny ScoreNet, three steps on the 8x8 digits."""
    out = tmp_path_factory.mktemp("train")
    assert main(["train", *TINY, "--steps", "3", "--save-every", "3", "--out", str(out)]) == 0
    return out


def test_train_writes_checkpoint_and_loss_log(tiny_run):
    assert sorted(p.name for p in (tiny_run / "checkpoints").iterdir()) == ["step-00000003"]
    assert (tiny_run / "loss.csv").read_text().count("\n") == 4  # header and three steps
    Image.open(tiny_run / "loss.png").verify()
    model, config = load_model(tiny_run)
    assert config["image_size"] == 8 and config["channels"] == [8, 16]


@pytest.mark.parametrize("sampler", ["em", "milstein", "pc", "ode"])
def test_sample_writes_grid_and_the_samplers_tensor(tiny_run, tmp_path, capsys, seed, sampler):
    seed &= 2**63 - 1
    out = tmp_path / "out"
    code, stdout, _ = run(capsys, "sample", "--checkpoint", tiny_run, "--sampler", sampler, "--steps", 4,
                          "--tol", 1e-2, "--snr", 0.21, "--seed", seed, "--device", "cpu", "--out", out)
    assert code == 0 and str(out) in stdout
    label = f"{sampler}-0.01" if sampler == "ode" else f"{sampler}-4"
    with Image.open(out / f"samples-{label}.png") as png:
        assert png.size == (grid_side(8, 8), grid_side(8, 8))
    samples = load_file(out / f"samples-{label}.safetensors")["samples"]
    with safe_open(out / f"samples-{label}.safetensors", "pt") as f:
        metadata = f.metadata()
    assert metadata["seed"] == str(seed) and int(metadata["nfe"]) > 0 and metadata["sampler"] == sampler
    # Only the settings this sampler has are recorded: PC has no correction, EM no snr.
    own = {"em": {"steps": "4"}, "milstein": {"steps": "4", "correction": "time"},
           "pc": {"steps": "4", "snr": "0.21"}, "ode": {"tol": "0.01"}}[sampler]
    assert {k: v for k, v in metadata.items() if k in ("steps", "tol", "snr", "correction")} == own

    # The same draw through the library: the command passes the model, seed and settings through.
    model, _ = load_model(tiny_run)
    common = dict(shape=(1, 8, 8), seed=seed, device="cpu")
    expected = {
        "em": lambda: samplers.em_sample(model, VESDE(25.0), None, 64, 4, **common),
        "milstein": lambda: samplers.milstein_sample(model, VESDE(25.0), None, 64, 4, **common),
        "pc": lambda: samplers.pc_sample(model, VESDE(25.0), None, 64, 4, 0.21, **common),
        "ode": lambda: samplers.ode_sample(model, VESDE(25.0), None, 64, atol=1e-2, rtol=1e-2, **common),
    }[sampler]()
    torch.testing.assert_close(samples, expected)


@pytest.mark.parametrize("sampler,steps,nfe", [("heun", 4, 7), ("unipc", None, 10), ("dpmpp_2m_sde", 3, 3),
                                               (None, None, 10)])
def test_sample_runs_the_few_step_samplers(tiny_run, tmp_path, capsys, seed, sampler, steps, nfe):
    """The few-step samplers default to 10 steps, and the default sampler is DPM-Solver++(2M) SDE;
    the recorded nfe is the model's counted calls."""
    seed &= 2**63 - 1
    out = tmp_path / "out"
    chosen = (["--steps", steps] if steps else []) + (["--sampler", sampler] if sampler else [])
    code, stdout, _ = run(capsys, "sample", "--checkpoint", tiny_run, *chosen, "--seed", seed, "--device", "cpu",
                          "--out", out)
    assert code == 0
    sampler = sampler or "dpmpp_2m_sde"
    label = f"{sampler}-{steps or 10}"
    samples = load_file(out / f"samples-{label}.safetensors")["samples"]
    with safe_open(out / f"samples-{label}.safetensors", "pt") as f:
        assert int(f.metadata()["nfe"]) == nfe
    model, _ = load_model(tiny_run)
    wrapper = samplers.FEW_STEP_SAMPLERS[sampler][0]
    expected = wrapper(model, VESDE(25.0), None, 64, steps or 10, shape=(1, 8, 8), seed=seed, device="cpu")
    torch.testing.assert_close(samples, expected)


def test_sample_compiles_the_model_once_when_asked(tiny_run, tmp_path, capsys, monkeypatch, seed):
    """--compile hands the loaded model to torch.compile (stubbed here: a real compile takes
    half a minute) and samples with what it returns; the samples are the eager ones."""
    compiled_calls = []

    class Stub(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model, self.calls = model, 0

        def forward(self, x, t):
            self.calls += 1
            return self.model(x, t)

    def fake_compile(model, mode=None):
        compiled_calls.append(mode)
        return Stub(model)

    monkeypatch.setattr(torch, "compile", fake_compile)
    seed &= 2**63 - 1
    args = ("sample", "--checkpoint", tiny_run, "--sampler", "euler", "--steps", 3, "--seed", seed, "--device", "cpu")
    assert run(capsys, *args, "--compile", "--out", tmp_path / "c")[0] == 0
    assert run(capsys, *args, "--out", tmp_path / "e")[0] == 0
    assert compiled_calls == [None]  # torch.compile's default mode
    with safe_open(tmp_path / "c" / "samples-euler-3.safetensors", "pt") as f:
        assert int(f.metadata()["nfe"]) == 3
    torch.testing.assert_close(load_file(tmp_path / "c" / "samples-euler-3.safetensors")["samples"],
                               load_file(tmp_path / "e" / "samples-euler-3.safetensors")["samples"])


def test_compare_writes_table_and_json(tiny_run, tmp_path, capsys, monkeypatch):
    titles = {}

    def spy(fig, path):
        titles[Path(path).name] = (fig.get_suptitle(), [ax.get_title() for ax in fig.axes])
        return save_figure(fig, path)

    save_figure = figures.save_figure
    monkeypatch.setattr(figures, "save_figure", spy)
    out = tmp_path / "cmp"
    code, stdout, _ = run(capsys, "compare", "--checkpoint", tiny_run, "--steps", "3,5", "--few-steps", "2",
                          "--ode-tols", "1e-2",
                          "--num-samples", 8, "--classifier-epochs", 1, "--classifier-cache", tmp_path / "cache",
                          "--device", "cpu", "--out", out)
    assert code == 0 and str(out) in stdout and "| sampler |" in stdout
    report = json.loads((out / "compare.json").read_text())
    labels = [(r["sampler"], r["steps"], r["tol"]) for r in report["rows"]]
    assert labels == [("data", None, None), ("pc", 3, None), ("pc", 5, None), ("em", 3, None), ("em", 5, None),
                      ("ode", None, 0.01), ("milstein", 3, None), ("milstein", 5, None)] + [
                      (name, 2, None) for name in samplers.FEW_STEP_SAMPLERS]
    for row in report["rows"]:
        for key in ("diversity", "frechet_distance", "mean_confidence", "class_entropy_bits"):
            assert math.isfinite(row[key]), (row["sampler"], key)
        assert 1 <= row["classes_covered"] <= 10 and len(row["channel_means"]) == 1 and row["warm_cool"] is None
        if row["sampler"] != "data":
            # The ODE's nfe is the solver's count, checked against counted calls in test_compare.
            per_step = 2 if row["sampler"] in ("pc", "heun") else 1
            assert row["nfe"] > 0 if row["sampler"] == "ode" else \
                row["nfe"] == row["steps"] * per_step - (row["sampler"] == "heun")
            assert row["seconds"] > 0 and row["heldout_accuracy"] is None
    assert 0 < report["rows"][0]["heldout_accuracy"] <= 1
    assert (tmp_path / "cache" / "classifier-digits-1x8x8.safetensors").is_file()
    for sampler, steps, tol in labels[1:]:
        name = f"{sampler}-{steps if tol is None else format(tol, 'g')}.png"
        Image.open(out / "grids" / name).verify()
        # Titled with what made it: sampler, setting, nfe, seed (the panel text is test_figures').
        suptitle, (panel,) = titles[name]
        assert suptitle == "8 samples of digits, seed 0" and panel.startswith(figures.TITLES[sampler] + "\n")
        assert (f"{steps} steps" if tol is None else f"tol {tol:g}") in panel and panel.endswith(" nfe")
    table = (out / "compare.md").read_text()
    assert table.count("\n| ") == len(labels) + 1 and "Diversity ranking" in table


def test_figures_command(tiny_run, tmp_path, capsys):
    out = tmp_path / "figs"
    code, stdout, _ = run(capsys, "figures", "--checkpoint", tiny_run, "--steps", 3, "--milstein-steps", "2,3",
                          "--tol", 1e-2,
                          "--device", "cpu", "--out", out)
    assert code == 0 and str(out) in stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "fig1_forward_diffusion.png", "fig2_milstein_samples.png", "fig3_interpolation.png", "fig4_samplers.png",
        "fig5_loss.png"]
    for path in out.iterdir():
        Image.open(path).verify()
    assert figures.run_title(tiny_run) == f"{tiny_run.name}\nembed_dim 16, padding 1"


def test_figures_of_a_checkpoint_without_loss_log_skip_the_loss_figure(tiny_run, tmp_path, capsys):
    checkpoint = tmp_path / "copied"
    shutil.copytree(next((tiny_run / "checkpoints").iterdir()), checkpoint)
    code, stdout, _ = run(capsys, "figures", "--checkpoint", checkpoint, "--steps", 2, "--milstein-steps", 2,
                          "--tol", 1e-1, "--device", "cpu", "--out", tmp_path / "figs")
    assert code == 0 and "skipping the loss figure" in stdout
    assert len(list((tmp_path / "figs").glob("fig*.png"))) == 4
    code, _, err = run(capsys, "figures", "--checkpoint", checkpoint, "--loss-runs", tmp_path, "--out", tmp_path)
    one_line_error(code, err, "scoreops: error:", "loss.csv")


def test_bench_runs_a_benchmark(tmp_path, capsys):
    code, stdout, _ = run(capsys, "bench", "steps", "--quick", "--no-compile", "--ops", "em", "--device", "cpu",
                          "--out", tmp_path)
    assert code == 0 and str(tmp_path) in stdout
    (json_path,) = tmp_path.glob("steps-*.json")
    assert [r["op"] for r in json.loads(json_path.read_text())["rows"]][:1] == ["em"]
    assert len(list(tmp_path.glob("steps-*.md"))) == 1


def test_a_quick_bench_without_out_keeps_away_from_the_committed_tables(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, stdout, _ = run(capsys, "bench", "steps", "--quick", "--no-compile", "--ops", "em", "--sizes", "3x5",
                          "--device", "cpu")
    assert code == 0 and str(tmp_path / "runs" / "bench-quick") in stdout
    assert len(list((tmp_path / "runs" / "bench-quick").glob("steps-*.json"))) == 1
    assert not (tmp_path / "benchmarks").exists()


def test_bench_options_need_a_named_benchmark(tmp_path, capsys):
    code, _, err = run(capsys, "bench", "--quick", "--ops=em", "--out", tmp_path)
    one_line_error(code, err, "scoreops: error:", "name it")


def test_demo_end_to_end_at_tiny_settings(tmp_path, capsys):
    out, docs = tmp_path / "demo", tmp_path / "docs"
    code, stdout, _ = run(capsys, "demo", "--train-steps", 2, "--steps", 3, "--milstein-steps", 3, "--tol", 1e-1,
                          "--few-steps", 2, "--compare-steps", "2,3", "--compare-few-steps", 1,
                          "--ode-tols", "1e-1", "--classifier-epochs", 1, "--classifier-cache", tmp_path / "cache",
                          "--device", "cpu", "--copy-figures", docs, "--out", out)
    assert code == 0 and str(out) in stdout
    assert (out / "train" / "checkpoints" / "step-00000002").is_dir()
    assert sorted(p.name for p in (out / "samples").glob("*.png")) == sorted(
        ["samples-em-3.png", "samples-milstein-3.png", "samples-ode-0.1.png", "samples-pc-3.png"]
        + [f"samples-{name}-2.png" for name in samplers.FEW_STEP_SAMPLERS])
    assert len(list((out / "figures").glob("fig*.png"))) == 5
    assert len(json.loads((out / "compare" / "compare.json").read_text())["rows"]) == 1 + 3 * 2 + 1 + 8
    assert sorted(p.name for p in docs.iterdir()) == sorted(
        [p.name for p in (out / "figures").iterdir()] + ["compare.md"])


@pytest.mark.parametrize("command", ["train", "sample", "import-tutorial", "figures", "compare", "bench", "demo"])
def test_help_lists_defaults(capsys, command):
    code, stdout, _ = run(capsys, command, "--help")
    assert code == 0 and "--out" in stdout and "default" in stdout


def one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("scoreops"), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err


def test_the_tutorials_checkpoint_is_imported_and_sampled(tmp_path, capsys):
    torch.save({f"module.{k}": v for k, v in tutorial_state(3).items()}, tmp_path / "ckpt.pth")
    code, stdout, _ = run(capsys, "import-tutorial", tmp_path / "ckpt.pth", "--out", tmp_path / "run")
    assert code == 0 and "step-00000000" in stdout
    code, _, _ = run(capsys, "sample", "--checkpoint", tmp_path / "run", "--sampler", "em", "--steps", 3,
                     "--num-samples", 2, "--device", "cpu", "--out", tmp_path / "samples")
    samples = load_file(tmp_path / "samples" / "samples-em-3.safetensors")["samples"]
    assert code == 0 and samples.shape == (2, 1, 28, 28) and torch.isfinite(samples).all()

    code, _, err = run(capsys, "import-tutorial", tmp_path / "ckpt.pth", "--out", tmp_path / "run")
    one_line_error(code, err, "scoreops: error:", "already holds checkpoints")
    (tmp_path / "bad.pth").write_text("not a checkpoint")
    code, _, err = run(capsys, "import-tutorial", tmp_path / "bad.pth", "--out", tmp_path / "other")
    one_line_error(code, err, "scoreops: error:", "cannot read", "bad.pth")
    assert not (tmp_path / "other").exists()


def test_missing_checkpoint_is_one_line_error(tmp_path, capsys):
    code, _, err = run(capsys, "sample", "--checkpoint", tmp_path / "nowhere", "--out", tmp_path / "o")
    one_line_error(code, err, "scoreops: error:", "no checkpoint", "nowhere")


def test_unknown_sampler_is_one_line_error(tiny_run, tmp_path, capsys):
    code, _, err = run(capsys, "sample", "--checkpoint", tiny_run, "--sampler", "rk4", "--out", tmp_path)
    one_line_error(code, err, "--sampler", "rk4")
    code, _, err = run(capsys, "compare", "--checkpoint", tiny_run, "--samplers", "em,rk4", "--out", tmp_path)
    one_line_error(code, err, "rk4")


def test_unwritable_output_folder_is_one_line_error(tiny_run, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, _, err = run(capsys, "sample", "--checkpoint", tiny_run, "--out", blocker / "out")
    one_line_error(code, err, "scoreops: error:", "cannot write to the output folder", str(blocker / "out"))


def test_missing_data_set_is_one_line_error(tmp_path, capsys):
    code, _, err = run(capsys, "train", "--dataset", "mnist", "--data-dir", tmp_path / "empty", "--steps", 1,
                       "--out", tmp_path / "run")
    one_line_error(code, err, "scoreops: error:", "mnist not found")
    code, _, err = run(capsys, "train", "--dataset", "folder", "--data-dir", tmp_path / "none", "--steps", 1,
                       "--out", tmp_path / "run")
    one_line_error(code, err, "scoreops: error:", "does not exist")


def test_console_process_exits_2_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "scoreops", "figures", "--checkpoint", str(tmp_path / "missing"),
                           "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    one_line_error(proc.returncode, proc.stderr, "scoreops: error:", "no checkpoint")
    assert not (tmp_path / "out").exists()


def test_ito_milstein_samples_are_named_apart_with_their_settings(tiny_run, tmp_path, capsys):
    for correction in ("time", "ito"):
        code, stdout, _ = run(capsys, "sample", "--checkpoint", tiny_run, "--sampler", "milstein", "--steps", 3,
                              "--correction", correction, "--num-samples", 2, "--device", "cpu", "--out", tmp_path)
        assert code == 0
    with safe_open(tmp_path / "samples-milstein-ito-3.safetensors", "pt") as f:
        assert f.metadata()["correction"] == "ito" and f.metadata()["raw_weights"] == "False"
    with safe_open(tmp_path / "samples-milstein-3.safetensors", "pt") as f:
        assert f.metadata()["correction"] == "time"


@pytest.mark.parametrize("command", ["sample", "figures", "compare"])
def test_negative_seed_is_refused(tiny_run, tmp_path, capsys, command):
    code, _, err = run(capsys, command, "--checkpoint", tiny_run, "--seed", -1, "--out", tmp_path)
    one_line_error(code, err, "--seed", "a seed >= 0")


def test_a_relative_data_dir_is_stored_absolute(tmp_path, capsys, monkeypatch):
    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(20):
        Image.fromarray((torch.rand(12, 12, 3) * 255).byte().numpy()).save(images / f"{i}.png")
    monkeypatch.chdir(tmp_path)
    code, _, _ = run(capsys, "train", *TINY, "--dataset", "folder", "--data-dir", "imgs", "--steps", 1,
                     "--out", "run")
    assert code == 0
    _, config = load_model(tmp_path / "run")
    assert config["data_dir"] == str(images.resolve())


def test_commands_that_do_not_split_their_work_refuse_torchrun(tiny_run, tmp_path, capsys, monkeypatch):
    # What torchrun sets in each process it starts.
    for name, value in {"TORCHELASTIC_RUN_ID": "test", "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(name, value)
    code, _, err = run(capsys, "figures", "--checkpoint", tiny_run, "--out", tmp_path)
    one_line_error(code, err, "scoreops: error (rank 1):", "runs in one process")


def test_bad_training_option_leaves_no_output_folder(tmp_path, capsys):
    code, _, err = run(capsys, "train", "--steps", -5, "--out", tmp_path / "x")
    one_line_error(code, err, "scoreops: error:", "steps must be an int >= 1")
    assert not (tmp_path / "x").exists()


def test_unknown_option_points_to_its_commands_help(tiny_run, tmp_path, capsys):
    code, _, err = run(capsys, "sample", "--checkpoint", tiny_run, "--sampels", 3, "--out", tmp_path)
    one_line_error(code, err, "scoreops sample: error: unrecognized arguments: --sampels 3",
                   "see scoreops sample --help")
    code, _, err = run(capsys, "train", "--ema-decay", 2, "--out", tmp_path / "x")
    one_line_error(code, err, "ema_decay must be in [0, 1)")


# --------------------------------------------------------------------------- threads
def test_the_default_thread_count(monkeypatch):
    monkeypatch.setattr(cli, "usable_cpus", lambda: 6)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cli.cpu_threads(None) == (3, "OMP_NUM_THREADS")
    assert cli.cpu_threads(5) == (5, "--threads")
    monkeypatch.setenv("OMP_NUM_THREADS", "4,2")  # OpenMP's per-level list: the outer level counts
    assert cli.cpu_threads(None)[0] == 4
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert cli.cpu_threads(None) == (6, "the 6 CPUs this process may use")
    # Under torchrun (as it sets the environment) the CPUs are shared by the machine's processes.
    for name, value in {"TORCHELASTIC_RUN_ID": "test", "RANK": "1", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "4",
                        "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(name, value)
    assert cli.cpu_threads(None) == (1, "6 CPUs / 4 processes")
    monkeypatch.setenv("OMP_NUM_THREADS", "two")
    with pytest.raises(ValueError, match="OMP_NUM_THREADS='two' is not a positive thread count"):
        cli.cpu_threads(None)


@pytest.mark.parametrize("cpu_max,cpus", [("max 100000\n", 8), ("300000 100000\n", 3), ("50000 100000\n", 1),
                                          (None, 8)])
def test_usable_cpus_heed_affinity_and_a_container_quota(tmp_path, monkeypatch, cpu_max, cpus):
    monkeypatch.setattr(cli.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(cli, "CGROUP_CPU_MAX", tmp_path / "cpu.max")
    if cpu_max is not None:
        (tmp_path / "cpu.max").write_text(cpu_max)
    assert cli.usable_cpus() == cpus


def test_a_command_runs_with_its_thread_count_and_restores_torchs(tmp_path, capsys, monkeypatch):
    from scoreops.training import train

    seen = []
    monkeypatch.setattr(train, "train", lambda config: seen.append(torch.get_num_threads()))
    monkeypatch.setattr(cli, "usable_cpus", lambda: 5)
    monkeypatch.setattr(cli.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    before = torch.get_num_threads()
    for argv, omp, threads, why in (([], "3", 3, "(OMP_NUM_THREADS; --threads to change)"),
                                    (["--threads", 2], "3", 2, "(--threads)"),
                                    ([], None, 5, "(the 5 CPUs this process may use; --threads to change)")):
        monkeypatch.setenv("OMP_NUM_THREADS", omp) if omp else monkeypatch.delenv("OMP_NUM_THREADS")
        code, stdout, _ = run(capsys, "train", *argv, "--out", tmp_path)
        assert code == 0 and stdout.startswith(f"threads: {threads} {why}\n") and seen[-1] == threads
        assert torch.get_num_threads() == before
    code, _, err = run(capsys, "sample", "--checkpoint", tmp_path, "--threads", 0, "--out", tmp_path)
    one_line_error(code, err, "--threads", "a positive thread count such as 1")


def test_a_busy_machine_gets_a_hint_towards_one_thread(monkeypatch):
    monkeypatch.setattr(cli.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(cli.os, "getloadavg", lambda: (5.4, 4.0, 3.0))
    assert "load 5.4 on 2 CPUs: --threads 1" in cli._busy_hint(2)
    assert cli._busy_hint(1) == "; --threads to change"  # one thread already
    monkeypatch.setattr(cli.os, "getloadavg", lambda: (0.5, 0.5, 0.5))
    assert cli._busy_hint(2) == "; --threads to change"


# --------------------------------------------------------------------------- small faults
@pytest.mark.parametrize("command,option,bad,expected", [
    ("sample", "--snr", "-1", "a positive signal-to-noise ratio such as 0.16"),
    ("sample", "--snr", "inf", "a positive signal-to-noise ratio such as 0.16"),
    ("sample", "--tol", "0", "a positive tolerance such as 1e-5"),
    ("sample", "--tol", "nan", "a positive tolerance such as 1e-5"),
    ("sample", "--num-samples", "0", "a positive number of samples such as 64"),
    ("sample", "--steps", "1", "a step count of at least 2 such as 500"),
    ("sample", "--seed", "-1", "a seed >= 0 such as 0"),
    ("sample", "--threads", "1.5", "a positive thread count such as 1"),
    ("figures", "--milstein-steps", "500,1", "comma-separated step counts of at least 2 such as 100,500"),
    ("compare", "--ode-tols", "1e-3,-1", "comma-separated positive tolerances such as 1e-3,1e-5"),
    ("compare", "--classifier-epochs", "0", "a positive number of epochs such as 20"),
    ("demo", "--train-steps", "0", "a positive number of training steps such as 4000"),
    ("train", "--channels", "8,x", "comma-separated positive channel counts such as 32,64,128"),
])
def test_a_bad_number_is_refused_with_an_example_that_fits_its_option(capsys, command, option, bad, expected):
    required = ["--checkpoint", "run"] if command in ("sample", "figures", "compare") else []
    code, _, err = run(capsys, command, *required, option, bad)
    one_line_error(code, err, f"argument {option}: expected {expected}, got {bad!r}")
    example = expected.rpartition(" such as ")[2]
    args = build_parser().parse_args([command, *required, option, example])  # the example is accepted
    assert getattr(args, option.lstrip("-").replace("-", "_")) is not None


@pytest.mark.parametrize("name", ["loss.csv", "loss.png", "notes.txt"])
def test_a_file_that_is_not_a_checkpoint_is_refused(tiny_run, tmp_path, capsys, name):
    path = tiny_run / name
    if not path.exists():
        path = tmp_path / name
        path.write_text("step,loss\n")
    code, _, err = run(capsys, "sample", "--checkpoint", path, "--out", tmp_path / "o")
    one_line_error(code, err, "scoreops: error:", f"{path} is not a scoreops checkpoint")
    assert not (tmp_path / "o").exists()


def test_a_checkpoints_own_file_names_its_checkpoint_and_a_stray_copy_is_refused(tiny_run, tmp_path, capsys):
    from scoreops.training.checkpoint import CheckpointError, resolve_checkpoint

    (step,) = (tiny_run / "checkpoints").iterdir()
    for name in ("model.safetensors", "config.json", "state.json"):
        assert resolve_checkpoint(step / name) == step
    shutil.copy(step / "model.safetensors", tmp_path)  # its folder holds no state.json
    with pytest.raises(CheckpointError, match="is not a scoreops checkpoint"):
        resolve_checkpoint(tmp_path / "model.safetensors")
