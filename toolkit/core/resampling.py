"""Resampling images, label maps and probabilities between voxel grids.

The method's rules (nnU-Net v2's defaults): images with third-order splines, labels as
one-hot maps with linear interpolation (a voxel takes every label whose interpolated
indicator reaches 0.5, in ascending order), probabilities linearly. When either grid is
anisotropic (the coarsest spacing more than ``anisotropy_threshold`` times the finest, with one
single coarsest axis), the in-plane axes use those orders and the coarse axis uses nearest
neighbour (``coarse_axis_order``), so thick slices are never blended into each other.

Interpolation uses cell-centred coordinates (output voxel ``i`` samples input position
``(i + 0.5) * old / new - 0.5``) with edge values repeated beyond the border, and the
result is clipped to the input's range, as scikit-image's ``resize`` does for the
reference. A tensor-product spline evaluated on a grid is separable, so we apply one exact
1-D operator per axis (a small matrix, cached per size pair) instead of a 3-D spline of
64 taps per voxel: the same numbers, several times faster.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from scipy import ndimage
from threadpoolctl import ThreadpoolController

from toolkit.core.constants import ANISOTROPY_THRESHOLD
from toolkit.core.plans import Configuration, Resampling

_THREADPOOLS: ThreadpoolController | None = None


def _single_threaded_blas():
    """The per-axis products are small: threaded BLAS only spins (badly, on a loaded machine)."""
    global _THREADPOOLS
    if _THREADPOOLS is None:
        _THREADPOOLS = ThreadpoolController()
    return _THREADPOOLS.limit(limits=1, user_api="blas")


def compute_new_shape(
    old_shape: Sequence[int], old_spacing: Sequence[float], new_spacing: Sequence[float]
) -> list[int]:
    """Voxels per axis after resampling: ``round(old_shape * old_spacing / new_spacing)``."""
    if not (len(old_shape) == len(old_spacing) == len(new_spacing)):
        raise ValueError(
            f"shape {tuple(old_shape)} and spacings {tuple(old_spacing)}, {tuple(new_spacing)} differ in length"
        )
    return [
        int(round(s / n * k)) for s, n, k in zip(old_spacing, new_spacing, old_shape, strict=True)
    ]


def is_anisotropic(spacing: Sequence[float], threshold: float = ANISOTROPY_THRESHOLD) -> bool:
    return max(spacing) / min(spacing) > threshold


def coarse_axis(
    current_spacing: Sequence[float],
    new_spacing: Sequence[float],
    threshold: float = ANISOTROPY_THRESHOLD,
) -> int | None:
    """The axis to resample with nearest neighbour, or ``None`` to interpolate all axes alike.

    The current grid decides first, then the new one. When two or three axes share the
    coarsest spacing there is no single thick-slice axis, and every axis is interpolated.
    """
    for spacing in (current_spacing, new_spacing):
        if is_anisotropic(spacing, threshold):
            spacing = np.asarray(spacing, dtype=np.float64)
            axes = np.flatnonzero(spacing.max() / spacing == 1)
            return int(axes[0]) if len(axes) == 1 else None
    return None


@lru_cache(maxsize=256)
def axis_operator(old_size: int, new_size: int, order: int) -> np.ndarray:
    """The ``(new_size, old_size)`` matrix that resamples one axis with a spline of ``order``.

    Built by resampling the identity, so it includes the spline prefilter exactly.
    """
    if old_size < 1 or new_size < 1:
        raise ValueError(f"cannot resample an axis of {old_size} voxels to {new_size}")
    if order not in (0, 1, 2, 3, 4, 5):
        raise ValueError(f"spline order must be 0..5, not {order}")
    eye = np.eye(old_size, dtype=np.float64)
    if old_size == new_size:
        return eye
    if old_size == 1:
        return np.ones((new_size, 1), dtype=np.float64)
    op = ndimage.zoom(
        eye,
        (new_size / old_size, 1.0),
        order=order,
        mode="nearest",
        grid_mode=True,
        prefilter=True,
    )
    if op.shape[0] != new_size:  # zoom rounds the output size; guard against float corner cases
        raise AssertionError(f"operator has {op.shape[0]} rows, expected {new_size}")
    return op


def _apply_axis(array: np.ndarray, axis: int, new_size: int, order: int) -> np.ndarray:
    old_size = array.shape[axis]
    if old_size == new_size:
        return array
    op = axis_operator(old_size, new_size, order).astype(array.dtype, copy=False)
    array = np.ascontiguousarray(array)
    before = math.prod(array.shape[:axis])
    after = math.prod(array.shape[axis + 1 :])
    new_shape = (*array.shape[:axis], new_size, *array.shape[axis + 1 :])
    if after == 1:  # last axis: one matrix product over all rows
        return (array.reshape(before, old_size) @ op.T).reshape(new_shape)
    # (n', n) @ (before, n, after): a batch of products, no transposed copies
    return np.matmul(op, array.reshape(before, old_size, after)).reshape(new_shape)


def _axis_orders(
    ndim: int,
    order: int,
    current_spacing: Sequence[float],
    new_spacing: Sequence[float],
    coarse_axis_order: int,
    threshold: float,
) -> tuple[list[int], int | None]:
    orders = [order] * ndim
    axis = coarse_axis(current_spacing, new_spacing, threshold)
    if axis is not None:
        orders[axis] = coarse_axis_order
    return orders, axis


def _resample_volume(
    volume: np.ndarray,
    new_shape: Sequence[int],
    orders: Sequence[int],
    clip: bool,
    coarse: int | None = None,
) -> np.ndarray:
    out = volume
    # smallest output first keeps the intermediate arrays small
    axes = sorted(range(volume.ndim), key=lambda a: new_shape[a] / volume.shape[a])
    with _single_threaded_blas():
        for axis in axes:
            out = _apply_axis(out, axis, int(new_shape[axis]), orders[axis])
    if not clip or all(o <= 1 for o in orders):
        return out  # linear and nearest interpolation never leave the input's range
    if coarse is not None and orders[coarse] == 0:
        # slices interpolated in-plane keep their own range, carried along by nearest neighbour
        other = tuple(a for a in range(volume.ndim) if a != coarse)
        select = axis_operator(volume.shape[coarse], int(new_shape[coarse]), 0)
        lo = select @ volume.min(axis=other).astype(np.float64)
        hi = select @ volume.max(axis=other).astype(np.float64)
        shape = [1] * volume.ndim
        shape[coarse] = -1
        np.clip(
            out, lo.reshape(shape).astype(out.dtype), hi.reshape(shape).astype(out.dtype), out=out
        )
    else:
        np.clip(out, volume.min(), volume.max(), out=out)
    return out


def resample(
    array: np.ndarray,
    new_shape: Sequence[int],
    current_spacing: Sequence[float],
    new_spacing: Sequence[float],
    order: int = 3,
    coarse_axis_order: int = 0,
    anisotropy_threshold: float = ANISOTROPY_THRESHOLD,
) -> np.ndarray:
    """Resample ``(c, *spatial)`` float data to ``(c, *new_shape)`` (float32).

    ``current_spacing``/``new_spacing`` decide whether one axis is coarse (then resampled
    with ``coarse_axis_order``); they do not change ``new_shape``.
    """
    array = np.asarray(array)
    spatial = array.shape[1:]
    if len(new_shape) != len(spatial):
        raise ValueError(f"new_shape {tuple(new_shape)} does not match the spatial shape {spatial}")
    new_shape = [int(s) for s in new_shape]
    if list(spatial) == new_shape:
        return array.astype(np.float32, copy=False)
    orders, axis = _axis_orders(
        len(spatial), order, current_spacing, new_spacing, coarse_axis_order, anisotropy_threshold
    )
    out = np.empty((array.shape[0], *new_shape), dtype=np.float32)
    for c in range(array.shape[0]):
        out[c] = _resample_volume(
            array[c].astype(np.float32, copy=False), new_shape, orders, clip=True, coarse=axis
        )
    return out


def resample_labels(
    seg: np.ndarray,
    new_shape: Sequence[int],
    current_spacing: Sequence[float],
    new_spacing: Sequence[float],
    resampling: Resampling,
) -> np.ndarray:
    """Resample an integer label map ``(1, *spatial)`` (or ``(*spatial)``) to ``new_shape``.

    Each label present (including ``-1``, the outside-of-image marker) is resampled as an
    indicator with ``resampling.label_order``; a voxel takes every label whose indicator
    reaches 0.5, ascending, and 0 when none does. The dtype is kept.
    """
    seg = np.asarray(seg)
    squeeze = seg.ndim == len(new_shape)
    volume = seg if squeeze else seg[0]
    if volume.ndim != len(new_shape):
        raise ValueError(
            f"label map of shape {seg.shape} does not match new_shape {tuple(new_shape)}"
        )
    new_shape = [int(s) for s in new_shape]
    if list(volume.shape) == new_shape:
        out = volume.copy()
    else:
        orders, _ = _axis_orders(
            volume.ndim,
            resampling.label_order,
            current_spacing,
            new_spacing,
            resampling.coarse_axis_order,
            resampling.anisotropy_threshold,
        )
        out = np.zeros(new_shape, dtype=volume.dtype)
        for label in np.unique(volume):
            indicator = (volume == label).astype(np.float32)
            out[_resample_volume(indicator, new_shape, orders, clip=False) >= 0.5] = label
    return out if squeeze else out[None]


def resample_probabilities(
    probabilities: np.ndarray,
    new_shape: Sequence[int],
    current_spacing: Sequence[float],
    new_spacing: Sequence[float],
    resampling: Resampling,
) -> np.ndarray:
    """Resample per-class probabilities ``(k, *spatial)`` linearly (nearest along a coarse axis)."""
    return resample(
        probabilities,
        new_shape,
        current_spacing,
        new_spacing,
        order=resampling.probability_order,
        coarse_axis_order=resampling.coarse_axis_order,
        anisotropy_threshold=resampling.anisotropy_threshold,
    )


# the preprocessed grid ----------------------------------------------------------------


def transpose_spatial(array: np.ndarray, axes: Sequence[int]) -> np.ndarray:
    """Permute the spatial axes of ``(c, *spatial)``."""
    return array.transpose((0, *[a + 1 for a in axes]))


def case_target_spacing(
    configuration: Configuration, spacing_transposed: Sequence[float]
) -> list[float]:
    """The spacing this case is resampled to (transposed order).

    2D configurations never resample between slices: the first axis keeps the case's own spacing.
    """
    target = [float(s) for s in configuration.target_spacing]
    if configuration.spatial_dims == 2:
        target[0] = float(spacing_transposed[0])
    return target
