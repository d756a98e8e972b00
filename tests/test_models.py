"""ScoreNet: the tutorial architecture written out by hand (and its checkpoint imported), parameter
counts from layer shapes, output shapes over the supported sizes, the activations, and bad input."""
import functools
import math
import re

import numpy as np
import pytest
import scipy.special
import torch
from tutorial_net import tutorial_forward, tutorial_state

from scoreops.sde import marginal_prob_std
from scoreops.training.checkpoint import CheckpointError, load_model, resolve_checkpoint
from scoreops.training.models import ACTIVATIONS, PRESETS, ScoreNet, make_activation, model_options
from scoreops.training.tutorial_import import import_tutorial

STD = functools.partial(marginal_prob_std, sigma=25.0)


def _net(preset, in_channels=1, **overrides):
    return ScoreNet(STD, **model_options(preset, in_channels=in_channels, **overrides))


def _trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _tutorial_parameter_count(c_in, embed=256, ch=(32, 64, 128, 256), k=3):
    """The tutorial ScoreNet's parameters, layer by layer (convolutions without bias but the last)."""
    dense = lambda n: embed * n + n  # noqa: E731
    norm = lambda n: 2 * n  # noqa: E731
    layers = [embed * embed + embed,  # embedding Linear (the Fourier W is fixed, not trained)
              c_in * ch[0] * k * k, dense(ch[0]), norm(ch[0]),
              ch[0] * ch[1] * k * k, dense(ch[1]), norm(ch[1]),
              ch[1] * ch[2] * k * k, dense(ch[2]), norm(ch[2]),
              ch[2] * ch[3] * k * k, dense(ch[3]), norm(ch[3]),
              ch[3] * ch[2] * k * k, dense(ch[2]), norm(ch[2]),  # tconv4
              2 * ch[2] * ch[1] * k * k, dense(ch[1]), norm(ch[1]),  # tconv3
              2 * ch[1] * ch[0] * k * k, dense(ch[0]), norm(ch[0]),  # tconv2
              2 * ch[0] * c_in * k * k + c_in]  # tconv1, with bias
    return sum(layers)


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("preset", ["tutorial", "paper"])
def test_parameter_count_matches_layer_shapes(preset, in_channels):
    # The paper's changes (padding, tanh) leave every layer shape as in the tutorial.
    assert _trainable(_net(preset, in_channels)) == _tutorial_parameter_count(in_channels)


def test_digits_preset_parameter_count():
    e, (c0, c1, c2) = 128, (32, 64, 128)
    want = (e * e + e + c0 * 9 + c0 * 9 * c1 + c1 * 9 * c2 + c2 * 9 * c1 + 2 * c1 * 9 * c0 + 2 * c0 * 9 + 1
            + sum(e * c + c + 2 * c for c in (c0, c1, c2, c1, c0)))
    assert _trainable(_net("digits")) == want


@pytest.mark.parametrize("prefix", ["", "module."])  # the tutorial saves its DataParallel wrapper's keys
def test_the_tutorial_checkpoint_imports_as_the_tutorial_network(tmp_path, prefix):
    seed = int(torch.randint(0, 2**31, ()))
    state, sigma = tutorial_state(seed), 10.0
    torch.save({prefix + k: v for k, v in state.items()}, tmp_path / "ckpt.pth")
    folder = import_tutorial(tmp_path / "ckpt.pth", tmp_path / "run", sigma=sigma)
    assert resolve_checkpoint(tmp_path / "run") == folder
    x, t = torch.randn(3, 1, 28, 28), torch.rand(3) * 0.99 + 0.01
    want = tutorial_forward(state, x, t, sigma)
    for ema in (True, False):
        net, config = load_model(tmp_path / "run", ema=ema)
        assert (config["in_channels"], config["image_size"], config["sigma"], config["dataset"]) == (1, 28, sigma,
                                                                                                      "mnist")
        with torch.no_grad():
            torch.testing.assert_close(net(x, t), want, rtol=1e-4, atol=1e-4, msg=lambda m: f"{m} (seed {seed})")


def _edited(state, drop=(), **extra):
    return {**{k: v for k, v in state.items() if k not in drop}, **extra}


