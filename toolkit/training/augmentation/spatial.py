"""Spatial augmentation: the rules for a patch size, the batched rotation + scaling + crop
(:class:`SpatialTransform`) and mirroring (:class:`Mirror`).

The rules (the reference implementation's, checked against nnU-Net v2):

* 3D patches rotate about every axis, each angle uniform in +-30 degrees. When the patch is
  anisotropic (largest edge more than 3x the first, coarse, axis) the data is treated as a
  stack of slices: rotation only in-plane (about the first axis) by up to +-180 degrees,
  scaling only in-plane, and the first axis is neither enlarged nor resampled.
* 2D patches rotate by up to +-180 degrees, or +-15 degrees when the patch is elongated
  (aspect ratio above 1.5).
* Scaling: one factor for all (scaled) axes, uniform in 0.7-1.4; a factor above 1 samples a
  larger region, so structures appear smaller.
* The crop read from the case is larger than the patch, so the rotated and scaled sampling
  grid stays inside real data: the bounding box of the patch rotated by any angle up to the
  limit, divided by 0.85 (the reference enlarges by the same factor). Crop minus patch is
  kept even so an untransformed sample is an exact central crop.

Rotation and scaling are one ``grid_sample`` per batch on the training device: trilinear
(bilinear in 2D) for the image, nearest for the labels, zeros outside the crop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from toolkit.core.constants import ANISOTROPY_THRESHOLD
from toolkit.training.augmentation.framework import (
    Batch,
    RandomTransform,
    TransformParams,
    check_probability,
    check_range,
)

ROTATION_3D = math.radians(30)
ROTATION_2D = math.radians(180)
ROTATION_2D_ELONGATED = math.radians(15)
ELONGATED_2D_ASPECT = 1.5
CROP_SCALE_MARGIN = 0.85


@dataclass(frozen=True)
class SpatialRules:
    """What the spatial transforms may do for one patch size."""

    patch_size: tuple[int, ...]
    crop_size: tuple[int, ...]  # what the sampler reads, centred on the patch
    rotation_limit: float  # radians; each rotation angle is uniform in +-limit
    rotation_axes: tuple[int, ...]  # spatial axes rotated about (one for 2D and slice stacks)
    scaled_axes: tuple[int, ...]
    mirror_axes: tuple[int, ...]
    slice_stack: bool  # anisotropic 3D patch augmented in-plane only

    @property
    def dims(self) -> int:
        return len(self.patch_size)


def is_slice_stack(patch_size: tuple[int, ...] | list[int]) -> bool:
    """An anisotropic 3D patch, augmented like a stack of 2D slices."""
    return len(patch_size) == 3 and max(patch_size) / patch_size[0] > ANISOTROPY_THRESHOLD


def spatial_rules(patch_size: tuple[int, ...] | list[int]) -> SpatialRules:
    patch = tuple(int(p) for p in patch_size)
    dims = len(patch)
    if dims == 2:
        limit = (
            ROTATION_2D_ELONGATED if max(patch) / min(patch) > ELONGATED_2D_ASPECT else ROTATION_2D
        )
        rotation_axes: tuple[int, ...] = (0,)  # a 2D rotation has one angle
        scaled = (0, 1)
        stack = False
    elif dims == 3:
        stack = is_slice_stack(patch)
        if stack:
            limit, rotation_axes, scaled = ROTATION_2D, (0,), (1, 2)
        else:
            limit, rotation_axes, scaled = ROTATION_3D, (0, 1, 2), (0, 1, 2)
    else:
        raise ValueError(f"patch_size must have 2 or 3 entries, not {patch}")
    crop = enlarged_crop_size(patch, limit, stack)
    return SpatialRules(patch, crop, limit, rotation_axes, scaled, tuple(range(dims)), stack)


def _rotated_extent(a: float, b: float, limit: float) -> tuple[float, float]:
    """Largest bounding box of an a x b rectangle rotated by any angle in [0, limit]."""
    angles = np.linspace(0.0, min(limit, math.pi / 2), 91)
    c, s = np.abs(np.cos(angles)), np.abs(np.sin(angles))
    return float(np.max(a * c + b * s)), float(np.max(a * s + b * c))


def enlarged_crop_size(patch: tuple[int, ...], limit: float, slice_stack: bool) -> tuple[int, ...]:
    extent = [float(p) for p in patch]
    dims = len(patch)
    planes = [(0, 1)] if dims == 2 else ([(1, 2)] if slice_stack else [(1, 2), (0, 2), (0, 1)])
    for i, j in planes:
        ei, ej = _rotated_extent(patch[i], patch[j], limit)
        extent[i] = max(extent[i], ei)
        extent[j] = max(extent[j], ej)
    crop = []
    for axis, (p, e) in enumerate(zip(patch, extent, strict=True)):
        if slice_stack and axis == 0:
            crop.append(p)
            continue
        c = max(p, math.ceil(e / CROP_SCALE_MARGIN - 1e-6))
        c += (c - p) % 2
        crop.append(c)
    return tuple(crop)


def rotation_matrix(dims: int, axis: int, angle: float) -> np.ndarray:
    """Rotation about array axis ``axis`` (3D), or in the plane (2D)."""
    m = np.eye(dims)
    i, j = (0, 1) if dims == 2 else tuple(a for a in range(3) if a != axis)
    c, s = math.cos(angle), math.sin(angle)
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    return m


def sampling_matrix(rules: SpatialRules, angles: np.ndarray, scale: float) -> np.ndarray:
    """Maps a voxel offset from the patch centre to the offset read in the crop."""
    m = np.eye(rules.dims)
    for axis, angle in zip(rules.rotation_axes, angles, strict=True):
        if angle != 0.0:
            m = m @ rotation_matrix(rules.dims, axis, float(angle))
    s = np.ones(rules.dims)
    s[list(rules.scaled_axes)] = scale
    return m @ np.diag(s)


def central_crop(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    spatial = x.shape[2:]
    index = [slice(None), slice(None)]
    for have, want in zip(spatial, size, strict=True):
        start = (have - want) // 2
        index.append(slice(start, start + want))
    return x[tuple(index)]


def warp(
    image: torch.Tensor,
    labels: torch.Tensor,
    matrices: torch.Tensor,
    patch_size: tuple[int, ...],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample crops ``(n, C, *crop)`` onto patches through per-sample ``matrices``.

    ``matrices`` (n, d, d) map voxel offsets from the patch centre to offsets in the crop, in
    array axis order. Image: (bi/tri)linear; labels: nearest; zeros outside.
    """
    n, dims = image.shape[0], image.dim() - 2
    crop = image.shape[2:]
    out_half = torch.tensor([p / 2 for p in patch_size], dtype=torch.float64)
    in_scale = torch.tensor([2 / c for c in crop], dtype=torch.float64)
    # normalised output coordinate -> normalised input coordinate, array axis order
    a = in_scale[None, :, None] * matrices.to(torch.float64) * out_half[None, None, :]
    theta = torch.zeros((n, dims, dims + 1), dtype=torch.float64)
    theta[:, :, :dims] = a.flip(1).flip(2)  # grid_sample wants (x, y[, z]) order
    theta = theta.to(device=image.device, dtype=torch.float32)
    grid = F.affine_grid(theta, [n, 1, *patch_size], align_corners=False)
    warped = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    warped_labels = F.grid_sample(
        labels.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False
    )
    return warped, warped_labels.round().to(labels.dtype)


