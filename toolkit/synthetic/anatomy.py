"""The three kinds of synthetic case (pure: a seeded generator in, arrays out).

* ``mr``: 3D, two channels (T2, ADC); a lesion made of an outer edema (label 1) around an
  inner core (label 2), anisotropic spacing, zero background, a bias field, texture, noise;
  labels stored as float32, a quirk of real downloads.
* ``ct``: 3D CT in Hounsfield units: air, a body with a fat rim, soft tissue, a vertebra, an
  organ (label 1) holding a lesion (label 2); spacing that differs between cases.
* ``2d``: 2D images, an organ (1) and a lesion (2).
* ``brats``: an ``mr`` lesion made BraTS-like: four channels (FLAIR, T1w, T1gd, T2w), edema
  (1) around a tumour core whose rim enhances (3) around a non-enhancing inside (2).
* ``sparse``: an ``mr`` case whose label keeps only every fourth slice; the other slices hold
  the ignore value (3). The dense label is kept beside it (``dense_label``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from toolkit.synthetic.shapes import (
    blob,
    blur,
    case_direction,
    erode,
    grid_mm,
    random_origin,
    smooth_field,
)


@dataclass(frozen=True)
class SyntheticCase:
    """One case in memory: arrays in SimpleITK's order and SimpleITK's (x, y, z) geometry."""

    image: np.ndarray  # (c, z, y, x), or (c, y, x) for 2D
    label: np.ndarray  # (z, y, x), or (y, x)
    spacing: tuple[float, ...]  # (x, y[, z])
    origin: tuple[float, ...]
    direction: tuple[float, ...]  # row-major dim x dim
    dense_label: np.ndarray | None = None  # a sparsely labelled case's full annotation


def make_mr_case(
    rng: np.random.Generator, shape: tuple[int, int, int], case_index: int
) -> SyntheticCase:
    spacing_zyx = (3.0, 0.8, 0.8)
    grid = grid_mm(shape, spacing_zyx)
    half = [(n - 1) / 2.0 * s for n, s in zip(shape, spacing_zyx, strict=True)]
    # the "brain": a large ellipsoid, zero outside (skull-stripped)
    body_radii = (
        half[0] * 1.25,
        half[1] * rng.uniform(0.82, 0.95),
        half[2] * rng.uniform(0.82, 0.95),
    )
    body = blob(grid, (0.0, 0.0, 0.0), body_radii, rng.uniform(-0.3, 0.3), 0.03, rng)
    # the lesion: radii in mm scaled to the field of view so small custom shapes still work
    edema_radii = (
        min(rng.uniform(9.0, 15.0), half[0] * 0.45),
        rng.uniform(0.33, 0.48) * body_radii[1],
        rng.uniform(0.33, 0.48) * body_radii[2],
    )
    room = [0.55 * (b - r) for b, r in zip(body_radii[1:], edema_radii[1:], strict=True)]
    centre = (
        rng.uniform(-1, 1) * max(half[0] - edema_radii[0] - spacing_zyx[0], 0.0) * 0.6,
        rng.uniform(-1, 1) * room[0],
        rng.uniform(-1, 1) * room[1],
    )
    angle = rng.uniform(0, np.pi)
    edema = blob(grid, centre, edema_radii, angle, 0.12, rng) & body
    ratio = rng.uniform(0.5, 0.65)
    core_radii = tuple(
        max(r * ratio, s * 1.2) for r, s in zip(edema_radii, spacing_zyx, strict=True)
    )
    shift = [rng.uniform(-0.15, 0.15) * r for r in edema_radii]
    core_centre = tuple(c + s for c, s in zip(centre, shift, strict=True))
    core = blob(grid, core_centre, core_radii, angle + rng.uniform(-0.5, 0.5), 0.08, rng)
    core &= erode(edema, (2, 2, 1))  # a rim of edema all round the core

    label = np.zeros(shape, dtype=np.float32)  # float labels: a quirk of real downloads
    label[edema] = 1
    label[core] = 2

    # tissue classes with their own mean intensity and texture in each channel
    texture = smooth_field(grid, rng, (3.0, 9.0), 12)
    means = {"T2": (0.0, 100.0, 175.0, 130.0), "ADC": (0.0, 80.0, 125.0, 45.0)}
    textures = {"T2": (0.0, 8.0, 10.0, 14.0), "ADC": (0.0, 6.0, 8.0, 5.0)}
    tissue = np.where(body, 1, 0).astype(np.int8)
    tissue[edema] = 2
    tissue[core] = 3
    bias = np.exp(0.12 * smooth_field(grid, rng, (60.0, 140.0), 4))
    channels = []
    for name in ("T2", "ADC"):
        clean = np.asarray(means[name], dtype=np.float32)[tissue]
        clean = clean + np.asarray(textures[name], dtype=np.float32)[tissue] * texture
        clean = blur(clean, 0.6)
        noisy = clean * bias + rng.normal(0.0, 5.0, size=shape).astype(np.float32)
        channels.append(np.where(body, np.maximum(noisy, 0.0), 0.0).astype(np.float32))
    return SyntheticCase(
        image=np.stack(channels),
        label=label,
        spacing=spacing_zyx[::-1],
        origin=random_origin(rng, 3),
        direction=case_direction(3, case_index),
    )


def make_ct_case(
    rng: np.random.Generator, shape: tuple[int, int, int], case_index: int
) -> SyntheticCase:
    inplane = float(np.round(rng.uniform(1.1, 1.5), 2))
    spacing_zyx = (float(rng.choice([1.5, 1.75, 2.0, 2.5])), inplane, inplane)
    grid = grid_mm(shape, spacing_zyx)
    half = [(n - 1) / 2.0 * s for n, s in zip(shape, spacing_zyx, strict=True)]
    # body: an elliptic cylinder through all slices, with a fat rim
    ry, rx = half[1] * rng.uniform(0.7, 0.85), half[2] * rng.uniform(0.8, 0.92)
    long_z = half[0] * 10.0
    body = blob(grid, (0.0, 0.0, 0.0), (long_z, ry, rx), 0.0, 0.02, rng)
    rim = rng.uniform(2.5, 4.5)
    inner = blob(grid, (0.0, 0.0, 0.0), (long_z, ry - rim, rx - rim), 0.0, 0.02, rng)
    spine_r = min(ry, rx) * 0.18
    spine = (
        blob(grid, (0.0, ry * 0.55, 0.0), (long_z, spine_r, spine_r * 1.2), 0.0, 0.0, rng) & inner
    )
    # the organ, away from the spine, and a lesion inside it
    organ_radii = (
        min(rng.uniform(0.35, 0.5) * half[0] * 2, half[0] * 0.8),
        rng.uniform(0.33, 0.43) * ry,
        rng.uniform(0.33, 0.43) * rx,
    )
    organ_centre = (
        rng.uniform(-1, 1) * max(half[0] - organ_radii[0], 0.0) * 0.5,
        -rng.uniform(0.05, 0.25) * ry,
        rng.uniform(-1, 1) * 0.3 * rx,
    )
    organ = blob(grid, organ_centre, organ_radii, rng.uniform(0, np.pi), 0.1, rng) & inner & ~spine
    lesion_r = rng.uniform(0.45, 0.6) * min(organ_radii[1], organ_radii[2])
    lesion_radii = (
        max(lesion_r, spacing_zyx[0] * 1.5),
        lesion_r,
        lesion_r * rng.uniform(0.85, 1.15),
    )
    lesion_centre = tuple(
        c + rng.uniform(-0.2, 0.2) * r for c, r in zip(organ_centre, organ_radii, strict=True)
    )
    lesion = blob(grid, lesion_centre, lesion_radii, rng.uniform(0, np.pi), 0.1, rng) & organ

    label = np.zeros(shape, dtype=np.uint8)
    label[organ] = 1
    label[lesion] = 2

    hu = np.full(shape, -1000.0, dtype=np.float32)
    hu[body] = -100.0  # fat
    hu[inner] = 30.0  # soft tissue
    hu[spine] = 600.0
    hu[organ] = rng.uniform(85.0, 100.0)
    hu[lesion] = rng.choice([rng.uniform(5.0, 30.0), rng.uniform(130.0, 160.0)])
    texture = smooth_field(grid, rng, (4.0, 12.0), 10)
    hu = hu + np.where(inner, 6.0 * texture, 0.0)
    hu = blur(hu, 0.7) + rng.normal(0.0, 10.0, size=shape).astype(np.float32)
    image = np.clip(np.round(hu), -1024, 3071).astype(np.int16)
    return SyntheticCase(
        image=image[None],
        label=label,
        spacing=spacing_zyx[::-1],
        origin=random_origin(rng, 3),
        direction=case_direction(3, case_index),
    )


def make_2d_case(
    rng: np.random.Generator, shape: tuple[int, int], case_index: int
) -> SyntheticCase:
    spacing_yx = (0.5, 0.5)
    grid = grid_mm(shape, spacing_yx)
    half = [(n - 1) / 2.0 * s for n, s in zip(shape, spacing_yx, strict=True)]
    body = blob(grid, (0.0, 0.0), (half[0] * 0.9, half[1] * 0.9), 0.0, 0.04, rng)
    organ_radii = (rng.uniform(0.3, 0.45) * half[0], rng.uniform(0.3, 0.45) * half[1])
    organ_centre = tuple(rng.uniform(-0.25, 0.25) * h for h in half)
    organ = blob(grid, organ_centre, organ_radii, rng.uniform(0, np.pi), 0.12, rng) & body
    lesion_r = rng.uniform(0.3, 0.45) * min(organ_radii)
    lesion_centre = tuple(
        c + rng.uniform(-0.3, 0.3) * r for c, r in zip(organ_centre, organ_radii, strict=True)
    )
    lesion = (
        blob(grid, lesion_centre, (lesion_r, lesion_r * rng.uniform(0.8, 1.2)), 0.0, 0.1, rng)
        & organ
    )

    label = np.zeros(shape, dtype=np.uint8)
    label[organ] = 1
    label[lesion] = 2
    tissue = np.where(body, 1, 0).astype(np.int8)
    tissue[organ] = 2
    tissue[lesion] = 3
    means = np.asarray([10.0, 300.0, 520.0, 780.0], dtype=np.float32)
    texture = smooth_field(grid, rng, (2.0, 6.0), 10)
    clean = blur(means[tissue] + np.where(body, 25.0 * texture, 0.0), 0.7)
    bias = np.exp(0.1 * smooth_field(grid, rng, (40.0, 80.0), 3))
    image = clean * bias + rng.normal(0.0, 18.0, size=shape).astype(np.float32)
    image = np.clip(np.round(image), 0, 4095).astype(np.int16)
    return SyntheticCase(
        image=image[None],
        label=label,
        spacing=spacing_yx[::-1],
        origin=random_origin(rng, 2),
        direction=case_direction(2, case_index),
    )


BRATS_CHANNELS = ("FLAIR", "T1w", "T1gd", "T2w")
# mean intensity per tissue: outside, brain, edema, non-enhancing core, enhancing rim
_BRATS_MEANS = {
    "FLAIR": (0.0, 100.0, 190.0, 150.0, 165.0),
    "T1w": (0.0, 120.0, 100.0, 70.0, 105.0),
    "T1gd": (0.0, 120.0, 105.0, 75.0, 230.0),
    "T2w": (0.0, 100.0, 175.0, 200.0, 140.0),
}


def make_brats_case(
    rng: np.random.Generator, shape: tuple[int, int, int], case_index: int
) -> SyntheticCase:
    base = make_mr_case(rng, shape, case_index)
    label = base.label.astype(np.uint8)
    core = label == 2
    label[core] = 3  # the core's rim enhances ...
    label[erode(core, (1, 1, 0))] = 2  # ... around a non-enhancing inside
    body = base.image[0] > 0
    tissue = np.where(body, 1, 0).astype(np.int8) + label.astype(np.int8)
    grid = grid_mm(shape, base.spacing[::-1])
    texture = smooth_field(grid, rng, (3.0, 9.0), 12)
    bias = np.exp(0.1 * smooth_field(grid, rng, (60.0, 140.0), 4))
    channels = []
    for name in BRATS_CHANNELS:
        clean = np.asarray(_BRATS_MEANS[name], dtype=np.float32)[tissue] + 8.0 * texture
        noisy = blur(clean, 0.6) * bias + rng.normal(0.0, 5.0, size=shape).astype(np.float32)
        channels.append(np.where(body, np.maximum(noisy, 0.0), 0.0).astype(np.float32))
    return SyntheticCase(
        image=np.stack(channels),
        label=label,
        spacing=base.spacing,
        origin=base.origin,
        direction=base.direction,
    )


SPARSE_EVERY = 4  # one slice in this many keeps its annotation
SPARSE_IGNORE = 3  # the ignore value of the sparse task (one above core)


def sparse_label(label: np.ndarray, every: int = SPARSE_EVERY) -> np.ndarray:
    """``label`` with only slices ``0, every, 2 * every, ...`` (first axis) annotated, the rest
    set to :data:`SPARSE_IGNORE`."""
    sparse = np.full(label.shape, SPARSE_IGNORE, dtype=np.uint8)
    sparse[::every] = label[::every]
    return sparse


def make_sparse_case(
    rng: np.random.Generator, shape: tuple[int, int, int], case_index: int
) -> SyntheticCase:
    base = make_mr_case(rng, shape, case_index)
    dense = base.label.astype(np.uint8)
    return SyntheticCase(
        image=base.image,
        label=sparse_label(dense),
        spacing=base.spacing,
        origin=base.origin,
        direction=base.direction,
        dense_label=dense,
    )
