"""Training on the CPU: the loss, the loss falling on digits, kill-and-resume equality,
checkpoints (atomic, verified, refused when corrupt or mismatched) and bad input."""
import argparse
import ast
import csv
import errno
import functools
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import scoreops.training.train as train_mod
from scoreops.training import checkpoint as ckpt
from scoreops.cli import add_train_options, train_config
from scoreops.training.data import load_images
from scoreops.sde import marginal_prob_std
from scoreops.training.train import dsm_loss

# A tiny net on the native 8x8 digits: a step takes milliseconds. A later option overrides these.
TINY = ["--dataset", "digits", "--image-size", "8", "--preset", "digits", "--channels", "8,16", "--embed-dim", "16",
        "--batch-size", "16", "--device", "cpu"]


def train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_train_options(parser)
    return parser


def train_argv(argv):
    """``scoreops train <argv>`` without the command line's error handling: returns the final
    checkpoint and lets errors raise."""
    return train_mod.train(train_config(train_parser().parse_args(argv)))


def _run(out, *extra):
    return train_argv(TINY + ["--out", str(out), *extra])


def _losses(run_dir):
    with open(run_dir / "loss.csv", newline="") as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]


def test_dsm_loss_matches_formula():
    x = torch.rand(6, 1, 5, 7)
    std = functools.partial(marginal_prob_std, sigma=25.0)
    weight = torch.randn(1, 5, 7)
    model = lambda xt, t: weight * xt - t[:, None, None, None]  # noqa: E731
    eps = 0.2
    loss = dsm_loss(model, x, std, eps=eps, generator=torch.Generator().manual_seed(7))
    # The same draws: t first, then z, from the generator.
    g = torch.Generator().manual_seed(7)
    t = (torch.rand(6, generator=g) * (1 - eps) + eps).double()
    z = torch.randn(x.shape, generator=g).double()
    x, w = x.double(), weight.double()
    want = 0.0
    for i in range(6):
        s_i = np.sqrt((25.0 ** (2 * t[i].item()) - 1) / (2 * np.log(25.0)))
        score = w * (x[i] + s_i * z[i]) - t[i]
        want += ((score * s_i + z[i]) ** 2).sum().item() / 6
    assert loss.dim() == 0 and loss.dtype == torch.float32
    assert abs(loss.item() - want) <= 1e-5 * want
    assert t.min() >= eps


def test_loss_falls_on_digits(tmp_path):
    final = _run(tmp_path, "--steps", "80", "--save-every", "40")
    losses = [v for _, v in _losses(tmp_path)]
    assert len(losses) == 80 and np.mean(losses[-10:]) < 0.3 * np.mean(losses[:10])
    # Held-out check on fixed noise: the trained EMA net against the same net untrained.
    trained, config = ckpt.load_model(final)
    torch.manual_seed(config["seed"])
    untrained = ckpt.build_model(config)
    x = load_images("digits", image_size=8)[:512]
    with torch.no_grad():
        before, after = (dsm_loss(m, x, trained.marginal_prob_std, generator=torch.Generator().manual_seed(1))
                         for m in (untrained, trained))
    assert after < 0.3 * before
    with Image.open(tmp_path / "loss.png") as png:
        assert png.format == "PNG" and png.size[0] > 100


def test_killed_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    # 1797 // 256 = 7 steps per epoch, so the resumed part crosses into a new epoch.
    args = ("--steps", "10", "--save-every", "3", "--batch-size", "256")
    full = _run(tmp_path / "full", *args)

    calls = 0

    def killed_at_step_8(*a, **k):
        nonlocal calls
        calls += 1
        if calls == 8:
            raise KeyboardInterrupt("killed")
        return dsm_loss(*a, **k)

    monkeypatch.setattr(train_mod, "dsm_loss", killed_at_step_8)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "cut", *args)
    assert ckpt.latest_checkpoint(tmp_path / "cut").name == "step-00000006"
    monkeypatch.undo()
    resumed = _run(tmp_path / "cut", *args, "--resume")

    # Bit for bit: the same data order, noise and optimiser state from the checkpoint on.
    a, b = ckpt.read_checkpoint(full), ckpt.read_checkpoint(resumed)
    assert a.step == b.step == 10 and a.ema_updates == b.ema_updates == 10
    for key in a.model:
        assert torch.equal(b.model[key], a.model[key]) and torch.equal(b.ema[key], a.ema[key]), key
    for key, state in a.optimizer["state"].items():
        for name, value in state.items():
            assert torch.equal(b.optimizer["state"][key][name], value), (key, name)
    assert _losses(tmp_path / "cut") == _losses(tmp_path / "full")


