"""Test helper: the tutorial's MNIST ScoreNet as its ``state_dict`` names and shapes, and its
forward pass written in the functional API on those named weights, independent of scoreops.training.models."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# The tutorial ScoreNet's state_dict: (name, shape) of every tensor, for MNIST (1 channel).
TUTORIAL_SHAPES = [("embed.0.W", (128,)), ("embed.1.weight", (256, 256)), ("embed.1.bias", (256,))]
for _i, (_cin, _cout) in enumerate([(1, 32), (32, 64), (64, 128), (128, 256)], start=1):
    TUTORIAL_SHAPES += [(f"conv{_i}.weight", (_cout, _cin, 3, 3)), (f"dense{_i}.dense.weight", (_cout, 256)),
                         (f"dense{_i}.dense.bias", (_cout,)), (f"gnorm{_i}.weight", (_cout,)),
                         (f"gnorm{_i}.bias", (_cout,))]
for _level, _dense, _cin, _cout in [(4, 5, 256, 128), (3, 6, 256, 64), (2, 7, 128, 32)]:
    TUTORIAL_SHAPES += [(f"tconv{_level}.weight", (_cin, _cout, 3, 3)), (f"dense{_dense}.dense.weight", (_cout, 256)),
                         (f"dense{_dense}.dense.bias", (_cout,)), (f"tgnorm{_level}.weight", (_cout,)),
                         (f"tgnorm{_level}.bias", (_cout,))]
TUTORIAL_SHAPES += [("tconv1.weight", (64, 1, 3, 3)), ("tconv1.bias", (1,))]


def tutorial_state(seed):
    """Random weights under the tutorial's names, scaled so that activations stay of order one."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in TUTORIAL_SHAPES:
        w = torch.randn(shape, generator=g)
        if name == "embed.0.W":
            w = w * 30
        elif "norm" in name:
            w = (1 if name.endswith("weight") else 0) + 0.1 * w
        elif len(shape) > 1:
            w = w / math.sqrt(math.prod(shape[1:]) if name.startswith(("conv", "dense", "embed")) else shape[0] * 9)
        state[name] = w
    return state


def tutorial_forward(w, x, t, sigma):
    """The tutorial's ScoreNet.forward on 28x28, in the functional API on its named weights ``w``."""
    act = lambda v: v * torch.sigmoid(v)  # noqa: E731
    proj = t[:, None] * w["embed.0.W"][None, :] * 2 * math.pi
    embed = act(F.linear(torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1), w["embed.1.weight"], w["embed.1.bias"]))

    def block(h, dense, norm, groups):
        h = h + F.linear(embed, w[f"{dense}.dense.weight"], w[f"{dense}.dense.bias"])[..., None, None]
        return act(F.group_norm(h, groups, w[f"{norm}.weight"], w[f"{norm}.bias"]))

    h1 = block(F.conv2d(x, w["conv1.weight"]), "dense1", "gnorm1", 4)
    h2 = block(F.conv2d(h1, w["conv2.weight"], stride=2), "dense2", "gnorm2", 32)
    h3 = block(F.conv2d(h2, w["conv3.weight"], stride=2), "dense3", "gnorm3", 32)
    h4 = block(F.conv2d(h3, w["conv4.weight"], stride=2), "dense4", "gnorm4", 32)
    h = block(F.conv_transpose2d(h4, w["tconv4.weight"], stride=2), "dense5", "tgnorm4", 32)
    h = block(F.conv_transpose2d(torch.cat([h, h3], 1), w["tconv3.weight"], stride=2, output_padding=1),
              "dense6", "tgnorm3", 32)
    h = block(F.conv_transpose2d(torch.cat([h, h2], 1), w["tconv2.weight"], stride=2, output_padding=1),
              "dense7", "tgnorm2", 32)
    h = F.conv_transpose2d(torch.cat([h, h1], 1), w["tconv1.weight"], w["tconv1.bias"])
    std = torch.sqrt((sigma ** (2 * t) - 1) / (2 * math.log(sigma)))
    return h / std[:, None, None, None]