# rotation + scaling -------------------------------------------------------------------------


@dataclass
class SpatialParams(TransformParams):
    matrices: np.ndarray  # (n, d, d): patch voxel offset -> crop voxel offset
    rotated: np.ndarray  # (n,) bool
    scaled: np.ndarray  # (n,) bool


class SpatialTransform(RandomTransform):
    """Rotation (p 0.2) and scaling (p 0.2, 0.7-1.4), one resampling from crop to patch.

    Applied to every batch: samples that are neither rotated nor scaled are cut out of the
    crop without interpolation.
    """

    name = "spatial"

    def __init__(
        self,
        rules: SpatialRules,
        p_rotation: float = 0.2,
        p_scaling: float = 0.2,
        scaling=(0.7, 1.4),
    ):
        super().__init__(1.0)
        self.rules = rules
        self.p_rotation = check_probability("spatial.p_rotation", p_rotation)
        self.p_scaling = check_probability("spatial.p_scaling", p_scaling)
        self.scaling = check_range("spatial.scaling", tuple(scaling), low=1e-3)

    def sample(self, rng, batch_size, num_channels):
        rotate = rng.random(batch_size) < self.p_rotation
        scale = rng.random(batch_size) < self.p_scaling
        angles = rng.uniform(
            -self.rules.rotation_limit,
            self.rules.rotation_limit,
            (batch_size, len(self.rules.rotation_axes)),
        )
        factors = rng.uniform(*self.scaling, batch_size)
        chosen = np.flatnonzero(rotate | scale)
        matrices = (
            np.stack(
                [
                    sampling_matrix(
                        self.rules, angles[b] * rotate[b], factors[b] if scale[b] else 1.0
                    )
                    for b in chosen
                ]
            )
            if chosen.size
            else np.zeros((0, self.rules.dims, self.rules.dims))
        )
        return SpatialParams(chosen, matrices, rotate[chosen], scale[chosen])

    def apply(self, batch: Batch, params: SpatialParams | None) -> Batch:
        patch = self.rules.patch_size
        image = central_crop(batch.image, patch).contiguous()
        labels = central_crop(batch.labels, patch).contiguous()
        if params is not None and params.samples.size:
            idx = params.index(batch.image.device)
            warped, warped_labels = warp(
                batch.image.index_select(0, idx),
                batch.labels.index_select(0, idx),
                torch.from_numpy(params.matrices),
                patch,
            )
            image[idx] = warped
            labels[idx] = warped_labels
        return Batch(image, labels)


# mirroring ---------------------------------------------------------------------------------


@dataclass
class MirrorParams:
    flips: np.ndarray  # (B, n_axes) bool
    axes: tuple[int, ...]


class Mirror(RandomTransform):
    """Flip each spatial axis with p 0.5, image and labels together."""

    name = "mirror"

    def __init__(self, axes: tuple[int, ...], probability: float = 0.5):
        super().__init__(probability)
        self.axes = tuple(axes)

    def sample(self, rng, batch_size, num_channels):
        flips = rng.random((batch_size, len(self.axes))) < self.probability
        return MirrorParams(flips, self.axes) if flips.any() else None

    def apply(self, batch, params: MirrorParams):
        for column, axis in enumerate(params.axes):
            rows = np.flatnonzero(params.flips[:, column])
            if rows.size == 0:
                continue
            idx = torch.as_tensor(rows, device=batch.image.device)
            dim = 2 + axis
            batch.image[idx] = batch.image[idx].flip(dim)
            batch.labels[idx] = batch.labels[idx].flip(dim)
        return batch
