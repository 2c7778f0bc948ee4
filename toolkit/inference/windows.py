"""The sliding window, once for every network runtime (torch, ONNX Runtime, OpenVINO).

The volume ``(c, z, y, x)`` is covered by windows of the training patch size, placed on a grid
with a step of ``step_size`` x patch per axis (the last window ends at the border). Each
window's logits are multiplied by a Gaussian importance map (sigma = patch/8 per axis, peak 1
at the centre) and summed into per-class float32 accumulators; the sum is divided by the
summed weights at the end, so every voxel holds the Gaussian-weighted mean of the logits of
the windows covering it.

What is averaged, exactly: for one window, the logits of every network (fold) and every
mirrored copy (each mirrored back) are averaged with equal weights; these averaged logits
are then Gaussian-weighted across windows. Softmax comes later, after resampling
(:mod:`toolkit.inference.export`), so folds are combined as logits, never as probabilities.

Memory: because the windows form a full grid (a Cartesian product of per-axis start
positions) and the Gaussian map is a product of 1-D Gaussians, the summed weights are a
product of three 1-D arrays (:func:`weight_sums`); no ``(z, y, x)`` weight accumulator is
held. The only volume-sized arrays are the input and one ``(z, y, x)`` float32 accumulator per
class. 2D configurations use the same code with a patch of one slice, ``(1, py, px)``.

This module imports no torch. A runtime supplies two things: ``Forward`` callables (one per
network: the logits of a batch of patches) and an :class:`ArrayOps` (the handful of array
operations that differ between numpy and torch: padding, stacking, flipping, moving between
the compute and the accumulation side). Everything else (the grid, the Gaussian, mirroring,
averaging folds, the accumulation and the final division) is written here once:
:mod:`toolkit.inference.sliding_window` runs it on torch tensors, :mod:`.runtime` on numpy
arrays.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import numpy as np

SIGMA_SCALE = 1.0 / 8
# the smallest weight a window voxel gets, relative to the centre; keeps the map strictly
# positive (a voxel covered by windows only at their border is still predicted)
MIN_WEIGHT = 1e-6

# an array of the runtime (numpy.ndarray or torch.Tensor)
Array = Any
# logits (b, k, z, y, x) float32 of a batch of windows (b, c, z, y, x)
Forward = Callable[[Array], Array]


# --------------------------------------------------------------------------- pure rules


def gaussian_factor(size: int, sigma_scale: float = SIGMA_SCALE) -> np.ndarray:
    """1-D Gaussian over ``size`` voxels: centre at ``(size - 1) / 2``, sigma ``size * sigma_scale``, peak 1."""
    if size < 1:
        raise ValueError(f"patch size must be positive, not {size}")
    if size == 1:
        return np.ones(1, dtype=np.float64)
    sigma = size * sigma_scale
    offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2
    values = np.exp(-0.5 * (offsets / sigma) ** 2)
    values /= values.max()
    return np.maximum(values, MIN_WEIGHT)


def gaussian_factors(
    patch_size: Sequence[int], sigma_scale: float = SIGMA_SCALE
) -> list[np.ndarray]:
    return [gaussian_factor(int(s), sigma_scale) for s in patch_size]


def gaussian_importance_map(
    patch_size: Sequence[int], sigma_scale: float = SIGMA_SCALE
) -> np.ndarray:
    """The importance map of one window: the outer product of the per-axis Gaussians (float32)."""
    result = np.ones((), dtype=np.float64)
    for factor in gaussian_factors(patch_size, sigma_scale):
        result = np.multiply.outer(result, factor)
    return result.astype(np.float32)


def window_starts(image_size: int, patch_size: int, step_size: float) -> list[int]:
    """Start positions along one axis: first at 0, last at ``image_size - patch_size``.

    The number of windows is the fewest whose spacing does not exceed ``step_size * patch``;
    they are spread evenly (rounded to voxels). A patch of one voxel visits every position.
    Duplicates are dropped.
    """
    if not 0 < step_size <= 1:
        raise ValueError(f"step_size must be in (0, 1], not {step_size}")
    if image_size < patch_size:
        raise ValueError(
            f"image size {image_size} is smaller than the patch {patch_size}: pad first"
        )
    free = image_size - patch_size
    if free == 0:
        return [0]
    if patch_size == 1:
        return list(range(image_size))
    n = math.ceil(free / (patch_size * step_size)) + 1
    step = free / (n - 1)
    return sorted({int(round(step * i)) for i in range(n)})


def window_grid(
    image_shape: Sequence[int], patch_size: Sequence[int], step_size: float
) -> list[list[int]]:
    """Per-axis start positions; the windows are their Cartesian product."""
    if len(image_shape) != len(patch_size):
        raise ValueError(
            f"image shape {tuple(image_shape)} and patch {tuple(patch_size)} differ in length"
        )
    return [
        window_starts(int(i), int(p), step_size)
        for i, p in zip(image_shape, patch_size, strict=True)
    ]


def weight_sums(
    image_shape: Sequence[int], grid: Sequence[Sequence[int]], factors: Sequence[np.ndarray]
) -> list[np.ndarray]:
    """Per axis, the sum of the Gaussian factors of all windows at every position.

    Their outer product is the total weight every voxel received (windows form a full grid).
    """
    sums = []
    for size, starts, factor in zip(image_shape, grid, factors, strict=True):
        total = np.zeros(int(size), dtype=np.float64)
        for s in starts:
            total[s : s + len(factor)] += factor
        if (total <= 0).any():
            raise AssertionError("a voxel is covered by no window")
        sums.append(total)
    return sums


def padding_to_patch(
    image_shape: Sequence[int], patch_size: Sequence[int]
) -> list[tuple[int, int]]:
    """(before, after) zero padding per axis so that every axis is at least the patch size."""
    pads = []
    for size, patch in zip(image_shape, patch_size, strict=True):
        missing = max(0, int(patch) - int(size))
        pads.append((missing // 2, missing - missing // 2))
    return pads


def mirror_combinations(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of ``axes`` (the identity ``()`` first): 2^len(axes) combinations."""
    axes = tuple(sorted(set(int(a) for a in axes)))
    return [combo for r in range(len(axes) + 1) for combo in itertools.combinations(axes, r)]


