"""A plain 2D/3D U-Net built from a plan's :class:`~toolkit.core.plans.Architecture`.

Per stage: ``n_conv`` blocks of conv -> instance norm -> leaky ReLU; the first conv of a
stage is strided (downsampling by strided convolution, no pooling). Decoder stages upsample
with a transposed convolution, concatenate the skip connection and apply their conv blocks;
each has a 1x1 segmentation head. With deep supervision the forward pass returns every
decoder output, highest resolution first; without, only the highest.
"""

from __future__ import annotations

import torch
from torch import nn

from toolkit.core.cascade import input_channels
from toolkit.core.plans import Architecture, Configuration, Plans
from toolkit.nets.blocks import conv_cls, conv_stage, he_init, transposed_cls
from toolkit.nets.residual_unet import ResidualEncoderUNet


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
        a = architecture.check()
        if a.network != "plain":
            raise ValueError(f"UNet builds the plain network, not {a.network!r}")
        n = a.n_stages
        self.spatial_dims = spatial_dims
        self.num_classes = num_classes
        self.deep_supervision = deep_supervision
        f = a.features_per_stage

        self.encoder = nn.ModuleList()
        cin = in_channels
        for s in range(n):
            self.encoder.append(
                conv_stage(
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
                transposed_cls(spatial_dims)(f[s + 1], f[s], stride, stride, bias=True)
            )
            self.decoder.append(
                conv_stage(
                    spatial_dims,
                    2 * f[s],
                    f[s],
                    a.n_conv_per_stage_decoder[s],
                    a.kernel_sizes[s],
                    [1] * spatial_dims,
                )
            )
            self.heads.append(conv_cls(spatial_dims)(f[s], num_classes, 1, 1, 0, bias=True))
        self.apply(he_init)

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


def build_network(
    plans: Plans, configuration: Configuration, deep_supervision: bool = True
) -> UNet | ResidualEncoderUNet:
    """The configuration's network: the plain U-Net, or the residual-encoder U-Net."""
    network_cls = (
        ResidualEncoderUNet if configuration.architecture.network == "residual_encoder" else UNet
    )
    return network_cls(
        in_channels=input_channels(plans, configuration),
        num_classes=plans.num_classes,
        architecture=configuration.architecture,
        spatial_dims=configuration.spatial_dims,
        deep_supervision=deep_supervision,
    )
