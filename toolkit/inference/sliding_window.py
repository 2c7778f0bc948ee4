"""Sliding-window prediction of one preprocessed volume.

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
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from toolkit.core.constants import STEP_SIZE
from toolkit.core.device import PRECISIONS, autocast

SIGMA_SCALE = 1.0 / 8
# the smallest weight a window voxel gets, relative to the centre; keeps the map strictly
# positive (a voxel covered by windows only at their border is still predicted)
MIN_WEIGHT = 1e-6


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


# --------------------------------------------------------------------------- the engine


@dataclass(frozen=True)
class WindowSettings:
    """How one volume is swept.

    ``patch_size`` has three entries on the ``(z, y, x)`` grid of the preprocessed volume (a
    2D configuration's is ``(1, py, px)``); ``mirror_axes`` are axes of that grid (0, 1, 2);
    ``images_per_forward`` bounds the batch of one forward pass (windows times mirrored
    copies).
    """

    patch_size: tuple[int, int, int]
    step_size: float = STEP_SIZE
    mirror_axes: tuple[int, ...] = ()
    images_per_forward: int = 1
    precision: str = "fp32"  # fp32, bf16 (autocast) or fp16 (autocast)

    def __post_init__(self) -> None:
        if len(self.patch_size) != 3:
            raise ValueError(f"patch_size needs 3 entries (z, y, x), got {self.patch_size}")
        if not 0 < self.step_size <= 1:
            raise ValueError(f"step_size must be in (0, 1], not {self.step_size}")
        if any(a not in (0, 1, 2) for a in self.mirror_axes):
            raise ValueError(f"mirror_axes must be among 0, 1, 2, not {self.mirror_axes}")
        if self.images_per_forward < 1:
            raise ValueError(
                f"images_per_forward must be at least 1, not {self.images_per_forward}"
            )
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {self.precision!r}")


def forward_logits(network: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits of ``x`` ``(b, c, z, y, x)``; a 2D network sees the single slice ``(b, c, y, x)``."""
    if getattr(network, "spatial_dims", 3) == 2:
        if x.shape[2] != 1:
            raise ValueError(f"a 2D network needs windows of one slice, got {tuple(x.shape)}")
        out = network(x[:, :, 0])
        out = out[0] if isinstance(out, list | tuple) else out
        return out[:, :, None]
    out = network(x)
    return out[0] if isinstance(out, list | tuple) else out


def predict_windows(
    networks: Sequence[nn.Module],
    x: torch.Tensor,
    mirror_axes: Sequence[int],
    images_per_forward: int,
    precision: str = "fp32",
) -> torch.Tensor:
    """Mean logits (float32) of a batch of windows over every network and mirrored copy.

    ``x`` is ``(b, c, z, y, x)`` on the compute device; mirrored copies of all windows are
    concatenated into forward passes of at most ``images_per_forward`` images.
    """
    combos = mirror_combinations(mirror_axes)
    b = x.shape[0]
    total: torch.Tensor | None = None
    # (combo, window index) pairs, forwarded in chunks
    jobs = [(combo, i) for combo in combos for i in range(b)]
    chunk = max(1, images_per_forward)
    with autocast(x.device, precision):
        for start in range(0, len(jobs), chunk):
            part = jobs[start : start + chunk]
            inputs = torch.stack([_flip(x[i], combo) for combo, i in part])
            for network in networks:
                out = forward_logits(network, inputs).float()
                for j, (combo, i) in enumerate(part):
                    piece = _flip(out[j], combo)
                    if total is None:
                        total = torch.zeros(
                            (b, *piece.shape), dtype=torch.float32, device=piece.device
                        )
                    total[i] += piece
    assert total is not None
    total /= len(combos) * len(networks)
    return total


def _flip(t: torch.Tensor, spatial_axes: Sequence[int]) -> torch.Tensor:
    # t is (c, z, y, x); spatial axis a is tensor dim a + 1
    return torch.flip(t, [a + 1 for a in spatial_axes]) if spatial_axes else t


def _window_slices(
    grid: Sequence[Sequence[int]], patch: Sequence[int]
) -> Iterator[tuple[slice, slice, slice]]:
    for z, y, x in itertools.product(*grid):
        yield (slice(z, z + patch[0]), slice(y, y + patch[1]), slice(x, x + patch[2]))


@torch.inference_mode()
def sliding_window_logits(
    networks: Sequence[nn.Module],
    data: torch.Tensor,
    num_classes: int,
    settings: WindowSettings,
    device: torch.device,
    accumulate_device: torch.device,
    on_windows: Callable[[int], None] | None = None,
) -> list[torch.Tensor]:
    """Gaussian-weighted mean logits of ``data`` ``(c, z, y, x)``: one ``(z, y, x)`` float32 tensor per class.

    ``device`` runs the networks; ``accumulate_device`` holds the (padded) input and the
    accumulators (the GPU when they fit there, else the CPU, which the caller decides).
    ``on_windows(n)`` is called after every batch of ``n`` windows (progress).
    """
    if data.ndim != 4:
        raise ValueError(f"data must be (c, z, y, x), got shape {tuple(data.shape)}")
    patch = tuple(int(p) for p in settings.patch_size)
    shape = tuple(int(s) for s in data.shape[1:])
    pads = padding_to_patch(shape, patch)
    data = data.to(accumulate_device, torch.float32)
    if any(p != (0, 0) for p in pads):
        flat = [v for pair in reversed(pads) for v in pair]  # F.pad wants the last axis first
        data = F.pad(data, flat, mode="constant", value=0.0)
    padded = tuple(int(s) for s in data.shape[1:])

    grid = window_grid(padded, patch, settings.step_size)
    factors = gaussian_factors(patch)
    gaussian = torch.from_numpy(gaussian_importance_map(patch)).to(device)
    accumulators = [
        torch.zeros(padded, dtype=torch.float32, device=accumulate_device)
        for _ in range(num_classes)
    ]

    windows_per_batch = max(
        1, settings.images_per_forward // len(mirror_combinations(settings.mirror_axes))
    )
    slices = list(_window_slices(grid, patch))
    for start in range(0, len(slices), windows_per_batch):
        batch = slices[start : start + windows_per_batch]
        x = torch.stack([data[(slice(None), *sl)] for sl in batch]).to(device, non_blocking=True)
        logits = predict_windows(
            networks, x, settings.mirror_axes, settings.images_per_forward, settings.precision
        )
        if logits.shape[1] != num_classes:
            raise ValueError(
                f"the network returned {logits.shape[1]} channels, expected {num_classes} classes"
            )
        logits *= gaussian
        logits = logits.to(accumulate_device)
        for sl, window in zip(batch, logits, strict=True):
            for c in range(num_classes):
                accumulators[c][sl] += window[c]
        if on_windows is not None:
            on_windows(len(batch))

    sums = weight_sums(padded, grid, factors)
    wz = torch.from_numpy(sums[0].astype(np.float32)).to(accumulate_device)
    wyx = torch.from_numpy(np.multiply.outer(sums[1], sums[2]).astype(np.float32)).to(
        accumulate_device
    )
    crop = tuple(
        slice(before, before + size) for (before, _), size in zip(pads, shape, strict=True)
    )
    result = []
    for c in range(num_classes):
        acc = accumulators[c]
        acc /= wyx
        acc /= wz[:, None, None]
        if any(p != (0, 0) for p in pads):
            acc = acc[crop].clone()
        accumulators[c] = None  # type: ignore[call-overload]
        result.append(acc)
    return result
