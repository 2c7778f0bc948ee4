"""Shapes and fields for the synthetic tasks (pure: numpy and SimpleITK, arrays in and out).

Blobs (ellipsoids, or ellipses in 2D, with a wavy surface), smooth random fields for texture
and bias, partial-volume blur, erosion, and the geometry (origin, direction) of a case.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk


def grid_mm(shape: Sequence[int], spacing_zyx: Sequence[float]) -> list[np.ndarray]:
    """Physical coordinates (mm) of every voxel relative to the image centre, in array order."""
    axes = [(np.arange(n) - (n - 1) / 2.0) * s for n, s in zip(shape, spacing_zyx, strict=True)]
    return list(np.meshgrid(*axes, indexing="ij", sparse=True))


def blob(
    grid: list[np.ndarray],
    centre: Sequence[float],
    radii: Sequence[float],
    angle: float,
    wobble: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """An ellipsoid (ellipse in 2D), turned by ``angle`` in-plane, with a wavy surface."""
    d = [g - c for g, c in zip(grid, centre, strict=True)]
    y, x = d[-2], d[-1]
    u = np.cos(angle) * x + np.sin(angle) * y
    v = -np.sin(angle) * x + np.cos(angle) * y
    r2 = (u / radii[-1]) ** 2 + (v / radii[-2]) ** 2
    if len(d) == 3:
        r2 = r2 + (d[0] / radii[0]) ** 2
    phi = np.arctan2(v, u)
    surface = 1.0 + wobble * (
        0.6 * np.cos(3 * phi + rng.uniform(0, 2 * np.pi))
        + 0.4 * np.cos(5 * phi + rng.uniform(0, 2 * np.pi))
    )
    return np.sqrt(r2) <= surface


def smooth_field(
    grid: list[np.ndarray],
    rng: np.random.Generator,
    wavelengths_mm: tuple[float, float],
    waves: int,
) -> np.ndarray:
    """A smooth random field of unit-ish amplitude: a sum of plane waves of random direction."""
    field = np.zeros(np.broadcast_shapes(*(g.shape for g in grid)), dtype=np.float32)
    for _ in range(waves):
        direction = rng.normal(size=len(grid))
        direction /= np.linalg.norm(direction)
        k = 2 * np.pi / rng.uniform(*wavelengths_mm)
        phase = sum(k * w * g for w, g in zip(direction, grid, strict=True))
        field += np.cos(phase + rng.uniform(0, 2 * np.pi)).astype(np.float32)
    return field * np.float32(np.sqrt(2.0 / waves))


def blur(array: np.ndarray, sigma_voxels: float) -> np.ndarray:
    """Partial-volume blur (Gaussian, in voxels, in-plane and through-plane alike)."""
    image = sitk.GetImageFromArray(array.astype(np.float32), isVector=False)
    return sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(image, sigma_voxels))


def erode(mask: np.ndarray, radius_xyz: tuple[int, ...]) -> np.ndarray:
    image = sitk.GetImageFromArray(mask.astype(np.uint8), isVector=False)
    eroded = sitk.BinaryErode(image, radius_xyz, foregroundValue=1)
    return sitk.GetArrayFromImage(eroded).astype(bool)


def case_direction(dimension: int, case_index: int) -> tuple[float, ...]:
    """Identity for most cases; a flip or an in-plane rotation for some (both exact in NIfTI)."""
    kind = case_index % 3
    if kind == 1:
        d = np.diag([-1.0, -1.0, 1.0][:dimension]) if dimension == 3 else np.diag([-1.0, 1.0])
    elif kind == 2:
        t = np.deg2rad(12.0)
        rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
        d = np.eye(dimension)
        d[:2, :2] = rot
    else:
        d = np.eye(dimension)
    return tuple(float(v) for v in d.ravel())


def random_origin(rng: np.random.Generator, dimension: int) -> tuple[float, ...]:
    return tuple(float(np.round(rng.uniform(-120, 120), 3)) for _ in range(dimension))
