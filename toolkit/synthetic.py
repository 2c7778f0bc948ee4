"""Synthetic tasks in the Medical Segmentation Decathlon format, for tests and the demo.

Three tasks, each seeded (case ``i`` of a seed is the same whatever the number of cases) and
fast to make (numpy and SimpleITK only, no data files in the repository):

* ``mr`` -> ``Task901_SynthMR``: 3D, two channels (T2, ADC) in one 4D NIfTI as in MSD's
  BraTS/Prostate; a lesion made of an outer ``edema`` (label 1) around an inner ``core``
  (label 2), both in every case; anisotropic spacing (3.0 mm slices, 0.8 mm in-plane);
  skull-stripped style zero background, a smooth bias field, texture and noise.
* ``ct`` -> ``Task902_SynthCT``: 3D single-channel CT in Hounsfield units: air around a body
  with a fat rim, soft tissue, a vertebra, an ``organ`` (label 1) holding a ``lesion``
  (label 2); spacing that differs between cases (slices 1.5-2.5 mm, in-plane 1.1-1.5 mm),
  so every case is resampled to the planned spacing.
* ``2d`` -> ``Task903_Synth2D``: 2D images (2D NIfTI), an ``organ`` (1) and a ``lesion`` (2).

Objects differ from their surroundings in intensity and texture, so a small network learns
them in minutes on a CPU. The quirks of real downloads are there on purpose: MR labels
stored as float32, macOS ``._`` junk files next to real ones, and non-identity directions
(a flip or an in-plane rotation) on some cases.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from toolkit.errors import ToolkitError

# header of a macOS AppleDouble file, what `._x.nii.gz` junk in real downloads starts with
_APPLEDOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(64)


@dataclass(frozen=True)
class TaskSpec:
    kind: str
    folder: str
    prefix: str  # case names are f"{prefix}_{i:03d}"
    modality: tuple[str, ...]
    labels: tuple[str, ...]  # names of values 0, 1, 2, ...
    shape: tuple[int, ...]  # default (z, y, x), or (y, x) for 2D
    cases: int  # default number of training cases
    description: str

    @property
    def dimension(self) -> int:
        return len(self.shape)


TASKS: dict[str, TaskSpec] = {
    "mr": TaskSpec(
        kind="mr",
        folder="Task901_SynthMR",
        prefix="synthmr",
        modality=("T2", "ADC"),
        labels=("background", "edema", "core"),
        shape=(24, 64, 64),
        cases=20,
        description="Synthetic two-channel MR lesions (edema around a core), anisotropic spacing",
    ),
    "ct": TaskSpec(
        kind="ct",
        folder="Task902_SynthCT",
        prefix="synthct",
        modality=("CT",),
        labels=("background", "organ", "lesion"),
        shape=(40, 64, 64),
        cases=12,
        description="Synthetic CT (Hounsfield units): an organ holding a lesion",
    ),
    "2d": TaskSpec(
        kind="2d",
        folder="Task903_Synth2D",
        prefix="synth2d",
        modality=("MRI",),
        labels=("background", "organ", "lesion"),
        shape=(96, 96),
        cases=24,
        description="Synthetic 2D images: an organ and a lesion",
    ),
}
KINDS = tuple(TASKS)


@dataclass(frozen=True)
class SyntheticCase:
    """One case in memory: arrays in SimpleITK's order and SimpleITK's (x, y, z) geometry."""

    image: np.ndarray  # (c, z, y, x), or (c, y, x) for 2D
    label: np.ndarray  # (z, y, x), or (y, x)
    spacing: tuple[float, ...]  # (x, y[, z])
    origin: tuple[float, ...]
    direction: tuple[float, ...]  # row-major dim x dim


# ---------------------------------------------------------------------------------------------
# shapes and fields (pure)


def _grid_mm(shape: Sequence[int], spacing_zyx: Sequence[float]) -> list[np.ndarray]:
    """Physical coordinates (mm) of every voxel relative to the image centre, in array order."""
    axes = [(np.arange(n) - (n - 1) / 2.0) * s for n, s in zip(shape, spacing_zyx, strict=True)]
    return list(np.meshgrid(*axes, indexing="ij", sparse=True))


def _blob(
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


def _smooth_field(
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


def _blur(array: np.ndarray, sigma_voxels: float) -> np.ndarray:
    """Partial-volume blur (Gaussian, in voxels, in-plane and through-plane alike)."""
    image = sitk.GetImageFromArray(array.astype(np.float32), isVector=False)
    return sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(image, sigma_voxels))


def _erode(mask: np.ndarray, radius_xyz: tuple[int, ...]) -> np.ndarray:
    image = sitk.GetImageFromArray(mask.astype(np.uint8), isVector=False)
    eroded = sitk.BinaryErode(image, radius_xyz, foregroundValue=1)
    return sitk.GetArrayFromImage(eroded).astype(bool)


def _direction(dimension: int, case_index: int) -> tuple[float, ...]:
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


def _origin(rng: np.random.Generator, dimension: int) -> tuple[float, ...]:
    return tuple(float(np.round(rng.uniform(-120, 120), 3)) for _ in range(dimension))


# ---------------------------------------------------------------------------------------------
# the three kinds of case (pure: seeded generator in, arrays out)


def make_mr_case(
    rng: np.random.Generator, shape: tuple[int, int, int], case_index: int
) -> SyntheticCase:
    spacing_zyx = (3.0, 0.8, 0.8)
    grid = _grid_mm(shape, spacing_zyx)
    half = [(n - 1) / 2.0 * s for n, s in zip(shape, spacing_zyx, strict=True)]
    # the "brain": a large ellipsoid, zero outside (skull-stripped)
    body_radii = (
        half[0] * 1.25,
        half[1] * rng.uniform(0.82, 0.95),
        half[2] * rng.uniform(0.82, 0.95),
    )
    body = _blob(grid, (0.0, 0.0, 0.0), body_radii, rng.uniform(-0.3, 0.3), 0.03, rng)
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
    edema = _blob(grid, centre, edema_radii, angle, 0.12, rng) & body
    ratio = rng.uniform(0.5, 0.65)
    core_radii = tuple(
        max(r * ratio, s * 1.2) for r, s in zip(edema_radii, spacing_zyx, strict=True)
    )
    shift = [rng.uniform(-0.15, 0.15) * r for r in edema_radii]
    core_centre = tuple(c + s for c, s in zip(centre, shift, strict=True))
    core = _blob(grid, core_centre, core_radii, angle + rng.uniform(-0.5, 0.5), 0.08, rng)
    core &= _erode(edema, (2, 2, 1))  # a rim of edema all round the core

    label = np.zeros(shape, dtype=np.float32)  # float labels: a quirk of real downloads
    label[edema] = 1
    label[core] = 2

    # tissue classes with their own mean intensity and texture in each channel
    texture = _smooth_field(grid, rng, (3.0, 9.0), 12)
    means = {"T2": (0.0, 100.0, 175.0, 130.0), "ADC": (0.0, 80.0, 125.0, 45.0)}
    textures = {"T2": (0.0, 8.0, 10.0, 14.0), "ADC": (0.0, 6.0, 8.0, 5.0)}
    tissue = np.where(body, 1, 0).astype(np.int8)
    tissue[edema] = 2
    tissue[core] = 3
    bias = np.exp(0.12 * _smooth_field(grid, rng, (60.0, 140.0), 4))
    channels = []
    for name in ("T2", "ADC"):
        clean = np.asarray(means[name], dtype=np.float32)[tissue]
        clean = clean + np.asarray(textures[name], dtype=np.float32)[tissue] * texture
        clean = _blur(clean, 0.6)
        noisy = clean * bias + rng.normal(0.0, 5.0, size=shape).astype(np.float32)
        channels.append(np.where(body, np.maximum(noisy, 0.0), 0.0).astype(np.float32))
    return SyntheticCase(
        image=np.stack(channels),
        label=label,
        spacing=spacing_zyx[::-1],
        origin=_origin(rng, 3),
        direction=_direction(3, case_index),
    )


def make_ct_case(
    rng: np.random.Generator, shape: tuple[int, int, int], case_index: int
) -> SyntheticCase:
    inplane = float(np.round(rng.uniform(1.1, 1.5), 2))
    spacing_zyx = (float(rng.choice([1.5, 1.75, 2.0, 2.5])), inplane, inplane)
    grid = _grid_mm(shape, spacing_zyx)
    half = [(n - 1) / 2.0 * s for n, s in zip(shape, spacing_zyx, strict=True)]
    # body: an elliptic cylinder through all slices, with a fat rim
    ry, rx = half[1] * rng.uniform(0.7, 0.85), half[2] * rng.uniform(0.8, 0.92)
    long_z = half[0] * 10.0
    body = _blob(grid, (0.0, 0.0, 0.0), (long_z, ry, rx), 0.0, 0.02, rng)
    rim = rng.uniform(2.5, 4.5)
    inner = _blob(grid, (0.0, 0.0, 0.0), (long_z, ry - rim, rx - rim), 0.0, 0.02, rng)
    spine_r = min(ry, rx) * 0.18
    spine = (
        _blob(grid, (0.0, ry * 0.55, 0.0), (long_z, spine_r, spine_r * 1.2), 0.0, 0.0, rng) & inner
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
    organ = _blob(grid, organ_centre, organ_radii, rng.uniform(0, np.pi), 0.1, rng) & inner & ~spine
    lesion_r = rng.uniform(0.45, 0.6) * min(organ_radii[1], organ_radii[2])
    lesion_radii = (
        max(lesion_r, spacing_zyx[0] * 1.5),
        lesion_r,
        lesion_r * rng.uniform(0.85, 1.15),
    )
    lesion_centre = tuple(
        c + rng.uniform(-0.2, 0.2) * r for c, r in zip(organ_centre, organ_radii, strict=True)
    )
    lesion = _blob(grid, lesion_centre, lesion_radii, rng.uniform(0, np.pi), 0.1, rng) & organ

    label = np.zeros(shape, dtype=np.uint8)
    label[organ] = 1
    label[lesion] = 2

    hu = np.full(shape, -1000.0, dtype=np.float32)
    hu[body] = -100.0  # fat
    hu[inner] = 30.0  # soft tissue
    hu[spine] = 600.0
    hu[organ] = rng.uniform(85.0, 100.0)
    hu[lesion] = rng.choice([rng.uniform(5.0, 30.0), rng.uniform(130.0, 160.0)])
    texture = _smooth_field(grid, rng, (4.0, 12.0), 10)
    hu = hu + np.where(inner, 6.0 * texture, 0.0)
    hu = _blur(hu, 0.7) + rng.normal(0.0, 10.0, size=shape).astype(np.float32)
    image = np.clip(np.round(hu), -1024, 3071).astype(np.int16)
    return SyntheticCase(
        image=image[None],
        label=label,
        spacing=spacing_zyx[::-1],
        origin=_origin(rng, 3),
        direction=_direction(3, case_index),
    )


def make_2d_case(
    rng: np.random.Generator, shape: tuple[int, int], case_index: int
) -> SyntheticCase:
    spacing_yx = (0.5, 0.5)
    grid = _grid_mm(shape, spacing_yx)
    half = [(n - 1) / 2.0 * s for n, s in zip(shape, spacing_yx, strict=True)]
    body = _blob(grid, (0.0, 0.0), (half[0] * 0.9, half[1] * 0.9), 0.0, 0.04, rng)
    organ_radii = (rng.uniform(0.3, 0.45) * half[0], rng.uniform(0.3, 0.45) * half[1])
    organ_centre = tuple(rng.uniform(-0.25, 0.25) * h for h in half)
    organ = _blob(grid, organ_centre, organ_radii, rng.uniform(0, np.pi), 0.12, rng) & body
    lesion_r = rng.uniform(0.3, 0.45) * min(organ_radii)
    lesion_centre = tuple(
        c + rng.uniform(-0.3, 0.3) * r for c, r in zip(organ_centre, organ_radii, strict=True)
    )
    lesion = (
        _blob(grid, lesion_centre, (lesion_r, lesion_r * rng.uniform(0.8, 1.2)), 0.0, 0.1, rng)
        & organ
    )

    label = np.zeros(shape, dtype=np.uint8)
    label[organ] = 1
    label[lesion] = 2
    tissue = np.where(body, 1, 0).astype(np.int8)
    tissue[organ] = 2
    tissue[lesion] = 3
    means = np.asarray([10.0, 300.0, 520.0, 780.0], dtype=np.float32)
    texture = _smooth_field(grid, rng, (2.0, 6.0), 10)
    clean = _blur(means[tissue] + np.where(body, 25.0 * texture, 0.0), 0.7)
    bias = np.exp(0.1 * _smooth_field(grid, rng, (40.0, 80.0), 3))
    image = clean * bias + rng.normal(0.0, 18.0, size=shape).astype(np.float32)
    image = np.clip(np.round(image), 0, 4095).astype(np.int16)
    return SyntheticCase(
        image=image[None],
        label=label,
        spacing=spacing_yx[::-1],
        origin=_origin(rng, 2),
        direction=_direction(2, case_index),
    )


_MAKERS = {"mr": make_mr_case, "ct": make_ct_case, "2d": make_2d_case}


def make_case(
    kind: str, case_index: int, seed: int = 0, shape: Sequence[int] | None = None
) -> SyntheticCase:
    """Case ``case_index`` of task ``kind``; the same for the same ``(seed, case_index)``."""
    spec = task_spec(kind)
    shape = _check_shape(spec, shape)
    rng = np.random.default_rng([seed, KINDS.index(kind), case_index])
    return _MAKERS[kind](rng, shape, case_index)


def task_spec(kind: str) -> TaskSpec:
    if kind not in TASKS:
        raise ToolkitError(f"unknown synthetic task {kind!r}; choose one of {', '.join(KINDS)}")
    return TASKS[kind]


def _check_shape(spec: TaskSpec, shape: Sequence[int] | None) -> tuple[int, ...]:
    if shape is None:
        return spec.shape
    shape = tuple(int(s) for s in shape)
    minimum = (8, 24, 24)[-spec.dimension :]
    if len(shape) != spec.dimension or any(s < m for s, m in zip(shape, minimum, strict=True)):
        raise ToolkitError(
            f"shape for the {spec.kind} task must be {spec.dimension} sizes of at least {minimum}, not {shape}"
        )
    return shape


# ---------------------------------------------------------------------------------------------
# writing a task folder


def _image_to_sitk(case: SyntheticCase) -> sitk.Image:
    channels = case.image.shape[0]
    dim = len(case.spacing)
    if channels == 1:
        image = sitk.GetImageFromArray(case.image[0], isVector=False)
        image.SetSpacing(case.spacing)
        image.SetOrigin(case.origin)
        image.SetDirection(case.direction)
        return image
    # MSD's multi-modal layout: one 4D image, channels along the last (fourth) axis
    image = sitk.GetImageFromArray(case.image, isVector=False)
    direction = np.eye(dim + 1)
    direction[:dim, :dim] = np.asarray(case.direction).reshape(dim, dim)
    image.SetSpacing((*case.spacing, 1.0))
    image.SetOrigin((*case.origin, 0.0))
    image.SetDirection(tuple(direction.ravel()))
    return image


def _label_to_sitk(case: SyntheticCase) -> sitk.Image:
    label = sitk.GetImageFromArray(case.label, isVector=False)
    label.SetSpacing(case.spacing)
    label.SetOrigin(case.origin)
    label.SetDirection(case.direction)
    return label


def msd_dataset_json(spec: TaskSpec, train: list[str], test: list[str]) -> dict:
    return {
        "name": spec.folder.split("_", 1)[1],
        "description": spec.description,
        "reference": "toolkit toolkit.synthetic (generated, not real patients)",
        "licence": "CC-BY-SA 4.0",
        "release": "1.0",
        "tensorImageSize": {1: "3D", 2: "4D"}[len(spec.modality)] if spec.dimension == 3 else "2D",
        "modality": {str(i): m for i, m in enumerate(spec.modality)},
        "labels": {str(i): name for i, name in enumerate(spec.labels)},
        "numTraining": len(train),
        "numTest": len(test),
        "training": [
            {"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in train
        ],
        "test": [f"./imagesTs/{c}.nii.gz" for c in test],
    }


def generate_task(
    kind: str,
    out_dir: str | Path,
    n_cases: int | None = None,
    seed: int = 0,
    shape: Sequence[int] | None = None,
    n_test: int = 2,
    force: bool = False,
) -> Path:
    """Write the MSD task folder of ``kind`` ("mr", "ct" or "2d") under ``out_dir``; its path.

    The folder is built under a temporary name and renamed when complete. An existing task
    folder is an error unless ``force`` (then it is replaced).
    """
    spec = task_spec(kind)
    n_cases = spec.cases if n_cases is None else int(n_cases)
    if n_cases < 1 or n_test < 0:
        raise ToolkitError(
            f"need at least one training case and no negative test count, not {n_cases} and {n_test}"
        )
    shape = _check_shape(spec, shape)
    out_dir = Path(out_dir)
    target = out_dir / spec.folder
    if target.exists() and not force:
        raise ToolkitError("exists; use --force to make it again", target)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{spec.folder}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        for sub in ("imagesTr", "labelsTr", "imagesTs"):
            (tmp / sub).mkdir(parents=True)
        train = [f"{spec.prefix}_{i:03d}" for i in range(1, n_cases + 1)]
        test = [f"{spec.prefix}_{i:03d}" for i in range(n_cases + 1, n_cases + n_test + 1)]
        for index, name in enumerate(train + test):
            case = make_case(kind, index, seed, shape)
            is_train = index < n_cases
            folder = "imagesTr" if is_train else "imagesTs"
            sitk.WriteImage(
                _image_to_sitk(case), str(tmp / folder / f"{name}.nii.gz"), useCompression=True
            )
            if is_train:
                sitk.WriteImage(
                    _label_to_sitk(case),
                    str(tmp / "labelsTr" / f"{name}.nii.gz"),
                    useCompression=True,
                )
        # junk of real downloads (macOS resource forks)
        for sub in ("imagesTr", "labelsTr"):
            (tmp / sub / f"._{train[0]}.nii.gz").write_bytes(_APPLEDOUBLE)
        (tmp / "._dataset.json").write_bytes(_APPLEDOUBLE)
        (tmp / "dataset.json").write_text(
            json.dumps(msd_dataset_json(spec, train, test), indent=4) + "\n"
        )
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def generate_tasks(
    kinds: Sequence[str],
    out_dir: str | Path,
    n_cases: int | None = None,
    seed: int = 0,
    n_test: int = 2,
    force: bool = False,
) -> list[Path]:
    """Several tasks (``all`` expands to every kind); their folders in order."""
    expanded: list[str] = []
    for kind in kinds:
        for k in KINDS if kind == "all" else (kind,):
            task_spec(k)
            if k not in expanded:
                expanded.append(k)
    return [
        generate_task(k, out_dir, n_cases=n_cases, seed=seed, n_test=n_test, force=force)
        for k in expanded
    ]
