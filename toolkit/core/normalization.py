"""Intensity normalization: the scheme a channel's name selects, and what each scheme computes.

nnU-Net v2's schemes, chosen from ``dataset.json``'s channel names exactly as nnU-Net v2 2.8.1
maps them (``map_channel_name_to_normalization.py``): the name, case-folded, is looked up in

    ct -> ct   nonorm -> none   zscore -> zscore   rescale_to_0_1 -> rescale_to_0_1
    rgb_to_0_1 -> rgb_to_0_1    any other name (T2, ADC, MRI, R, G, B, ...) -> zscore

Each scheme turns one channel of one cropped case into float32
(``default_normalization_schemes.py``):

* ``ct``: clip to the training set's foreground [0.5, 99.5] percentiles, subtract the
  foreground mean, divide by the foreground std (at least 1e-8).
* ``zscore``: subtract the image's mean, divide by its std (at least 1e-8); with the non-zero
  mask, statistics and change inside the mask only, the outside keeps its value (0).
* ``none``: the values as float32.
* ``rescale_to_0_1``: subtract the image's minimum, divide by the new maximum (at least 1e-8).
* ``rgb_to_0_1``: divide by 255; values outside 0..255 are an error (not an 8-bit colour image).

Only ``zscore`` leaves the outside of the non-zero mask at zero, so only it may use the mask
(:func:`may_use_nonzero_mask`); the planner decides when (cropping kept < 75% of the image).
The toolkit computes z-score statistics in float64 (nnU-Net: float32); see docs/DIFFERENCES.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from toolkit.errors import ToolkitError

NormalizationScheme = Literal["ct", "zscore", "none", "rescale_to_0_1", "rgb_to_0_1"]
SCHEMES: tuple[str, ...] = get_args(NormalizationScheme)
DEFAULT_SCHEME = "zscore"
# case-folded channel name -> scheme (nnU-Net v2's channel_name_to_normalization_mapping)
CHANNEL_NAME_SCHEMES: dict[str, str] = {
    "ct": "ct",
    "nonorm": "none",
    "zscore": "zscore",
    "rescale_to_0_1": "rescale_to_0_1",
    "rgb_to_0_1": "rgb_to_0_1",
}
# scheme -> nnU-Net v2's class name, as its plans.json spells it in normalization_schemes
NNUNET_CLASS_NAMES: dict[str, str] = {
    "ct": "CTNormalization",
    "zscore": "ZScoreNormalization",
    "none": "NoNormalization",
    "rescale_to_0_1": "RescaleTo01Normalization",
    "rgb_to_0_1": "RGBTo01Normalization",
}
EPSILON = 1e-8  # the smallest divisor (nnU-Net's eps for float32)
RGB_MAX = 255.0


@dataclass
class Normalization:
    """How one input channel is normalized."""

    scheme: NormalizationScheme
    # z-score inside the non-zero mask (cropping removed > 25% of the image); outside stays 0
    use_nonzero_mask: bool = False
    # CT only: global foreground statistics of the training set
    mean: float | None = None
    std: float | None = None
    lower_bound: float | None = None  # 0.5th percentile of foreground intensities
    upper_bound: float | None = None  # 99.5th percentile


def scheme_of_channel(channel_name: str) -> str:
    """The scheme a channel's name selects (case-insensitive); unknown names get z-score."""
    return CHANNEL_NAME_SCHEMES.get(channel_name.casefold(), DEFAULT_SCHEME)


def may_use_nonzero_mask(scheme: str) -> bool:
    """Whether the scheme leaves voxels outside the non-zero mask at zero (z-score only)."""
    return scheme == "zscore"


def scheme_of_nnunet_class(class_name: str) -> str | None:
    """Our scheme for an nnU-Net v2 normalization class name, ``None`` when there is none."""
    for scheme, name in NNUNET_CLASS_NAMES.items():
        if name == class_name:
            return scheme
    return None


def normalize_channel(
    image: np.ndarray, norm: Normalization, inside: np.ndarray | None
) -> np.ndarray:
    """One channel as a new float32 array. ``inside``: the non-zero mask, used when ``norm.use_nonzero_mask``."""
    image = image.astype(np.float32, copy=True)
    if norm.scheme == "ct":
        if None in (norm.mean, norm.std, norm.lower_bound, norm.upper_bound):
            raise ValueError(
                "CT normalization needs mean, std, lower_bound and upper_bound in the plans"
            )
        np.clip(image, norm.lower_bound, norm.upper_bound, out=image)
        image -= norm.mean
        image /= max(float(norm.std), EPSILON)
        return image
    if norm.scheme == "zscore":
        if norm.use_nonzero_mask and inside is not None:
            values = image[inside]
            if values.size:
                mean = float(values.mean(dtype=np.float64))
                std = float(values.std(dtype=np.float64))
                image[inside] = (values - mean) / max(std, EPSILON)
            return image
        mean, std = float(image.mean(dtype=np.float64)), float(image.std(dtype=np.float64))
        image -= mean
        image /= max(std, EPSILON)
        return image
    if norm.scheme == "none":
        return image
    if norm.scheme == "rescale_to_0_1":
        if image.size:
            image -= image.min()
            image /= max(float(image.max()), EPSILON)
        return image
    if norm.scheme == "rgb_to_0_1":
        if image.size and (image.min() < 0 or image.max() > RGB_MAX):
            raise ToolkitError(
                f"a channel named rgb_to_0_1 holds values from {float(image.min()):g} to "
                f"{float(image.max()):g}; rgb_to_0_1 is for 8-bit colour images (0..255): "
                "rename the channel (zscore, rescale_to_0_1) in dataset.json"
            )
        image /= np.float32(RGB_MAX)
        return image
    raise ValueError(f"unknown normalization scheme {norm.scheme!r}")
