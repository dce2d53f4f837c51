"""A small convolutional network for small images (8x8 digits up to a few dozen pixels a side)."""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

import torch
from torch import nn

from orchestrator.config.models import register

from .mlp import ACTIVATIONS  # the same names as the MLP

# Beyond any network that trains here; a typo such as 1e9 is an error, not a hang.
MAX_BLOCKS = 16
MAX_CHANNELS = 1 << 14  # the widest block (channels * 2 ** (blocks - 1))
MAX_KERNEL = 15
MAX_HIDDEN = 1 << 20
MAX_SIDE = 1 << 16  # pixels per side of the input
MAX_IMAGE_CHANNELS = 1 << 12
# The last feature map is averaged down to at most GRID x GRID positions, then flattened: where
# things are still matters (a global average over an 8x8 digit's 4x4 map after one block loses
# half its accuracy), and a large image does not make the dense layer large.
GRID = 4


def _whole(name: str, value: Any, lo: int, hi: int) -> int:
    """``value`` as an int in [lo, hi] (a whole float such as 64.0 is accepted), else ValueError."""
    ok = isinstance(value, Integral) or (isinstance(value, Real) and math.isfinite(value) and float(value).is_integer())
    if isinstance(value, bool) or not ok or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
    return int(value)


def image_shape(input_shape: Any) -> tuple[int, int, int]:
    """One sample's shape as (channels, height, width): (C, H, W) as is, (H, W) as one channel."""
    dims = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else None
    if dims is None or len(dims) not in (2, 3):
        raise ValueError(f"cnn needs images: input_shape (channels, height, width) or (height, width), "
                         f"got {input_shape!r}")
    if len(dims) == 2:
        dims = (1, *dims)
    c = _whole("input_shape's channels", dims[0], 1, MAX_IMAGE_CHANNELS)
    h = _whole("input_shape's height", dims[1], 1, MAX_SIDE)
    w = _whole("input_shape's width", dims[2], 1, MAX_SIDE)
    return c, h, w


@register("cnn", mutable=("dropout",))
def cnn(
    input_shape: tuple = (1, 8, 8),
    n_outputs: int = 10,
    channels: int = 32,
    blocks: int = 2,
    kernel: int = 3,
    hidden: int = 64,
    dropout: float = 0.0,
    batch_norm: bool = True,
    activation: str = "relu",
) -> nn.Module:
    """Convolution blocks, then a small dense head.

    Block i is Conv(kernel, ``channels * 2**i`` filters, "same" padding) -> [BatchNorm] ->
    activation, followed by a 2x2 max-pool while the image is at least 2 pixels on both sides (an
    8x8 digit: 8 -> 4 -> 2 -> 1, and further blocks keep 1x1). The last map, averaged down to at
    most 4x4 positions, is flattened -> Linear(``hidden``) -> activation -> Dropout ->
    Linear(n_outputs); ``hidden: 0`` drops that hidden layer (Dropout then feeds the head directly).

    Args:
        input_shape: one sample's shape, (channels, height, width) or (height, width).
        n_outputs: the head's width (classes, or 1 for regression).
        channels: filters of the first block; each block after it has twice as many.
        blocks: convolution blocks (at least 1).
        kernel: an odd convolution size; padding keeps the image size.
        hidden: units of the dense layer before the head (0: none).
        dropout: before the head; PBT may change it between epochs (the same weights).
        batch_norm: normalise after each convolution (which then has no bias).
        activation: relu, leaky_relu, gelu, elu or tanh.
    """
    in_channels, height, width = image_shape(input_shape)
    n_outputs = _whole("n_outputs", n_outputs, 1, MAX_HIDDEN)
    blocks = _whole("blocks", blocks, 1, MAX_BLOCKS)
    channels = _whole("channels", channels, 1, MAX_CHANNELS)
    if channels << (blocks - 1) > MAX_CHANNELS:
        raise ValueError(f"the last of {blocks} blocks would have {channels << (blocks - 1)} channels "
                         f"(channels doubles each block); at most {MAX_CHANNELS}")
    kernel = _whole("kernel", kernel, 1, MAX_KERNEL)
    if kernel % 2 == 0:
        raise ValueError(f"kernel must be odd (so that padding keeps the image size), got {kernel!r}")
    hidden = _whole("hidden", hidden, 0, MAX_HIDDEN)
    if not isinstance(dropout, Real) or isinstance(dropout, bool) or not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    if not isinstance(batch_norm, bool):
        raise ValueError(f"batch_norm must be true or false, got {batch_norm!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")

    features: list[nn.Module] = []
    c_in = in_channels
    for i in range(blocks):
        c_out = channels << i
        features.append(nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=not batch_norm))
        if batch_norm:
            features.append(nn.BatchNorm2d(c_out))
        features.append(ACTIVATIONS[activation]())
        if height >= 2 and width >= 2:
            features.append(nn.MaxPool2d(2))
            height, width = height // 2, width // 2
        c_in = c_out
    height, width = min(height, GRID), min(width, GRID)
    features += [nn.AdaptiveAvgPool2d((height, width)), nn.Flatten()]
    c_in *= height * width
    head: list[nn.Module] = []
    if hidden:
        head += [nn.Linear(c_in, hidden), ACTIVATIONS[activation]()]
        c_in = hidden
    # Always present (p = 0 is the identity): a checkpoint's keys stay the same when
    # population-based training moves dropout to or from 0.
    head.append(nn.Dropout(float(dropout)))
    out = nn.Linear(c_in, n_outputs)
    nn.init.xavier_uniform_(out.weight)
    nn.init.zeros_(out.bias)
    head.append(out)
    return CNN(nn.Sequential(*features), nn.Sequential(*head), add_channel=len(tuple(input_shape)) == 2)


class CNN(nn.Module):
    """``features`` (convolutions down to one vector per image), then ``head``."""

    def __init__(self, features: nn.Module, head: nn.Module, add_channel: bool = False) -> None:
        super().__init__()
        self.features = features
        self.head = head
        self.add_channel = add_channel  # built for (H, W) samples: a batch gets its channel axis here

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.add_channel:
            x = x.unsqueeze(1)
        return self.head(self.features(x))