@pytest.mark.parametrize("content,error", [
    (lambda s: _edited(s, drop=["gnorm2.bias"]), "lacks gnorm2.bias"),
    (lambda s: _edited(s, **{"tconv1.bias": torch.zeros(3)}), "tconv1.bias in"),
    (lambda s: _edited(s, **{"conv1.weight": torch.zeros(32, 3, 3, 3)}), "has shape (32, 3, 3, 3); the tutorial's"),
    (lambda s: _edited(s, **{"head.weight": torch.zeros(1)}), "'head.weight' is not a weight"),
    (lambda s: _edited(s, **{"conv1.weight": [1.0]}), "'conv1.weight' holds a list, not a float tensor"),
    (lambda s: _edited(s, **{"conv1.bias": torch.zeros(32)}), "conv1.bias is not a weight"),
    (lambda s: {**s, 0: torch.zeros(1)}, "0 is not a weight"),
    (lambda s: _edited(s, **{"gnorm1.weight": torch.ones(32, dtype=torch.int64)}), "holds a torch.int64"),
    (lambda s: _edited(s, **{"dense2.dense.bias": torch.full((64,), math.nan)}), "holds NaN or Inf"),
    (lambda s: _edited(s, **{"module.conv1.weight": s["conv1.weight"]}), "given twice"),
    (lambda s: torch.zeros(3), "holds a Tensor, not a state_dict"),
    (lambda s: b"not a checkpoint", "cannot read"),
    (lambda s: b"", "cannot read"),
    (lambda s: functools.partial(print), "cannot read"),  # weights_only refuses to unpickle code
])
def test_a_file_that_is_not_the_tutorial_checkpoint_is_refused(tmp_path, content, error):
    obj = content(tutorial_state(0))
    if isinstance(obj, bytes):
        (tmp_path / "ckpt.pth").write_bytes(obj)
    else:
        torch.save(obj, tmp_path / "ckpt.pth")
    with pytest.raises(CheckpointError, match=re.escape(error)) as refused:
        import_tutorial(tmp_path / "ckpt.pth", tmp_path / "run")
    assert len(str(refused.value)) < 200 + len(str(tmp_path)), "one short line, not torch.load's page of advice"
    assert not (tmp_path / "run").exists()


def test_importing_keeps_an_existing_run_and_a_bad_sigma_out(tmp_path):
    with pytest.raises(CheckpointError, match="no file"):
        import_tutorial(tmp_path / "ckpt.pth", tmp_path / "run")
    with pytest.raises(CheckpointError, match="is a directory"):
        import_tutorial(tmp_path, tmp_path / "run")
    torch.save(tutorial_state(1), tmp_path / "ckpt.pth")
    with pytest.raises(ValueError, match="sigma"):
        import_tutorial(tmp_path / "ckpt.pth", tmp_path / "run", sigma=1.0)
    folder = import_tutorial(tmp_path / "ckpt.pth", tmp_path / "run")
    before = (folder / "model.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="already holds checkpoints"):
        import_tutorial(tmp_path / "ckpt.pth", tmp_path / "run")
    assert (folder / "model.safetensors").read_bytes() == before


def test_tutorial_preset_groups_as_the_tutorial():
    net = _net("tutorial")
    assert [m.norm.num_groups for m in net.down] == [4, 32, 32, 32]
    assert [m.norm.num_groups for m in net.up] == [32, 32, 32]


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 1e-2), (torch.bfloat16, 8e-2), (torch.float64, 1e-5)])
def test_a_net_in_another_dtype_takes_float32_times_and_answers_in_its_dtype(dtype, tol):
    # The samplers pass t in float32 whatever x's dtype; the embedding is made in float32.
    net = _net("digits", channels=[8, 16], embed_dim=16).eval()
    x, t = torch.randn(3, 1, 8, 8), torch.rand(3) * 0.9 + 0.1
    with torch.no_grad():
        want = net(x, t)
        got = net.to(dtype)(x.to(dtype), t)
    assert got.dtype == dtype
    torch.testing.assert_close(got.double(), want.double(), rtol=tol, atol=tol * want.abs().max().item())


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("preset,sizes", [("tutorial", [17, 28, 32]), ("paper", [8, 13, 28, 32]),
                                          ("digits", [8, 9, 16, 31])])