def test_checkpoint_layout_and_load_model(tmp_path):
    final = _run(tmp_path, "--steps", "6", "--save-every", "2")
    assert [s for s, _ in ckpt.checkpoint_steps(tmp_path)] == [4, 6]  # the newest two are kept
    assert sorted(p.name for p in final.iterdir()) == sorted(
        ["model.safetensors", "ema.safetensors", "optim.pt", "state.json", "config.json"])
    model, config = ckpt.load_model(tmp_path)
    for key in ("preset", "channels", "embed_dim", "kernel_size", "padding", "activation", "in_channels",
                "image_size", "sigma", "dataset"):
        assert key in config
    assert (config["dataset"], config["in_channels"], config["image_size"], config["sigma"]) == ("digits", 1, 8, 25.0)
    assert config["channels"] == [8, 16] and not model.training
    ema_weights = load_file(final / "ema.safetensors")
    for key, value in model.state_dict().items():
        assert torch.equal(value, ema_weights[key])
    raw, _ = ckpt.load_model(final / "model.safetensors", ema=False)
    assert any(not torch.equal(raw.state_dict()[k], v) for k, v in ema_weights.items())
    with torch.no_grad():
        assert model(torch.rand(3, 1, 8, 8), torch.rand(3)).shape == (3, 1, 8, 8)