def count_windows(image_shape: Sequence[int], patch_size: Sequence[int], step_size: float) -> int:
    padded = [max(int(i), int(p)) for i, p in zip(image_shape, patch_size, strict=True)]
    return math.prod(len(starts) for starts in window_grid(padded, patch_size, step_size))


def window_slices(
    grid: Sequence[Sequence[int]], patch: Sequence[int]
) -> Iterator[tuple[slice, slice, slice]]:
    """The ``(z, y, x)`` slices of every window of the grid, x fastest."""
    for z, y, x in itertools.product(*grid):
        yield (slice(z, z + patch[0]), slice(y, y + patch[1]), slice(x, x + patch[2]))


def windows_per_batch(images_per_forward: int, mirror_axes: Sequence[int]) -> int:
    """Windows swept together: as many as fit ``images_per_forward`` with every mirrored copy."""
    return max(1, images_per_forward // len(mirror_combinations(mirror_axes)))


def slice_forward(forward: Forward, spatial_dims: int) -> Forward:
    """A network's forward on windows ``(b, c, z, y, x)``: a 2D network sees the single slice
    ``(b, c, y, x)`` and its logits get the slice axis back."""
    if spatial_dims != 2:
        return forward

    def forward_2d(x: Array) -> Array:
        if x.shape[2] != 1:
            raise ValueError(f"a 2D network needs windows of one slice, got {tuple(x.shape)}")
        return forward(x[:, :, 0])[:, :, None]

    return forward_2d


# --------------------------------------------------------------------------- the engine


class ArrayOps(Protocol):
    """The array operations of one runtime that the sweep needs.

    "Compute side": where the networks run (a GPU, or the CPU); "accumulation side": where the
    padded volume and the accumulators live. Both may be the same.
    """

    def padded(self, data: Array, pads: Sequence[tuple[int, int]]) -> Array:
        """``data`` ``(c, z, y, x)`` as float32 on the accumulation side, zero-padded."""
        ...

    def zeros(self, shape: Sequence[int]) -> Array:
        """A float32 array of zeros on the accumulation side."""
        ...

    def batch(self, windows: Sequence[Array]) -> Array:
        """Windows ``(c, z, y, x)`` stacked into ``(b, c, z, y, x)`` on the compute side."""
        ...

    def stack(self, arrays: Sequence[Array]) -> Array:
        """Arrays of the compute side stacked along a new first axis."""
        ...

    def flip(self, array: Array, axes: Sequence[int]) -> Array:
        """``array`` flipped along ``axes`` (its own axes, not spatial ones)."""
        ...

    def on_compute(self, array: np.ndarray) -> Array:
        """A float32 numpy array (the importance map) on the compute side."""
        ...

    def on_accumulation(self, array: Array) -> Array:
        """An array of the compute side, or a float32 numpy array, on the accumulation side."""
        ...

    def copy(self, array: Array) -> Array:
        """A contiguous copy (a crop that must not keep the padded volume alive)."""
        ...


def _flip_window(ops: ArrayOps, window: Array, spatial_axes: Sequence[int]) -> Array:
    # window is (c, z, y, x); spatial axis a is array axis a + 1
    return ops.flip(window, [a + 1 for a in spatial_axes]) if spatial_axes else window


def mean_window_logits(
    forwards: Sequence[Forward],
    x: Array,
    mirror_axes: Sequence[int],
    images_per_forward: int,
    ops: ArrayOps,
) -> Array:
    """Mean logits (float32) of a batch of windows over every network and mirrored copy.

    ``x`` is ``(b, c, z, y, x)`` on the compute side; mirrored copies of all windows are
    concatenated into forward passes of at most ``images_per_forward`` images.
    """
    combos = mirror_combinations(mirror_axes)
    b = x.shape[0]
    total: Array | None = None
    # (combo, window index) pairs, forwarded in chunks
    jobs = [(combo, i) for combo in combos for i in range(b)]
    chunk = max(1, images_per_forward)
    for start in range(0, len(jobs), chunk):
        part = jobs[start : start + chunk]
        inputs = ops.stack([_flip_window(ops, x[i], combo) for combo, i in part])
        for forward in forwards:
            out = forward(inputs)
            for j, (combo, i) in enumerate(part):
                piece = _flip_window(ops, out[j], combo)
                if total is None:
                    total = ops.on_compute(np.zeros((b, *piece.shape), dtype=np.float32))
                total[i] += piece
    assert total is not None
    total /= len(combos) * len(forwards)
    return total


def sweep_logits(
    forwards: Sequence[Forward],
    data: Array,
    num_classes: int,
    *,
    patch_size: Sequence[int],
    step_size: float,
    mirror_axes: Sequence[int],
    images_per_forward: int,
    ops: ArrayOps,
    on_windows: Callable[[int], None] | None = None,
) -> list[Array]:
    """Gaussian-weighted mean logits of ``data`` ``(c, z, y, x)``: one ``(z, y, x)`` float32
    array per class, on the accumulation side.

    ``on_windows(n)`` is called after every batch of ``n`` windows (progress).
    """
    if data.ndim != 4:
        raise ValueError(f"data must be (c, z, y, x), got shape {tuple(data.shape)}")
    patch = tuple(int(p) for p in patch_size)
    shape = tuple(int(s) for s in data.shape[1:])
    pads = padding_to_patch(shape, patch)
    data = ops.padded(data, pads)
    padded = tuple(int(s) for s in data.shape[1:])

    grid = window_grid(padded, patch, step_size)
    factors = gaussian_factors(patch)
    gaussian = ops.on_compute(gaussian_importance_map(patch))
    accumulators = [ops.zeros(padded) for _ in range(num_classes)]

    per_batch = windows_per_batch(images_per_forward, mirror_axes)
    slices = list(window_slices(grid, patch))
    for start in range(0, len(slices), per_batch):
        batch = slices[start : start + per_batch]
        x = ops.batch([data[(slice(None), *sl)] for sl in batch])
        logits = mean_window_logits(forwards, x, mirror_axes, images_per_forward, ops)
        if logits.shape[1] != num_classes:
            raise ValueError(
                f"the network returned {logits.shape[1]} channels, expected {num_classes} classes"
            )
        logits *= gaussian
        logits = ops.on_accumulation(logits)
        for sl, window in zip(batch, logits, strict=True):
            for c in range(num_classes):
                accumulators[c][sl] += window[c]
        if on_windows is not None:
            on_windows(len(batch))

    sums = weight_sums(padded, grid, factors)
    wz = ops.on_accumulation(sums[0].astype(np.float32))
    wyx = ops.on_accumulation(np.multiply.outer(sums[1], sums[2]).astype(np.float32))
    cropped = any(p != (0, 0) for p in pads)
    crop = tuple(
        slice(before, before + size) for (before, _), size in zip(pads, shape, strict=True)
    )
    result = []
    for c in range(num_classes):
        acc = accumulators[c]
        acc /= wyx
        acc /= wz[:, None, None]
        if cropped:
            acc = ops.copy(acc[crop])
        accumulators[c] = None
        result.append(acc)
    return result


class NumpyOps:
    """:class:`ArrayOps` for numpy arrays: compute and accumulation both in memory."""

    def padded(self, data: np.ndarray, pads: Sequence[tuple[int, int]]) -> np.ndarray:
        data = np.asarray(data, dtype=np.float32)
        if any(p != (0, 0) for p in pads):
            data = np.pad(data, [(0, 0), *pads], mode="constant", constant_values=0.0)
        return data

    def zeros(self, shape: Sequence[int]) -> np.ndarray:
        return np.zeros(tuple(shape), dtype=np.float32)

    def batch(self, windows: Sequence[np.ndarray]) -> np.ndarray:
        return np.ascontiguousarray(np.stack(windows))

    def stack(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        return np.ascontiguousarray(np.stack(arrays))

    def flip(self, array: np.ndarray, axes: Sequence[int]) -> np.ndarray:
        return np.flip(array, tuple(axes))

    def on_compute(self, array: np.ndarray) -> np.ndarray:
        return np.asarray(array, dtype=np.float32)

    def on_accumulation(self, array: np.ndarray) -> np.ndarray:
        return np.asarray(array, dtype=np.float32)

    def copy(self, array: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(array)
