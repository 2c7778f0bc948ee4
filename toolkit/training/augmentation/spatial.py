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
* The crop read from the case is larger than the patch (nnU-Net's ``get_patch_size``): the
  vector of the patch's edge lengths, taken as one point, is rotated by the largest angle
  (capped at 90 degrees) about each axis in turn; each axis keeps the largest absolute
  coordinate met, divided by 0.85 and rounded down. This is the reference's estimate, not
  the bounding box over all angles: a 512^2 patch that may turn by 180 degrees reads a
  602^2 crop, so large turns and zooms sample beyond the crop.

Rotation and scaling are one sampling grid per batch on the training device. The image is
interpolated (bi/tri)linearly with zeros outside the crop. The labels are resampled as the
reference does (batchgeneratorsv2 0.3.6 as nnU-Net v2 2.8.1 configures it): per sample and
channel, each label value present as a one-hot map, interpolated linearly; the crop is padded
with the outside label -1, so a point up to half a voxel beyond a border voxel's centre still
takes that voxel's label and one further out takes -1 wherever the padding outweighs the crop;
the largest map wins and the nearest voxel's label settles ties. A cascade's second label
channel (the previous stage's prediction) is resampled the same way, on its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from toolkit.core.constants import ANISOTROPY_THRESHOLD
from toolkit.core.cropping import OUTSIDE_LABEL
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
CROP_ROTATION_CAP = math.radians(90)  # the crop rule rotates by at most this much
CROP_SCALE_MARGIN = 0.85  # the crop rule divides by the smallest scale of its (old) range
# The reference compares the interpolated one-hot maps in float16 after scaling them by 1000:
# maps closer than that precision tie, and the nearest voxel's label settles a tie.
ONE_HOT_SCALE = 1000.0
ONE_HOT_COMPARE_DTYPE = torch.float16


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


def enlarged_crop_size(patch: tuple[int, ...], limit: float, slice_stack: bool) -> tuple[int, ...]:
    """The crop the sampler reads for ``patch`` (nnU-Net's ``get_patch_size``).

    The vector of edge lengths, as one point, is rotated by ``limit`` (capped at 90 degrees)
    about each axis in turn, one rotation at a time (in 2D once); per axis the largest
    absolute coordinate, the patch edge included, is divided by 0.85 and rounded down. A
    slice stack keeps its first axis. The reference multiplies the row vector by the
    rotation matrix, i.e. rotates by ``-limit``; so does this.
    """
    dims = len(patch)
    angle = min(limit, CROP_ROTATION_CAP)
    edges = np.asarray(patch, dtype=np.float64)
    extent = edges.copy()
    for axis in range(1 if dims == 2 else 3):
        extent = np.maximum(extent, np.abs(rotation_matrix(dims, axis, -angle) @ edges))
    crop = [int(e / CROP_SCALE_MARGIN) for e in extent]
    if slice_stack:
        crop[0] = patch[0]
    return tuple(crop)


def rotation_matrix(dims: int, axis: int, angle: float) -> np.ndarray:
    """Right-handed rotation about array axis ``axis`` (3D), or in the plane (2D)."""
    m = np.eye(dims)
    i, j = (0, 1) if dims == 2 else ((axis + 1) % 3, (axis + 2) % 3)
    c, s = math.cos(angle), math.sin(angle)
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    return m


def sampling_matrix(rules: SpatialRules, angles: np.ndarray, scale: float) -> np.ndarray:
    """Maps a voxel offset from the patch centre to the offset read in the crop.

    Rotations compose as the reference's: the last axis's first, ``R2 @ R1 @ R0 @ S``
    (batchgeneratorsv2 builds ``Rz Ry Rx S`` with x, y, z the array axes 0, 1, 2).
    """
    m = np.eye(rules.dims)
    for axis, angle in zip(rules.rotation_axes, angles, strict=True):
        if angle != 0.0:
            m = rotation_matrix(rules.dims, axis, float(angle)) @ m
    s = np.ones(rules.dims)
    s[list(rules.scaled_axes)] = scale
    return m @ np.diag(s)


def central_crop(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """The patch around the crop's centre voxel ``have // 2`` (the reference's integer centre)."""
    index = [slice(None), slice(None)]
    for have, want in zip(x.shape[2:], size, strict=True):
        start = have // 2 - want // 2
        index.append(slice(start, start + want))
    return x[tuple(index)]


def sampling_grid(
    matrices: torch.Tensor, crop: tuple[int, ...], patch_size: tuple[int, ...], device
) -> torch.Tensor:
    """``grid_sample``'s grid ``(n, *patch, d)`` for per-sample ``matrices`` (n, d, d), which
    map voxel offsets from the patch centre to offsets in the crop, in array axis order."""
    n, dims = matrices.shape[0], len(patch_size)
    out_half = torch.tensor([p / 2 for p in patch_size], dtype=torch.float64)
    in_scale = torch.tensor([2 / c for c in crop], dtype=torch.float64)
    # normalised output coordinate -> normalised input coordinate, array axis order
    a = in_scale[None, :, None] * matrices.to(torch.float64) * out_half[None, None, :]
    theta = torch.zeros((n, dims, dims + 1), dtype=torch.float64)
    theta[:, :, :dims] = a.flip(1).flip(2)  # grid_sample wants (x, y[, z]) order
    theta = theta.to(device=device, dtype=torch.float32)
    return F.affine_grid(theta, [n, 1, *patch_size], align_corners=False)


def may_reach_outside(grid: torch.Tensor, crop: tuple[int, ...]) -> bool:
    """Whether linear interpolation at some point of ``grid`` (one sample's, ``(1, *patch, d)``)
    may draw on the padding beyond the crop: the reference's cheap test, one bound for all axes
    (the centre of the smallest axis's border voxel), conservative by design."""
    bound = min(1 - 1 / size for size in crop)
    low, high = (float(v) for v in torch.aminmax(grid))
    return not (-low <= bound and high <= bound)


def resample_labels(labels: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Labels ``(n, S, *crop)`` onto the grid ``(n, *patch, d)``, each sample and channel as
    batchgeneratorsv2 0.3.6 does it for nnU-Net v2 (bilinear one-hot maps, the outside label as
    padding, the nearest voxel settling ties): bit for bit, ``tests/training/
    test_resampling_agreement.py``. Memory stays at one running best map per channel."""
    out = torch.empty(
        (*labels.shape[:2], *grid.shape[1:-1]), dtype=labels.dtype, device=labels.device
    )
    crop = tuple(labels.shape[2:])
    for i in range(labels.shape[0]):
        sample_grid = grid[i : i + 1]
        reaches = may_reach_outside(sample_grid, crop)
        for c in range(labels.shape[1]):
            out[i, c] = resample_channel(labels[i, c], sample_grid, reaches)
    return out


def resample_channel(channel: torch.Tensor, grid: torch.Tensor, reaches: bool) -> torch.Tensor:
    """One label map ``(*crop)`` onto ``grid`` (``(1, *patch, d)``); ``reaches``: the grid may
    draw on the padding (:func:`may_reach_outside`), which then enters as the outside label."""
    values = torch.unique(channel).tolist()  # ascending
    if reaches and OUTSIDE_LABEL not in values:
        values = sorted([*values, OUTSIDE_LABEL])
    patch = tuple(grid.shape[1:-1])
    if len(values) == 1:
        return torch.full(patch, values[0], dtype=channel.dtype, device=channel.device)

    def sample(volume: torch.Tensor, mode: str) -> torch.Tensor:
        return F.grid_sample(
            volume[None, None], grid, mode=mode, padding_mode="zeros", align_corners=False
        )[0, 0]

    def score(value: int) -> torch.Tensor:
        one_hot = (channel == value).to(torch.float32)
        if reaches and value == OUTSIDE_LABEL:  # 1 in the padding: sample (map - 1), add 1 back
            return sample(one_hot.sub_(1).mul_(ONE_HOT_SCALE), "bilinear").add_(ONE_HOT_SCALE)
        return sample(one_hot.mul_(ONE_HOT_SCALE), "bilinear")

    def nearest() -> torch.Tensor:  # the nearest voxel of the crop padded with the outside label
        shifted = sample(channel.to(torch.float32) - OUTSIDE_LABEL, "nearest")
        return (shifted + OUTSIDE_LABEL).to(channel.dtype)

    out = torch.full(patch, values[0], dtype=channel.dtype, device=channel.device)
    if len(values) == 2:  # the two maps sum to the scale: the second wins past half of it
        high = score(values[1]).to(ONE_HOT_COMPARE_DTYPE)
        half = 0.5 * ONE_HOT_SCALE
        out.masked_fill_(high > half, values[1])
        ties = high == half
        return torch.where(ties, nearest(), out) if bool(ties.any()) else out
    nearest_label = nearest()
    best = None
    nearest_score = torch.full(patch, float("-inf"), dtype=ONE_HOT_COMPARE_DTYPE, device=out.device)
    for value in values:
        current = score(value).to(ONE_HOT_COMPARE_DTYPE)
        nearest_score = torch.where(nearest_label == value, current, nearest_score)
        if best is None:
            best = current
            continue
        out.masked_fill_(current > best, value)
        best = torch.maximum(best, current)
    # the nearest voxel's label, where it holds the top score: it settles the ties
    return torch.where(nearest_score == best, nearest_label, out)


def warp(
    image: torch.Tensor,
    labels: torch.Tensor,
    matrices: torch.Tensor,
    patch_size: tuple[int, ...],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample crops ``(n, C, *crop)`` onto patches through per-sample ``matrices``.

    ``matrices`` (n, d, d) map voxel offsets from the patch centre to offsets in the crop, in
    array axis order. Image: (bi/tri)linear, zeros outside; labels: :func:`resample_labels`.
    """
    grid = sampling_grid(matrices, tuple(image.shape[2:]), patch_size, image.device)
    warped = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return warped, resample_labels(labels, grid)


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