@pytest.mark.parametrize("damage", ["flip", "truncate", "state"])
def test_corrupt_checkpoint_is_refused(tmp_path, damage):
    final = _run(tmp_path, "--steps", "2", "--save-every", "2")
    if damage == "flip":
        data = bytearray((final / "model.safetensors").read_bytes())
        data[-5] ^= 0x40  # one bit in the last weight
        (final / "model.safetensors").write_bytes(bytes(data))
    elif damage == "truncate":
        data = (final / "ema.safetensors").read_bytes()
        (final / "ema.safetensors").write_bytes(data[: len(data) // 2])
    else:
        (final / "state.json").write_text('{"step": 2, "ema_upd')
    with pytest.raises(ckpt.CheckpointError, match="corrupted|cannot read"):
        ckpt.load_model(final)
    with pytest.raises(ckpt.CheckpointError):
        _run(tmp_path, "--steps", "4", "--save-every", "2", "--resume")


def test_mismatched_config_is_refused(tmp_path):
    _run(tmp_path, "--steps", "2", "--save-every", "2")
    with pytest.raises(ckpt.CheckpointError, match="channels: checkpoint \\[8, 16\\], now \\[8, 32\\]"):
        _run(tmp_path, "--channels", "8,32", "--steps", "4", "--resume")
    saved = ckpt.read_checkpoint(tmp_path)
    other = ckpt.build_model({**saved.config, "embed_dim": 32})
    with pytest.raises(ckpt.CheckpointError, match=r"do not fit the model .* weights of another shape, e\.g\. ") as e:
        ckpt.load_weights(other, saved.model, saved.path)
    assert len(str(e.value)) < 400  # one readable line, not load_state_dict's list of every weight
    with pytest.raises(ckpt.CheckpointError, match=r"1 weights missing \(e\.g\. \['"):
        ckpt.load_weights(other, dict(list(other.state_dict().items())[1:]), saved.path)
    with pytest.raises(FileExistsError, match="--resume"):
        _run(tmp_path, "--steps", "4")


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    calls = 0

    def nan_at_step_5(*a, **k):
        nonlocal calls
        calls += 1
        loss = dsm_loss(*a, **k)
        return loss * float("nan") if calls == 5 else loss

    monkeypatch.setattr(train_mod, "dsm_loss", nan_at_step_5)
    with pytest.raises(FloatingPointError, match="at step 5.*step-00000004"):
        _run(tmp_path, "--steps", "8", "--save-every", "2")
    good = ckpt.read_checkpoint(tmp_path)
    assert good.step == 4 and all(torch.isfinite(v).all() for v in good.model.values())
    assert [s for s, _ in _losses(tmp_path)] == [1, 2, 3, 4]


def test_failed_save_leaves_previous_checkpoint(tmp_path, monkeypatch):
    _run(tmp_path, "--steps", "2", "--save-every", "2")
    (tmp_path / "checkpoints" / ".tmp-killed").mkdir()  # as a run killed while saving leaves it

    def disk_full(*a, **k):
        raise OSError("No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", disk_full)
    with pytest.raises(OSError, match="No space"):
        _run(tmp_path, "--steps", "4", "--save-every", "2", "--resume")
    monkeypatch.undo()
    assert [s for s, _ in ckpt.checkpoint_steps(tmp_path)] == [2]
    assert ckpt.read_checkpoint(tmp_path).step == 2
    _run(tmp_path, "--steps", "4", "--save-every", "2", "--resume")
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000002", "step-00000004"]


def test_bf16_autocast_trains(tmp_path):
    _run(tmp_path / "bf16", "--steps", "3", "--save-every", "3", "--bf16")
    _run(tmp_path / "fp32", "--steps", "3", "--save-every", "3")
    bf16, fp32 = ([v for _, v in _losses(tmp_path / run)] for run in ("bf16", "fp32"))
    # The same run in bfloat16: every loss a little different (the flag acts), none far off.
    assert all(np.isfinite(bf16)) and all(a != b for a, b in zip(bf16, fp32, strict=True))
    np.testing.assert_allclose(bf16, fp32, rtol=0.05)
    assert ckpt.read_checkpoint(tmp_path / "bf16").config["bf16"] is True


def test_every_option_has_help_and_default():
    parser = train_parser()
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert {a.dest for a in options} >= {"steps", "batch_size", "lr", "ema_decay", "save_every", "out", "bf16",
                                         "grad_clip", "seed", "resume", "data_dir", "download", "preset",
                                         "image_size", "dataset"}
    for action in options:
        assert action.help and action.default is not argparse.SUPPRESS, action.dest
        # --help shows every default that is a value (None: the preset's or data set's, named in the text).
        if action.default is not None and action.default is not False:
            assert "default" in action.help, action.dest
    args = parser.parse_args([])
    assert args.dataset == "digits" and args.sigma == 25.0 and args.ema_decay == 0.999


def test_bad_options_are_refused(tmp_path):
    with pytest.raises(ValueError, match="steps"):
        _run(tmp_path, "--steps", "0")
    with pytest.raises(ValueError, match="fewer than batch_size"):
        _run(tmp_path, "--batch-size", "5000", "--steps", "1")
    with pytest.raises(ValueError, match="at least 17x17"):
        train_argv(["--dataset", "digits", "--preset", "tutorial", "--device", "cpu", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="sigma"):
        _run(tmp_path, "--sigma", "1")
    for bad in (["--preset", "unet"], ["--activation", "relu"], ["--dataset", "imagenet"], ["--channels", "8,x"]):
        with pytest.raises(SystemExit):
            train_argv(bad)
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint"):
        ckpt.load_model(tmp_path / "empty")


@pytest.mark.parametrize("field,value,match", [
    ("image_size", 0, "image_size must be an int >= 1"), ("dataset", "bogus", "dataset must be one of"),
    ("steps", 2.5, "steps must be an int"), ("seed", -1, "seed must be an int >= 0"),
    ("preset", "unet", "preset must be one of"), ("lr", 0.0, "lr must be positive"),
])
def test_a_config_made_in_python_is_validated_like_the_command_line(tmp_path, field, value, match):
    config = train_mod.TrainConfig(out=str(tmp_path), **{field: value})
    with pytest.raises(ValueError, match=match):
        config.validate()


@pytest.mark.parametrize("eps,x,match", [(-1.0, torch.ones(2, 1, 4, 4), "eps"), (1.0, torch.ones(2, 1, 4, 4), "eps"),
                                         (1e-5, torch.ones(0, 1, 4, 4), "non-empty batch")])
def test_dsm_loss_refuses_what_would_make_it_nan(eps, x, match):
    with pytest.raises(ValueError, match=match):
        dsm_loss(lambda x, t: x, x, functools.partial(marginal_prob_std, sigma=25.0), eps=eps)


def test_load_model_takes_ema_as_a_bool(tmp_path):
    _run(tmp_path, "--steps", "2", "--save-every", "2")
    with pytest.raises(ValueError, match="ema must be True or False"):
        ckpt.load_model(tmp_path, ema="no")


def test_a_step_folder_without_its_state_file_is_not_a_checkpoint(tmp_path):
    _run(tmp_path, "--steps", "2", "--save-every", "2")
    (tmp_path / "checkpoints" / "step-00000009").mkdir()  # not made by a save
    assert ckpt.latest_checkpoint(tmp_path).name == "step-00000002"
    assert ckpt.load_model(tmp_path)[1]["channels"] == [8, 16]
    assert ckpt.read_checkpoint(_run(tmp_path, "--steps", "4", "--save-every", "2", "--resume")).step == 4


def test_a_corrupt_newest_checkpoint_names_the_one_before_it(tmp_path):
    final = _run(tmp_path, "--steps", "4", "--save-every", "2")
    data = bytearray((final / "model.safetensors").read_bytes())
    data[-5] ^= 0x40
    (final / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match="delete .*step-00000004 to use the one before it, step-00000002"):
        ckpt.load_model(tmp_path)


def test_a_second_run_on_the_same_folder_is_refused(tmp_path):
    with ckpt.run_lock(tmp_path):
        with pytest.raises(ckpt.CheckpointError, match="another training run is writing"):
            _run(tmp_path, "--steps", "2")
    _run(tmp_path, "--steps", "2")  # free again once the first run is done


def test_a_file_system_without_locks_trains_unguarded(tmp_path, monkeypatch):
    def no_locks(*args):
        raise OSError(errno.ENOSYS, "Function not implemented")  # e.g. Lustre mounted without flock

    monkeypatch.setattr(ckpt.fcntl, "flock", no_locks)
    assert ckpt.read_checkpoint(_run(tmp_path, "--steps", "2", "--save-every", "2")).step == 2


def test_checkpoints_and_logs_get_the_modes_of_new_files(tmp_path):
    umask = os.umask(0o027)
    try:
        final = _run(tmp_path, "--steps", "2", "--save-every", "2")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(final.stat().st_mode) == 0o750
    assert stat.S_IMODE((tmp_path / "loss.csv").stat().st_mode) == 0o640


def test_non_finite_gradient_stops_before_the_step(tmp_path, monkeypatch):
    """A finite loss whose gradient is NaN (sqrt'(0) * 0) must not reach the weights or a checkpoint."""
    calls = 0

    def nan_gradient_at_step_3(net, *a, **k):
        nonlocal calls
        calls += 1
        loss = dsm_loss(net, *a, **k)
        if calls == 3:
            total = sum(p.sum() for p in net.parameters())
            loss = loss + (total - total.detach()).abs().sqrt()  # adds 0, gradient NaN
        return loss

    monkeypatch.setattr(train_mod, "dsm_loss", nan_gradient_at_step_3)
    with pytest.raises(FloatingPointError, match=r"non-finite gradient norm \(nan\) at step 3.*step-00000002"):
        _run(tmp_path, "--steps", "4", "--save-every", "1")
    good = ckpt.read_checkpoint(tmp_path)
    assert good.step == 2 and all(torch.isfinite(v).all() for v in [*good.model.values(), *good.ema.values()])


def test_the_training_module_leaves_argument_parsing_to_the_command_line():
    """cli.py owns every option: the training module imports neither argparse nor the CLI
    (``python -m scoreops.train`` is an entry above the CLI; lint-imports checks the layers)."""
    tree = ast.parse(Path(train_mod.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported |= {node.module} | {alias.name for alias in node.names}
    assert not {"argparse", "cli"} & imported, imported


def test_python_m_scoreops_train_is_scoreops_train(tmp_path, capsys, monkeypatch):
    from scoreops.cli import main

    monkeypatch.setenv("COLUMNS", "100")  # argparse wraps --help to it
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(train_mod.__file__).parents[2]),
                                                                      os.environ.get("PYTHONPATH")]))}
    entry = subprocess.run([sys.executable, "-m", "scoreops.train", "--help"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120)
    assert main(["train", "--help"]) == 0
    assert entry.returncode == 0 and entry.stdout == capsys.readouterr().out
    assert "--save-rank-weights" in entry.stdout and "--threads" in entry.stdout
    bad = subprocess.run([sys.executable, "-m", "scoreops.train", "--steps", "0", "--out", str(tmp_path / "x")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr == "scoreops: error: steps must be an int >= 1, got 0\n"
