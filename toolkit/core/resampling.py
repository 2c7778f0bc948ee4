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
from collections.abc import Callable, Sequence
from functools import lru_cache, partial

import numpy as np
from scipy import ndimage
from threadpoolctl import ThreadpoolController

from toolkit.core.constants import ANISOTROPY_THRESHOLD
from toolkit.core.plans import Configuration, Resampling

# float32 bytes per slab while resampling: small beside a CT volume, big enough for fast products
SLAB_BYTES = 32 << 20

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


def _span(ndim: int, axis: int, start: int, stop: int) -> tuple[slice, ...]:
    index = [slice(None)] * ndim
    index[axis] = slice(start, stop)
    return tuple(index)


def _blocks(size: int, item_bytes: int, budget: int) -> list[tuple[int, int]]:
    """``[start, stop)`` runs along an axis of ``size`` with at most ``budget`` bytes each."""
    step = max(1, budget // max(item_bytes, 1))
    return [(start, min(size, start + step)) for start in range(0, size, step)]


def _resample_slabs(
    volume: np.ndarray,
    new_shape: Sequence[int],
    orders: Sequence[int],
    emit: Callable[[tuple[slice, ...], np.ndarray], None],
    budget: int,
) -> None:
    """Resample ``volume`` (any real dtype) axis by axis and hand the float32 result to ``emit``.

    The axes that change are resampled one after the other, smallest output first, exactly
    as on the whole volume, but slab by slab: all of them but the last on slabs across the
    last (which they leave untouched) into one float32 intermediate, then the last on slabs
    across another axis, each result block handed to ``emit(index, block)`` with its place in
    the output. Only the intermediate and slabs of ``budget`` bytes exist beside the input
    and the output, and no float64 or whole-volume copy is made.
    """
    ndim = volume.ndim
    moving = sorted(
        (a for a in range(ndim) if volume.shape[a] != new_shape[a]),
        key=lambda a: new_shape[a] / volume.shape[a],
    )
    last, first = moving[-1], moving[:-1]
    with _single_threaded_blas():
        mid = volume
        if first:
            mid_shape = [int(new_shape[a]) if a in first else volume.shape[a] for a in range(ndim)]
            widest = max(
                math.prod(
                    max(volume.shape[a], int(new_shape[a])) for a in range(ndim) if a != last
                ),
                1,
            )
            mid = np.empty(mid_shape, dtype=np.float32)
            for start, stop in _blocks(volume.shape[last], 4 * widest, budget):
                index = _span(ndim, last, start, stop)
                slab = np.ascontiguousarray(volume[index], dtype=np.float32)
                for axis in first:
                    slab = _apply_axis(slab, axis, int(new_shape[axis]), orders[axis])
                mid[index] = slab
                del slab
        others = [a for a in range(ndim) if a != last]
        if not others:
            emit(
                (slice(None),),
                _apply_axis(np.asarray(mid, np.float32), last, int(new_shape[last]), orders[last]),
            )
            return
        across = max(others, key=lambda a: mid.shape[a])
        per_item = 4 * max(mid.shape[last], int(new_shape[last]))
        per_item *= math.prod(mid.shape[a] for a in others if a != across)
        for start, stop in _blocks(mid.shape[across], per_item, budget):
            index = _span(ndim, across, start, stop)
            slab = np.ascontiguousarray(mid[index], dtype=np.float32)
            emit(index, _apply_axis(slab, last, int(new_shape[last]), orders[last]))


def _store_clipped(target: np.ndarray, bounds, index: tuple[slice, ...], block: np.ndarray) -> None:
    if bounds is not None:
        low, high = bounds(index)
        np.clip(block, low, high, out=block)
    target[index] = block


def _store_label(target: np.ndarray, label, index: tuple[slice, ...], block: np.ndarray) -> None:
    part = target[index]
    part[block >= 0.5] = label


def _clip_bounds(
    volume: np.ndarray, new_shape: Sequence[int], orders: Sequence[int], coarse: int | None
) -> Callable[[tuple[slice, ...]], tuple[np.ndarray | float, np.ndarray | float]] | None:
    """The input's range that a block of the output is clipped to (``None``: no clipping).

    Linear and nearest interpolation never leave the input's range. With nearest neighbour
    along a coarse axis, slices interpolated in-plane keep their own range, carried along.
    """
    if all(o <= 1 for o in orders):
        return None
    if coarse is not None and orders[coarse] == 0:
        other = tuple(a for a in range(volume.ndim) if a != coarse)
        select = axis_operator(volume.shape[coarse], int(new_shape[coarse]), 0)
        shape = [1] * volume.ndim
        shape[coarse] = -1
        lo = (select @ volume.min(axis=other).astype(np.float64)).astype(np.float32).reshape(shape)
        hi = (select @ volume.max(axis=other).astype(np.float64)).astype(np.float32).reshape(shape)

        def bounds(index: tuple[slice, ...]):
            part = tuple(index[coarse] if a == coarse else slice(None) for a in range(len(shape)))
            return lo[part], hi[part]

        return bounds
    low, high = np.float32(volume.min()), np.float32(volume.max())
    return lambda index: (low, high)


def resample(
    array: np.ndarray,
    new_shape: Sequence[int],
    current_spacing: Sequence[float],
    new_spacing: Sequence[float],
    order: int = 3,
    coarse_axis_order: int = 0,
    anisotropy_threshold: float = ANISOTROPY_THRESHOLD,
    *,
    slab_bytes: int = SLAB_BYTES,
) -> np.ndarray:
    """Resample ``(c, *spatial)`` real data to ``(c, *new_shape)`` (float32).

    ``current_spacing``/``new_spacing`` decide whether one axis is coarse (then resampled
    with ``coarse_axis_order``); they do not change ``new_shape``. One channel at a time, in
    slabs of ``slab_bytes``: beside the input and the output, one float32 intermediate
    (the channel with all but one axis resampled) and a few slabs.
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
        channel = array[c]
        emit = partial(_store_clipped, out[c], _clip_bounds(channel, new_shape, orders, axis))
        _resample_slabs(channel, new_shape, orders, emit, slab_bytes)
    return out


def resample_labels(
    seg: np.ndarray,
    new_shape: Sequence[int],
    current_spacing: Sequence[float],
    new_spacing: Sequence[float],
    resampling: Resampling,
    *,
    slab_bytes: int = SLAB_BYTES,
) -> np.ndarray:
    """Resample an integer label map ``(1, *spatial)`` (or ``(*spatial)``) to ``new_shape``.

    Each label present (including ``-1``, the outside-of-image marker) is resampled as an
    indicator with ``resampling.label_order``; a voxel takes every label whose indicator
    reaches 0.5, ascending, and 0 when none does. The dtype is kept. One label at a time,
    its indicator a boolean map made float32 slab by slab and thresholded block by block:
    no one-hot array and no float copy of the whole map.
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
            emit = partial(_store_label, out, label)
            _resample_slabs(volume == label, new_shape, orders, emit, slab_bytes)
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
