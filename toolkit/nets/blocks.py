"""Building blocks shared by the U-Nets: conv -> instance norm -> leaky ReLU, and He init."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from toolkit.core.constants import INSTANCE_NORM_EPS, LEAKY_RELU_SLOPE


def conv_cls(dims: int) -> type[nn.Module]:
    return nn.Conv3d if dims == 3 else nn.Conv2d


def norm_cls(dims: int) -> type[nn.Module]:
    return nn.InstanceNorm3d if dims == 3 else nn.InstanceNorm2d


def transposed_cls(dims: int) -> type[nn.Module]:
    return nn.ConvTranspose3d if dims == 3 else nn.ConvTranspose2d


class ConvBlock(nn.Module):
    """conv -> instance norm (affine) -> leaky ReLU; ``activation=False`` leaves the ReLU out
    (the second conv of a residual block and its skip projection, whose sum is activated)."""

    def __init__(
        self,
        dims: int,
        cin: int,
        cout: int,
        kernel: Sequence[int],
        stride: Sequence[int],
        *,
        bias: bool = True,
        activation: bool = True,
    ):
        super().__init__()
        padding = [(k - 1) // 2 for k in kernel]
        self.conv = conv_cls(dims)(
            cin, cout, tuple(kernel), tuple(stride), tuple(padding), bias=bias
        )
        self.norm = norm_cls(dims)(cout, eps=INSTANCE_NORM_EPS, affine=True)
        self.act = nn.LeakyReLU(LEAKY_RELU_SLOPE, inplace=True) if activation else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


def conv_stage(
    dims: int, cin: int, cout: int, n_conv: int, kernel: Sequence[int], stride: Sequence[int]
) -> nn.Sequential:
    """``n_conv`` conv blocks; the first one strided (and taking ``cin`` channels)."""
    blocks = [ConvBlock(dims, cin, cout, kernel, stride)]
    blocks += [ConvBlock(dims, cout, cout, kernel, [1] * dims) for _ in range(n_conv - 1)]
    return nn.Sequential(*blocks)


def he_init(module: nn.Module) -> None:
    """Kaiming-normal weights for the leaky ReLU, zero biases (the method's initialisation)."""
    if isinstance(module, nn.Conv2d | nn.Conv3d | nn.ConvTranspose2d | nn.ConvTranspose3d):
        nn.init.kaiming_normal_(module.weight, a=LEAKY_RELU_SLOPE)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
