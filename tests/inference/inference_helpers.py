"""Small synthetic data for the inference tests, written in nnU-Net v2's raw layout.

Each case: a CT-like volume (Hounsfield units: air, a body, an ``organ`` (label 1) holding a
``lesion`` (label 2)) with its label map. Learnable in a few dozen iterations, written with
anisotropic spacing and, on odd cases, a non-identity direction.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from toolkit.io.images import Geometry, write_image

LABELS = {"background": 0, "organ": 1, "lesion": 2}
FLIPPED_DIRECTION = (-1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0)  # x flipped, y and z swapped


def make_case(
    seed: int, shape=(20, 48, 40), spacing_zyx=(2.5, 0.9, 0.8)
) -> tuple[np.ndarray, np.ndarray, Geometry]:
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    mm = [z * spacing_zyx[0], y * spacing_zyx[1], x * spacing_zyx[2]]
    extent = [s * sp for s, sp in zip(shape, spacing_zyx, strict=True)]
    body = ((mm[1] - extent[1] / 2) / (0.45 * extent[1])) ** 2 + (
        (mm[2] - extent[2] / 2) / (0.45 * extent[2])
    ) ** 2 < 1
    centre = [e * rng.uniform(0.4, 0.6) for e in extent]
    radii = [rng.uniform(0.22, 0.3) * min(extent[1:]) for _ in range(3)]
    radii[0] = max(radii[0], 2.5 * spacing_zyx[0])
    organ = sum(((m - c) / r) ** 2 for m, c, r in zip(mm, centre, radii, strict=True)) < 1
    lesion = sum(((m - c) / (0.45 * r)) ** 2 for m, c, r in zip(mm, centre, radii, strict=True)) < 1
    image = np.full(shape, -1000.0, dtype=np.float32)
    image[body] = 40.0
    image[organ] = 120.0
    image[lesion] = 220.0
    image += rng.normal(0, 12, size=shape).astype(np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    label[organ] = 1
    label[lesion] = 2
    direction = FLIPPED_DIRECTION if seed % 2 else (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    geometry = Geometry(
        spacing=tuple(float(s) for s in spacing_zyx[::-1]),
        origin=(float(rng.uniform(-50, 50)), float(rng.uniform(-50, 50)), -20.0),
        direction=direction,
        size=tuple(shape[::-1]),
    )
    return image, label, geometry


def write_raw_dataset(
    folder: Path, cases: int = 8, shape=(20, 48, 40), test_cases: int = 2
) -> Path:
    """A raw dataset (nnU-Net v2 layout, also ours): training cases and ``imagesTs`` cases."""
    for i in range(cases + test_cases):
        image, label, geometry = make_case(i, shape)
        case = f"synth_{i:03d}"
        subset = "Tr" if i < cases else "Ts"
        write_image(folder / f"images{subset}" / f"{case}_0000.nii.gz", image, geometry)
        if subset == "Tr":
            write_image(folder / "labelsTr" / f"{case}.nii.gz", label, geometry)
    dataset = {
        "name": "Synth",
        "channel_names": {"0": "CT"},
        "labels": LABELS,
        "numTraining": cases,
        "file_ending": ".nii.gz",
    }
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
    return folder
