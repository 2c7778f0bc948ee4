"""The U-Net built from a plan configuration."""

from toolkit.nets.unet import UNet, build_network, input_channels

__all__ = ["UNet", "build_network", "input_channels"]
