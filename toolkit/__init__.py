"""toolkit: self-configuring medical image segmentation (the nnU-Net method)."""

__version__ = "0.1.0"
