"""A plain 2D/3D U-Net built from a plan's :class:`~toolkit.core.plans.Architecture`.

Per stage: ``n_conv`` blocks of conv -> instance norm -> leaky ReLU; the first conv of a
stage is strided (downsampling by strided convolution, no pooling). Decoder stages upsample
with a transposed convolution, concatenate the skip connection and apply their conv blocks;
each has a 1x1 segmentation head. With deep supervision the forward pass returns every
decoder output, highest resolution first; without, only the highest.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from toolkit.core.constants import INSTANCE_NORM_EPS, LEAKY_RELU_SLOPE
from toolkit.core.plans import Architecture, Configuration, Plans


def _conv_cls(dims: int) -> type[nn.Module]:
    return nn.Conv3d if dims == 3 else nn.Conv2d


def _norm_cls(dims: int) -> type[nn.Module]:
    return nn.InstanceNorm3d if dims == 3 else nn.InstanceNorm2d


def _transp_cls(dims: int) -> type[nn.Module]:
    return nn.ConvTranspose3d if dims == 3 else nn.ConvTranspose2d


class ConvBlock(nn.Module):
    def __init__(
        self, dims: int, cin: int, cout: int, kernel: Sequence[int], stride: Sequence[int]
    ):
        super().__init__()
        padding = [(k - 1) // 2 for k in kernel]
        self.conv = _conv_cls(dims)(
            cin, cout, tuple(kernel), tuple(stride), tuple(padding), bias=True
        )
        self.norm = _norm_cls(dims)(cout, eps=INSTANCE_NORM_EPS, affine=True)
        self.act = nn.LeakyReLU(LEAKY_RELU_SLOPE, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


def _stage(
    dims: int, cin: int, cout: int, n_conv: int, kernel: Sequence[int], stride: Sequence[int]
) -> nn.Sequential:
    blocks = [ConvBlock(dims, cin, cout, kernel, stride)]
    blocks += [ConvBlock(dims, cout, cout, kernel, [1] * dims) for _ in range(n_conv - 1)]
    return nn.Sequential(*blocks)


class UNet(nn.Module):
    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        architecture: Architecture,
        spatial_dims: int,
        deep_supervision: bool = True,
    ):
        super().__init__()
        a = architecture
        n = a.n_stages
        if not (len(a.kernel_sizes) == len(a.strides) == len(a.n_conv_per_stage) == n):
            raise ValueError(
                "architecture: features_per_stage, kernel_sizes, strides and n_conv_per_stage need one entry per stage"
            )
        if len(a.n_conv_per_stage_decoder) != n - 1:
            raise ValueError(
                f"architecture: n_conv_per_stage_decoder needs {n - 1} entries, got {len(a.n_conv_per_stage_decoder)}"
            )
        self.spatial_dims = spatial_dims
        self.num_classes = num_classes
        self.deep_supervision = deep_supervision
        f = a.features_per_stage

        self.encoder = nn.ModuleList()
        cin = in_channels
        for s in range(n):
            self.encoder.append(
                _stage(
                    spatial_dims, cin, f[s], a.n_conv_per_stage[s], a.kernel_sizes[s], a.strides[s]
                )
            )
            cin = f[s]

        # decoder index d works on encoder stage s = n - 2 - d (deepest first)
        self.upsamples = nn.ModuleList()
        self.decoder = nn.ModuleList()
        self.heads = nn.ModuleList()
        for d in range(n - 1):
            s = n - 2 - d
            stride = tuple(a.strides[s + 1])
            self.upsamples.append(
                _transp_cls(spatial_dims)(f[s + 1], f[s], stride, stride, bias=True)
            )
            self.decoder.append(
                _stage(
                    spatial_dims,
                    2 * f[s],
                    f[s],
                    a.n_conv_per_stage_decoder[s],
                    a.kernel_sizes[s],
                    [1] * spatial_dims,
                )
            )
            self.heads.append(_conv_cls(spatial_dims)(f[s], num_classes, 1, 1, 0, bias=True))
        self.apply(_he_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        x = skips.pop()
        outputs = []
        last = len(self.decoder) - 1
        for d, (up, stage, head) in enumerate(
            zip(self.upsamples, self.decoder, self.heads, strict=True)
        ):
            x = stage(torch.cat((up(x), skips.pop()), dim=1))
            if self.deep_supervision or d == last:
                outputs.append(head(x))
        outputs.reverse()  # highest resolution first
        return outputs if self.deep_supervision else outputs[0]


def _he_init(module: nn.Module) -> None:
    if isinstance(module, nn.Conv2d | nn.Conv3d | nn.ConvTranspose2d | nn.ConvTranspose3d):
        nn.init.kaiming_normal_(module.weight, a=LEAKY_RELU_SLOPE)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def input_channels(plans: Plans, configuration: Configuration) -> int:
    """Image channels, plus one-hot foreground channels of the previous stage for a cascade."""
    # a cascade's extra inputs: one one-hot channel per foreground label value (also with regions)
    extra = len(plans.label_model().foreground_values) if configuration.is_cascade else 0
    return plans.num_input_channels + extra


def build_network(
    plans: Plans, configuration: Configuration, deep_supervision: bool = True
) -> UNet:
    return UNet(
        in_channels=input_channels(plans, configuration),
        num_classes=plans.num_classes,
        architecture=configuration.architecture,
        spatial_dims=configuration.spatial_dims,
        deep_supervision=deep_supervision,
    )
