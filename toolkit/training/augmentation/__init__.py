"""Data augmentation on batched tensors, on the training device.

The parts:

* :mod:`~toolkit.training.augmentation.framework`: the :class:`Batch`, the parameter
  checks, :class:`RandomTransform` (draw on the CPU with a seeded generator, then apply to
  the whole batch on its device) and :class:`TransformParams`.
* :mod:`~toolkit.training.augmentation.spatial`: the spatial rules of a patch size,
  rotation + scaling (one resampling from crop to patch) and mirroring.
* :mod:`~toolkit.training.augmentation.intensity`: noise, blur, brightness, contrast,
  low resolution, gamma.
* :mod:`~toolkit.training.augmentation.augmenter`: the :class:`Augmenter`, the method's
  nine transforms in the reference's order (METHOD.md section 4).
* :mod:`~toolkit.training.augmentation.cascade_labels`: :func:`finish` (network input and
  target from an augmented batch) and the cascade's perturbations of the previous stage's
  one-hot channels (random binary operator, then random component removal), which the
  reference applies last.
"""

from toolkit.training.augmentation.augmenter import AugmentationParams, Augmenter
from toolkit.training.augmentation.cascade_labels import (
    BinaryOperatorParams,
    CascadeAugmentation,
    CascadeParams,
    ComponentRemovalParams,
    RandomBinaryOperator,
    RandomComponentRemoval,
    ball_footprint,
    dilate,
    finish,
    morphology,
    removable_component,
)
from toolkit.training.augmentation.framework import (
    Batch,
    RandomTransform,
    TransformParams,
    check_probability,
    check_range,
)
from toolkit.training.augmentation.intensity import (
    BlurParams,
    Brightness,
    ChannelFactors,
    Contrast,
    Gamma,
    GaussianBlur,
    GaussianNoise,
    LowResolution,
    LowResParams,
    NoiseParams,
)
from toolkit.training.augmentation.spatial import (
    Mirror,
    MirrorParams,
    SpatialParams,
    SpatialRules,
    SpatialTransform,
    spatial_rules,
)

__all__ = [
    "AugmentationParams",
    "Augmenter",
    "Batch",
    "BinaryOperatorParams",
    "BlurParams",
    "Brightness",
    "CascadeAugmentation",
    "CascadeParams",
    "ChannelFactors",
    "ComponentRemovalParams",
    "Contrast",
    "Gamma",
    "GaussianBlur",
    "GaussianNoise",
    "LowResParams",
    "LowResolution",
    "Mirror",
    "MirrorParams",
    "NoiseParams",
    "RandomBinaryOperator",
    "RandomComponentRemoval",
    "RandomTransform",
    "SpatialParams",
    "SpatialRules",
    "SpatialTransform",
    "TransformParams",
    "ball_footprint",
    "check_probability",
    "check_range",
    "dilate",
    "finish",
    "morphology",
    "removable_component",
    "spatial_rules",
]
