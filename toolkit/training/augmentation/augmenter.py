"""The augmentation pipeline: the method's nine transforms in the reference's order.

Rotation and scaling (one resampling, :mod:`toolkit.training.augmentation.spatial`),
Gaussian noise, Gaussian blur, brightness, contrast, low-resolution simulation, inverted
gamma, gamma (:mod:`toolkit.training.augmentation.intensity`), mirroring. The reference then masks
the image, maps the outside label to background and, in a cascade, moves the previous
stage's labels to one-hot channels and perturbs them (binary operator, then component
removal): :func:`toolkit.training.augmentation.cascade_labels.finish` does those steps, in
that order, after the augmenter.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from toolkit.training.augmentation.framework import Batch, RandomTransform
from toolkit.training.augmentation.intensity import (
    Brightness,
    Contrast,
    Gamma,
    GaussianBlur,
    GaussianNoise,
    LowResolution,
)
from toolkit.training.augmentation.spatial import Mirror, SpatialRules, SpatialTransform


@dataclass
class AugmentationParams:
    """Everything one batch's augmentation drew: replaying it gives the same batch."""

    by_transform: dict[str, object] = field(default_factory=dict)


class Augmenter:
    """The method's nine transforms in the reference's order, for one patch size."""

    def __init__(self, rules: SpatialRules):
        self.rules = rules
        ignore = (0,) if rules.slice_stack else ()
        self.spatial = SpatialTransform(rules)
        self.transforms: list[RandomTransform] = [
            GaussianNoise(),
            GaussianBlur(),
            Brightness(),
            Contrast(),
            LowResolution(ignore_axes=ignore),
            Gamma(probability=0.1, invert=True),
            Gamma(probability=0.3),
            Mirror(rules.mirror_axes),
        ]

    def sample(
        self, seed: np.random.SeedSequence, batch_size: int, num_channels: int
    ) -> AugmentationParams:
        """One child generator per transform, so each transform's draws are independent."""
        every = [self.spatial, *self.transforms]
        rngs = [np.random.default_rng(s) for s in seed.spawn(len(every))]
        return AugmentationParams(
            {
                t.name: t.sample(r, batch_size, num_channels)
                for t, r in zip(every, rngs, strict=True)
            }
        )

    def apply(self, batch: Batch, params: AugmentationParams) -> Batch:
        with torch.no_grad():
            batch = self.spatial.apply(batch, params.by_transform.get(self.spatial.name))
            for t in self.transforms:
                p = params.by_transform.get(t.name)
                if p is not None:
                    batch = t.apply(batch, p)
        return batch

    def __call__(self, batch: Batch, seed: np.random.SeedSequence) -> Batch:
        return self.apply(batch, self.sample(seed, batch.batch_size, batch.num_channels))