def test_output_shape_equals_input_shape(preset, sizes, in_channels):
    net = _net(preset, in_channels)
    t = torch.rand(2)
    with torch.no_grad():
        for h in sizes:
            for w in (h, sizes[-1]):
                x = torch.randn(2, in_channels, h, w)
                out = net(x, t)
                assert out.shape == x.shape and torch.isfinite(out).all()


def test_output_is_divided_by_marginal_std():
    net = _net("digits")
    x, t = torch.randn(4, 1, 16, 16), torch.rand(4) * 0.9 + 0.1
    with torch.no_grad():
        scaled = net(x, t)
        net.marginal_prob_std = torch.ones_like
        torch.testing.assert_close(scaled * STD(t)[:, None, None, None], net(x, t))


def test_presets_as_described():
    assert PRESETS["paper"]["padding"] == 1 and PRESETS["paper"]["activation"] == "tanh"
    assert PRESETS["paper"]["embed_dim"] == 256 and PRESETS["paper"]["kernel_size"] == 3
    assert PRESETS["tutorial"]["padding"] == 0 and PRESETS["tutorial"]["activation"] == "swish"
    assert list(PRESETS["tutorial"]["channels"]) == [32, 64, 128, 256]
    assert isinstance(_net("paper").act, torch.nn.Tanh)
    # Options override the preset; None keeps the preset's value.
    opts = model_options("paper", channels=[16, 32], activation="gelu", embed_dim=None)
    assert opts["channels"] == [16, 32] and opts["activation"] == "gelu" and opts["embed_dim"] == 256


def test_activations_match_their_formulas():
    x = torch.randn(1000, dtype=torch.float64) * 3
    want = {"swish": x * torch.sigmoid(x), "tanh": torch.from_numpy(np.tanh(x.numpy())),
            "erf": torch.from_numpy(0.5 * (1 + scipy.special.erf(x.numpy()))),
            "gelu": torch.from_numpy(0.5 * x.numpy() * (1 + scipy.special.erf(x.numpy() / math.sqrt(2))))}
    for name in ACTIVATIONS:
        torch.testing.assert_close(make_activation(name)(x), want[name])
        net = _net("digits", activation=name, channels=[8, 16], embed_dim=16)
        with torch.no_grad():
            assert torch.isfinite(net(torch.randn(2, 1, 8, 8), torch.rand(2))).all()


def test_fourier_embedding_is_fixed_and_matches_formula():
    net = _net("digits")
    proj = net.embed[0]
    assert "W" in dict(proj.named_buffers()) and "embed.0.W" in net.state_dict()
    assert not any(p is proj.W for p in net.parameters())
    t = torch.rand(5)
    angle = 2 * math.pi * t.double()[:, None] * proj.W.double()[None, :]
    # Angles reach 2 pi * 30 * 3 sigma ~ 600 rad, where a float32 ulp is 6e-5.
    torch.testing.assert_close(proj(t).double(), torch.cat([angle.sin(), angle.cos()], 1), rtol=0, atol=2e-4)


def test_gradients_reach_every_trainable_parameter():
    net = _net("paper", 3)
    net(torch.randn(2, 3, 16, 16), torch.rand(2)).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="preset"):
        model_options("unet")
    with pytest.raises(ValueError, match="activation"):
        _net("digits", activation="relu")
    with pytest.raises(TypeError, match="unknown ScoreNet options"):
        model_options("digits", depth=3)
    with pytest.raises(TypeError, match="marginal_prob_std"):
        ScoreNet(25.0)
    with pytest.raises(ValueError, match="channels"):
        ScoreNet(STD, channels=[32])
    with pytest.raises(ValueError, match="even"):
        ScoreNet(STD, embed_dim=15)
    tutorial = _net("tutorial")
    assert tutorial.min_image_size() == 17
    with pytest.raises(ValueError, match="at least 17x17"):
        tutorial(torch.randn(2, 1, 16, 16), torch.rand(2))
    with pytest.raises(ValueError, match=r"shape \(B, 1, H, W\)"):
        tutorial(torch.randn(2, 3, 28, 28), torch.rand(2))
    for t in (torch.rand(()), 0.5):
        with pytest.raises(ValueError, match=r"t must be a tensor of shape \(2,\)"):
            tutorial(torch.randn(2, 1, 28, 28), t)
