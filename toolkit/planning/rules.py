"""Pure planning rules: spacing, axis order, shapes, normalization (the method's numbers)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from toolkit.core.constants import ANISOTROPY_THRESHOLD
from toolkit.core.fingerprint import Fingerprint
from toolkit.core.normalization import Normalization, may_use_nonzero_mask, scheme_of_channel
from toolkit.errors import ToolkitError

ANISOTROPIC_SPACING_PERCENTILE = 10
# z-score inside the non-zero mask when cropping kept less than this share of the image
NONZERO_MASK_RELATIVE_SIZE = 0.75


def target_spacing(
    spacings: Sequence[Sequence[float]],
    shapes_after_crop: Sequence[Sequence[int]],
    threshold: float = ANISOTROPY_THRESHOLD,
) -> list[float]:
    """Median spacing per axis; for thick-slice data the 10th percentile on the coarse axis.

    Thick-slice data: the coarsest median spacing is more than ``threshold`` x the next
    coarsest, and the median size along it times ``threshold`` is still below the smallest
    other median size. Such datasets still hold cases with far thinner slices; the median
    would interpolate them badly. The result never becomes finer than the other axes.
    """
    spacings = np.asarray(spacings, dtype=np.float64)
    target = np.percentile(spacings, 50, axis=0)
    sizes = np.percentile(np.asarray(shapes_after_crop, dtype=np.float64), 50, axis=0)
    worst = int(np.argmax(target))
    others = [i for i in range(len(target)) if i != worst]
    other_spacing = max(target[i] for i in others)
    other_size = min(sizes[i] for i in others)
    if target[worst] > threshold * other_spacing and sizes[worst] * threshold < other_size:
        value = float(np.percentile(spacings[:, worst], ANISOTROPIC_SPACING_PERCENTILE))
        if value < other_spacing:
            value = max(other_spacing, value) + 1e-5
        target[worst] = value
    return [float(v) for v in target]


def transpose_axes(spacing: Sequence[float]) -> tuple[list[int], list[int]]:
    """Forward permutation putting the coarsest axis first (others keep their order), and its inverse."""
    coarse = int(np.argmax(spacing))
    forward = [coarse] + [i for i in range(len(spacing)) if i != coarse]
    backward = [forward.index(i) for i in range(len(spacing))]
    return forward, backward


def resampled_shape(
    shape: Sequence[int], spacing: Sequence[float], new_spacing: Sequence[float]
) -> list[int]:
    return [int(round(s / n * k)) for s, n, k in zip(spacing, new_spacing, shape, strict=True)]


def median_resampled_shape(
    spacings: Sequence[Sequence[float]],
    shapes_after_crop: Sequence[Sequence[int]],
    new_spacing: Sequence[float],
) -> list[float]:
    """Median over cases of the shape after resampling to ``new_spacing`` (may be fractional)."""
    shapes = [
        resampled_shape(sh, sp, new_spacing)
        for sp, sh in zip(spacings, shapes_after_crop, strict=True)
    ]
    return [float(v) for v in np.median(np.asarray(shapes, dtype=np.float64), axis=0)]


def initial_patch_size(
    spacing: Sequence[float], median_shape: Sequence[float], volume: float
) -> list[float]:
    """Aspect ratio of ``1 / spacing`` scaled to ``volume`` voxels, clipped to the median shape."""
    inverse = 1.0 / np.asarray(spacing, dtype=np.float64)
    scaled = inverse * (volume / np.prod(inverse)) ** (1.0 / len(spacing))
    return [min(round(float(p)), m) for p, m in zip(scaled, median_shape, strict=True)]


def channel_normalization(
    channel_name: str,
    median_relative_size_after_cropping: float,
    foreground_mean: float,
    foreground_std: float,
    lower_bound: float,
    upper_bound: float,
) -> Normalization:
    scheme = scheme_of_channel(channel_name)
    # only a scheme that leaves the outside of the mask at zero may use the mask
    use_mask = (
        may_use_nonzero_mask(scheme)
        and median_relative_size_after_cropping < NONZERO_MASK_RELATIVE_SIZE
    )
    if scheme == "ct":
        return Normalization(
            scheme="ct",
            use_nonzero_mask=False,
            mean=float(foreground_mean),
            std=float(foreground_std),
            lower_bound=float(lower_bound),
            upper_bound=float(upper_bound),
        )
    return Normalization(scheme=scheme, use_nonzero_mask=use_mask)  # type: ignore[arg-type]


def dataset_normalization(fingerprint: Fingerprint) -> list[Normalization]:
    """One normalization per channel, from the channel's name and its foreground statistics."""
    normalization = [
        channel_normalization(
            fingerprint.channel_names[str(c)],
            fingerprint.median_relative_size_after_cropping,
            stats.mean,
            stats.std,
            stats.percentile_00_5,
            stats.percentile_99_5,
        )
        for c, stats in enumerate(fingerprint.intensity)
    ]
    for c, norm in enumerate(normalization):
        if norm.scheme == "ct" and not all(
            np.isfinite([norm.mean, norm.std, norm.lower_bound, norm.upper_bound])
        ):
            raise ToolkitError(
                f"channel {c} is CT but no training case has foreground: its statistics are undefined"
            )
    return normalization
