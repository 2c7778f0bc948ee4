"""The residual-encoder U-Net (nnU-Net v2's ``ResidualEncoderUNet``, the ResEnc M/L/XL presets).

Encoder: a stem (one conv block at full resolution, no stride), then per stage
``n_blocks_per_stage`` residual basic blocks (ResNet-D): conv block (strided in the stage's
first block) -> conv block without activation, added to the skip, then a leaky ReLU. The
skip is the identity, or an average pooling over the stride (kernel = stride) followed by a
1x1 conv (no bias) + instance norm when the block strides or changes the channel count.
Decoder: the plain U-Net's (transposed conv, concatenation with the skip, conv blocks, a 1x1
head per stage).

The modules carry nnU-Net's names, so its state dict loads with ``strict=True`` once the two
alias names it also holds are dropped (:func:`toolkit.nets.nnunet_v2_weights.drop_aliases`:
``...all_modules.N`` repeats each conv block's modules, ``decoder.encoder.*`` the encoder).
Initialisation as nnU-Net's: He-normal convolutions, and the norm before each residual
addition set to zero, so every block starts as its skip.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from toolkit.core.plans import Architecture
from toolkit.nets.blocks import ConvBlock, conv_cls, conv_stage, he_init, transposed_cls


class BasicBlock(nn.Module):
    """Two conv blocks and a skip; ``nonlin2`` activates their sum."""

    def __init__(
        self, dims: int, cin: int, cout: int, kernel: Sequence[int], stride: Sequence[int]
    ):
        super().__init__()
        self.conv1 = ConvBlock(dims, cin, cout, kernel, stride)
        self.conv2 = ConvBlock(dims, cout, cout, kernel, [1] * dims, activation=False)
        self.nonlin2 = nn.LeakyReLU(self.conv1.act.negative_slope, inplace=True)
        strided = any(s != 1 for s in stride)
        skip: list[nn.Module] = []
        if strided:
            pool = nn.AvgPool3d if dims == 3 else nn.AvgPool2d
            skip.append(pool(tuple(stride), tuple(stride)))
        if cin != cout:
            skip.append(
                ConvBlock(dims, cin, cout, [1] * dims, [1] * dims, bias=False, activation=False)
            )
        self.skip = nn.Sequential(*skip) if skip else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.conv1(x))
        out += self.skip(x)
        return self.nonlin2(out)


class ResidualStage(nn.Module):
    def __init__(
        self,
        dims: int,
        cin: int,
        cout: int,
        n_blocks: int,
        kernel: Sequence[int],
        stride: Sequence[int],
    ):
        super().__init__()
        blocks = [BasicBlock(dims, cin, cout, kernel, stride)]
        blocks += [BasicBlock(dims, cout, cout, kernel, [1] * dims) for _ in range(n_blocks - 1)]
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class ConvStage(nn.Module):
    """Conv blocks under nnU-Net's name ``convs`` (its ``StackedConvBlocks``)."""

    def __init__(self, convs: nn.Sequential):
        super().__init__()
        self.convs = convs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(x)


class ResidualEncoder(nn.Module):
    def __init__(self, in_channels: int, a: Architecture, dims: int):
        super().__init__()
        f = a.features_per_stage
        self.stem = ConvStage(conv_stage(dims, in_channels, f[0], 1, a.kernel_sizes[0], [1] * dims))
        cin = f[0]
        stages = []
        for s in range(a.n_stages):
            stages.append(
                ResidualStage(
                    dims, cin, f[s], a.n_blocks_per_stage[s], a.kernel_sizes[s], a.strides[s]
                )
            )
            cin = f[s]
        self.stages = nn.Sequential(*stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips


class Decoder(nn.Module):
    """The plain U-Net decoder; stage ``d`` works at encoder stage ``n - 2 - d`` (deepest first)."""

    def __init__(self, num_classes: int, a: Architecture, dims: int):
        super().__init__()
        f = a.features_per_stage
        n = a.n_stages
        self.stages = nn.ModuleList()  # nnU-Net's order of the three lists
        self.transpconvs = nn.ModuleList()
        self.seg_layers = nn.ModuleList()
        for d in range(n - 1):
            s = n - 2 - d
            stride = tuple(a.strides[s + 1])
            self.transpconvs.append(transposed_cls(dims)(f[s + 1], f[s], stride, stride, bias=True))
            self.stages.append(
                ConvStage(
                    conv_stage(
                        dims,
                        2 * f[s],
                        f[s],
                        a.n_conv_per_stage_decoder[s],
                        a.kernel_sizes[s],
                        [1] * dims,
                    )
                )
            )
            self.seg_layers.append(conv_cls(dims)(f[s], num_classes, 1, 1, 0, bias=True))

    def forward(self, skips: list[torch.Tensor], deep_supervision: bool) -> list[torch.Tensor]:
        x = skips[-1]
        outputs = []
        last = len(self.stages) - 1
        for d, (up, stage, head) in enumerate(
            zip(self.transpconvs, self.stages, self.seg_layers, strict=True)
        ):
            x = stage(torch.cat((up(x), skips[-(d + 2)]), dim=1))
            if deep_supervision or d == last:
                outputs.append(head(x))
        outputs.reverse()  # highest resolution first
        return outputs


class ResidualEncoderUNet(nn.Module):
    """With deep supervision the forward pass returns every decoder output, highest
    resolution first; without, only the highest (as :class:`~toolkit.nets.unet.UNet`)."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        architecture: Architecture,
        spatial_dims: int,
        deep_supervision: bool = True,
    ):
        super().__init__()
        a = architecture.check()
        if a.network != "residual_encoder":
            raise ValueError(f"ResidualEncoderUNet builds the residual encoder, not {a.network!r}")
        self.spatial_dims = spatial_dims
        self.num_classes = num_classes
        self.deep_supervision = deep_supervision
        self.encoder = ResidualEncoder(in_channels, a, spatial_dims)
        self.decoder = Decoder(num_classes, a, spatial_dims)
        self.apply(he_init)
        for module in self.modules():
            if isinstance(module, BasicBlock):  # each block starts as its skip
                nn.init.zeros_(module.conv2.norm.weight)
                nn.init.zeros_(module.conv2.norm.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        outputs = self.decoder(self.encoder(x), self.deep_supervision)
        return outputs if self.deep_supervision else outputs[0]
