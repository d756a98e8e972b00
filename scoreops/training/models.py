"""Time-conditioned U-Net score model of the well-known score-based-model tutorial, generalised.

``ScoreNet`` keeps the tutorial's design: a Gaussian Fourier embedding of t, a dense projection of
it added in every block, GroupNorm, skip connections from each encoder level to the decoder, and
an output divided by ``marginal_prob_std(t)`` so that the network only has to learn a score of
unit scale. The first level keeps the resolution (stride 1), every further level halves it
(stride 2); the decoder asks each transposed convolution for the exact size of its skip
connection, so any input size the encoder can reduce (odd ones such as 28 included) comes back
at its own shape.

Presets (:data:`PRESETS`):
    ``tutorial``  the tutorial's ScoreNet for 28x28 MNIST: channels 32, 64, 128, 256, embedding
                  256, unpadded 3x3 convolutions, swish.
    ``paper``     the seed paper's changes to it: padded "3,1,1" convolutions (kernel 3,
                  padding 1), a 256-dimensional embedding, tanh.
    ``digits``    a small net for the embedded 8x8 digits (shown at 16x16) that trains in
                  minutes on a CPU: channels 32, 64, 128, embedding 128, padded 3x3, swish.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import nn

ACTIVATIONS = ("swish", "tanh", "erf", "gelu")

PRESETS: dict[str, dict] = {
    "tutorial": dict(channels=(32, 64, 128, 256), embed_dim=256, kernel_size=3, padding=0, activation="swish"),
    "paper": dict(channels=(32, 64, 128, 256), embed_dim=256, kernel_size=3, padding=1, activation="tanh"),
    "digits": dict(channels=(32, 64, 128), embed_dim=128, kernel_size=3, padding=1, activation="swish"),
}


class ErfActivation(nn.Module):
    """``1/2 * (1 + erf(x))``, the Gaussian CDF-like activation the seed paper tried."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (1.0 + torch.erf(x))


def make_activation(name: str) -> nn.Module:
    """The activation module called ``name``, one of :data:`ACTIVATIONS`."""
    factories = {"swish": nn.SiLU, "tanh": nn.Tanh, "erf": ErfActivation, "gelu": nn.GELU}
    if name not in factories:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")
    return factories[name]()


def model_options(preset: str = "tutorial", **overrides) -> dict:
    """The full ScoreNet options of ``preset`` with ``overrides`` (those not None) applied.

    The result holds every constructor argument except ``marginal_prob_std``, so it can be stored
    as JSON and passed back as ``ScoreNet(std, **options)``.
    """
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {tuple(PRESETS)}, got {preset!r}")
    unknown = set(overrides) - set(PRESETS[preset]) - {"in_channels"}
    if unknown:
        raise TypeError(f"unknown ScoreNet options: {sorted(unknown)}")
    options = dict(in_channels=1, **PRESETS[preset])
    options.update({k: v for k, v in overrides.items() if v is not None})
    options["channels"] = [int(c) for c in options["channels"]]
    return options


