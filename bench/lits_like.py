"""LiTS-sized synthetic CT for the memory bench: 512x512 slices, 350-600 of them, mixed spacings.

Each case is a body (fat rim, soft tissue, a vertebra) in air at -1024 HU, a liver-like organ
(label 1) holding one or two tumour-like lesions (label 2), with texture and noise, stored as
int16 CT and uint8 labels in the Medical Segmentation Decathlon layout (one NIfTI per case).
Spacings differ between cases, in-plane 0.6-0.9 mm and slices 0.7-5 mm, so every case is
resampled to the median spacing and the thick-slice cases are anisotropic (resampled
in-plane with third-order splines and between slices by nearest neighbour). Slices are made
a slab at a time, so generating a case needs little more memory than the case itself.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

FOLDER = "Task904_LitsLike"
PREFIX = "litslike"
IN_PLANE = 512
SLAB = 32
# (slice spacing mm, slices, in-plane spacing mm) per case, cycled: LiTS's range of scanners
CASE_GEOMETRY = (
    (0.7, 600, 0.78),
    (1.0, 500, 0.9),
    (1.5, 450, 0.6),
    (2.5, 400, 0.7),
    (5.0, 350, 0.82),
    (0.8, 560, 0.66),
)


@dataclass(frozen=True)
class CaseGeometry:
    slice_spacing: float
    slices: int
    in_plane: float

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.slices, IN_PLANE, IN_PLANE)

    @property
    def spacing_xyz(self) -> tuple[float, float, float]:
        return (self.in_plane, self.in_plane, self.slice_spacing)


def case_geometry(index: int, slices_scale: float = 1.0) -> CaseGeometry:
    z, n, xy = CASE_GEOMETRY[index % len(CASE_GEOMETRY)]
    return CaseGeometry(z, max(8, int(round(n * slices_scale))), xy)


def make_case(
    index: int, seed: int = 0, slices_scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray, CaseGeometry]:
    """Case ``index``: int16 HU ``(z, y, x)``, uint8 labels, and its geometry."""
    geo = case_geometry(index, slices_scale)
    rng = np.random.default_rng([seed, 904, index])
    nz, ny, nx = geo.shape
    s = geo.in_plane
    yy = (np.arange(ny) - (ny - 1) / 2.0)[:, None] * s
    xx = (np.arange(nx) - (nx - 1) / 2.0)[None, :] * s
    extent_z = (nz - 1) * geo.slice_spacing
    ry, rx = 130.0 * rng.uniform(0.9, 1.05), 170.0 * rng.uniform(0.9, 1.05)
    body = (yy / ry) ** 2 + (xx / rx) ** 2 <= 1.0
    inner = (yy / (ry - 12)) ** 2 + (xx / (rx - 12)) ** 2 <= 1.0
    spine = ((yy - 0.6 * ry) / 18.0) ** 2 + (xx / 22.0) ** 2 <= 1.0
    # the liver: an ellipsoid on the patient's right, over the middle third of the scan
    liver_c = (extent_z * rng.uniform(0.45, 0.55), -0.1 * ry, -0.35 * rx)
    liver_r = (min(90.0, extent_z * 0.3), 0.45 * ry, 0.4 * rx)
    lesions = [
        (
            (
                liver_c[0] + rng.uniform(-0.4, 0.4) * liver_r[0],
                liver_c[1] + rng.uniform(-0.3, 0.3) * liver_r[1],
                liver_c[2] + rng.uniform(-0.3, 0.3) * liver_r[2],
            ),
            rng.uniform(8.0, 25.0),
        )
        for _ in range(int(rng.integers(1, 3)))
    ]
    liver_hu, lesion_hu = rng.uniform(90, 110), rng.choice([rng.uniform(20, 45), 150.0])
    image = np.empty(geo.shape, dtype=np.int16)
    label = np.zeros(geo.shape, dtype=np.uint8)
    texture = rng.normal(0.0, 1.0, size=(ny // 8, nx // 8)).astype(np.float32)
    texture = np.kron(texture, np.ones((8, 8), dtype=np.float32))[:ny, :nx] * 8.0
    for start in range(0, nz, SLAB):
        stop = min(nz, start + SLAB)
        z = (np.arange(start, stop) * geo.slice_spacing)[:, None, None]
        liver = ((z - liver_c[0]) / liver_r[0]) ** 2 + ((yy - liver_c[1]) / liver_r[1]) ** 2 + (
            (xx - liver_c[2]) / liver_r[2]
        ) ** 2 <= 1.0
        liver &= inner & ~spine
        lesion = np.zeros_like(liver)
        for (cz, cy, cx), r in lesions:
            lesion |= ((z - cz) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & liver
        hu = np.full((stop - start, ny, nx), -1024.0, dtype=np.float32)
        hu[:, body] = -100.0
        hu[:, inner] = 40.0 + texture[inner]
        hu[:, spine] = 650.0
        hu[liver] = liver_hu
        hu[lesion] = lesion_hu
        hu[:, body] += rng.normal(0.0, 12.0, size=(stop - start, int(body.sum()))).astype(
            np.float32
        )
        image[start:stop] = np.clip(np.round(hu), -1024, 3071)
        label[start:stop][liver] = 1
        label[start:stop][lesion] = 2
    return image, label, geo


def _write(array: np.ndarray, geo: CaseGeometry, path: Path) -> None:
    image = sitk.GetImageFromArray(array, isVector=False)
    image.SetSpacing(geo.spacing_xyz)
    sitk.WriteImage(image, str(path), useCompression=True)


def generate_lits_like(
    out_dir: Path, n_cases: int, seed: int = 0, slices_scale: float = 1.0
) -> Path:
    """The MSD task folder under ``out_dir`` (kept when it already holds these cases)."""
    target = out_dir / FOLDER
    stamp = {"cases": n_cases, "seed": seed, "slices_scale": slices_scale}
    stamp_file = out_dir / f"{FOLDER}.json"
    if target.is_dir() and stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp:
        return target
    tmp = out_dir / f".{FOLDER}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    for sub in ("imagesTr", "labelsTr", "imagesTs"):  # nnU-Net's MSD conversion wants imagesTs
        (tmp / sub).mkdir(parents=True)
    names = [f"{PREFIX}_{i:03d}" for i in range(1, n_cases + 1)]
    for i, name in enumerate(names):
        image, label, geo = make_case(i, seed, slices_scale)
        _write(image, geo, tmp / "imagesTr" / f"{name}.nii.gz")
        _write(label, geo, tmp / "labelsTr" / f"{name}.nii.gz")
        del image, label
    dataset = {
        "name": FOLDER.split("_", 1)[1],
        "description": "LiTS-sized synthetic CT: liver-like organ and tumour-like lesions",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "liver", "2": "tumour"},
        "numTraining": n_cases,
        "numTest": 0,
        "training": [
            {"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"} for n in names
        ],
        "test": [],
    }
    (tmp / "dataset.json").write_text(json.dumps(dataset, indent=4) + "\n")
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    stamp_file.write_text(json.dumps(stamp))
    return target