class GaussianFourierProjection(nn.Module):
    """Random Fourier features of a scalar time: ``[sin(2 pi W t), cos(2 pi W t)]``.

    Args:
        embed_dim: output size (even).
        scale: standard deviation of the fixed random frequencies W.
    """

    def __init__(self, embed_dim: int, scale: float = 30.0):
        super().__init__()
        if embed_dim <= 0 or embed_dim % 2:
            raise ValueError(f"embed_dim must be a positive even number, got {embed_dim}")
        # Fixed, not trained; a buffer so it is saved with the weights but not optimised.
        self.register_buffer("W", torch.randn(embed_dim // 2) * scale)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """``t``: (B,) times -> (B, embed_dim) features."""
        # In at least float32 (t W reaches hundreds of radians), then in the weights' dtype.
        dtype = torch.promote_types(self.W.dtype, torch.float32)
        proj = t[:, None].to(dtype) * self.W[None, :].to(dtype) * (2 * math.pi)
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1).to(self.W.dtype)


def _groups(channels: int, preferred: int) -> int:
    """GroupNorm group count: ``preferred`` (the tutorial's 4 or 32) where it divides ``channels``."""
    return math.gcd(channels, preferred)


class _Block(nn.Module):
    """conv -> + dense(embedding) -> GroupNorm -> activation, the tutorial's unit."""

    def __init__(self, conv: nn.Module, out_channels: int, embed_dim: int, groups: int, act: nn.Module):
        super().__init__()
        self.conv = conv
        self.dense = nn.Linear(embed_dim, out_channels)
        self.norm = nn.GroupNorm(_groups(out_channels, groups), out_channels)
        self.act = act

    def forward(self, x: torch.Tensor, embed: torch.Tensor, output_size=None) -> torch.Tensor:
        h = self.conv(x) if output_size is None else self.conv(x, output_size=output_size)
        return self.act(self.norm(h + self.dense(embed)[:, :, None, None]))


class ScoreNet(nn.Module):
    """Time-conditioned U-Net that estimates the score ``grad_x log p_t(x)``.

    Args:
        marginal_prob_std: callable mapping times t of shape (B,) to the perturbation kernel's
            standard deviation, shape (B,); the output is divided by it.
        in_channels: image channels (1 or 3 for the bundled data sets; any positive number).
        channels: feature channels per level, at least two levels; level 0 keeps the
            resolution, each further level halves it.
        embed_dim: size of the time embedding (even).
        kernel_size: convolution kernel size.
        padding: convolution padding (0 = the tutorial's unpadded convs, 1 = the paper's).
        activation: one of :data:`ACTIVATIONS`.

    ``forward(x, t)``: ``x`` (B, in_channels, H, W), ``t`` (B,) in (0, 1] -> score of x's shape.
    """

    def __init__(self, marginal_prob_std: Callable[[torch.Tensor], torch.Tensor], in_channels: int = 1,
                 channels: Sequence[int] = (32, 64, 128, 256), embed_dim: int = 256, kernel_size: int = 3,
                 padding: int = 0, activation: str = "swish"):
        super().__init__()
        if not callable(marginal_prob_std):
            raise TypeError("marginal_prob_std must be a callable t -> std(t)")
        channels = [int(c) for c in channels]
        if len(channels) < 2 or min(channels) <= 0:
            raise ValueError(f"channels must list at least two positive sizes, got {channels}")
        if in_channels <= 0:
            raise ValueError(f"in_channels must be positive, got {in_channels}")
        if kernel_size <= 0 or not 0 <= padding < kernel_size:
            raise ValueError(f"need kernel_size > 0 and 0 <= padding < kernel_size, got {kernel_size}, {padding}")
        self.marginal_prob_std = marginal_prob_std
        self.in_channels = in_channels
        self.kernel_size, self.padding = kernel_size, padding
        self.strides = [1] + [2] * (len(channels) - 1)
        self.act = make_activation(activation)
        self.embed = nn.Sequential(GaussianFourierProjection(embed_dim), nn.Linear(embed_dim, embed_dim))

        def conv(cin, cout, stride):
            return nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=False)

        def tconv(cin, cout, stride, bias=False):
            return nn.ConvTranspose2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=bias)

        # Encoder: GroupNorm(4) at the first level and GroupNorm(32) below it, as in the tutorial.
        self.down = nn.ModuleList(
            _Block(conv(cin, cout, stride), cout, embed_dim, 4 if i == 0 else 32, self.act)
            for i, (cin, cout, stride) in enumerate(zip([in_channels] + channels[:-1], channels, self.strides)))
        # Decoder, deepest level first: every level but the deepest also takes its skip connection.
        self.up = nn.ModuleList(
            _Block(tconv(channels[i] * (1 if i == len(channels) - 1 else 2), channels[i - 1], self.strides[i]),
                   channels[i - 1], embed_dim, 32, self.act)
            for i in range(len(channels) - 1, 0, -1))
        self.final = tconv(2 * channels[0], in_channels, 1, bias=True)

    def level_sizes(self, size: int) -> list[int]:
        """Spatial size at the output of each encoder level for an input of side ``size``."""
        sizes = []
        for stride in self.strides:
            size = (size + 2 * self.padding - self.kernel_size) // stride + 1
            sizes.append(size)
        return sizes

    def min_image_size(self) -> int:
        """The smallest input side the encoder can reduce to at least 1x1 at every level."""
        size = 1
        while min(self.level_sizes(size)) < 1:
            size += 1
        return size

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ValueError if ``x`` is not a (B, in_channels, H, W) batch this net can take."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if min(self.level_sizes(min(x.shape[-2:]))) < 1:
            raise ValueError(f"image size {tuple(x.shape[-2:])} is too small for this ScoreNet "
                             f"(kernel {self.kernel_size}, padding {self.padding}, {len(self.strides)} levels); "
                             f"it needs at least {self.min_image_size()}x{self.min_image_size()}")

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        if not isinstance(t, torch.Tensor) or t.shape != x.shape[:1]:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"t must be a tensor of shape ({x.shape[0]},), one time per sample, got {got}")
        embed = self.act(self.embed(t))
        skips = []
        h = x
        for block in self.down:
            h = block(h, embed)
            skips.append(h)
        h = skips.pop()
        for block in self.up:
            skip = skips.pop()
            h = torch.cat([block(h, embed, output_size=skip.shape[-2:]), skip], dim=1)
        h = self.final(h, output_size=x.shape[-2:])
        return h / self.marginal_prob_std(t)[:, None, None, None].to(h.dtype)
