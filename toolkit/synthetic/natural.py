"""A synthetic natural-image task: coloured shapes on textured backgrounds, as 2D RGB files.

``rgb`` -> ``Dataset920_SynthRGB``, written in nnU-Net v2's raw layout as its natural-image
datasets are (e.g. its road segmentation example): one RGB file per case
(``imagesTr/CASE_0000.png``, three channels in one file), grey label files
(``labelsTr/CASE.png``), ``dataset.json`` with ``file_ending`` ``.png`` (or ``.tif``/``.bmp``)
and three channels named ``rgb_to_0_1``, the name that selects nnU-Net's 8-bit colour scaling.
Test cases go to ``imagesTs/`` with their truth in ``labelsTs/`` (which convert leaves alone).

A case: a smooth, noisy background of random hue; ``disc`` (label 1) ellipses of a warm colour
and ``square`` (label 2) rotated rectangles of a cold colour, each present in every case, with
brightness and hue jitter, so colour and shape both tell them apart. Seeded: case ``i`` of a
seed is the same whatever the number of cases.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from toolkit.errors import ToolkitError
from toolkit.synthetic.shapes import blob, blur, grid_mm, smooth_field

NATURAL_KIND = "rgb"
FOLDER = "Dataset920_SynthRGB"
PREFIX = "synthrgb"
LABELS = {"background": 0, "disc": 1, "square": 2}
CHANNEL_NAME = "rgb_to_0_1"
DEFAULT_SHAPE = (64, 64)
DEFAULT_CASES = 20
FILE_ENDINGS = (".png", ".tif", ".bmp")
_SEED_STREAM = 920  # keeps these cases apart from the MSD tasks' random streams


def make_natural_case(
    case_index: int, seed: int = 0, shape: tuple[int, int] = DEFAULT_SHAPE
) -> tuple[np.ndarray, np.ndarray]:
    """Case ``case_index``: an RGB image ``(y, x, 3)`` uint8 and its labels ``(y, x)`` uint8."""
    if len(shape) != 2 or min(shape) < 24:
        raise ToolkitError(f"shape for the rgb task must be 2 sizes of at least 24, not {shape}")
    rng = np.random.default_rng([seed, _SEED_STREAM, case_index])
    grid = grid_mm(shape, (1.0, 1.0))
    half = [(n - 1) / 2.0 for n in shape]
    colour = rng.uniform(60, 190, size=3)
    texture = np.stack([smooth_field(grid, rng, (6.0, 20.0), 8) for _ in range(3)], axis=-1)
    image = colour + 30.0 * texture
    label = np.zeros(shape, dtype=np.uint8)
    y, x = grid
    for _ in range(int(rng.integers(1, 3))):  # squares first: discs may lie on top
        size = rng.uniform(0.12, 0.22) * np.asarray(shape)
        centre = [rng.uniform(-0.6, 0.6) * h for h in half]
        angle = rng.uniform(0, np.pi / 2)
        u = np.cos(angle) * (x - centre[1]) + np.sin(angle) * (y - centre[0])
        v = -np.sin(angle) * (x - centre[1]) + np.cos(angle) * (y - centre[0])
        label[(np.abs(u) <= size[1]) & (np.abs(v) <= size[0])] = 2
    for _ in range(int(rng.integers(1, 4))):
        radii = rng.uniform(0.08, 0.16) * np.asarray(shape)
        centre = [rng.uniform(-0.65, 0.65) * h for h in half]
        label[blob(grid, centre, radii, rng.uniform(0, np.pi), 0.08, rng)] = 1
    warm = np.asarray([220.0, 90.0, 40.0]) + rng.uniform(-25, 25, size=3)
    cold = np.asarray([40.0, 110.0, 225.0]) + rng.uniform(-25, 25, size=3)
    for value, tint in ((1, warm), (2, cold)):
        inside = label == value
        image[inside] = 0.35 * image[inside] + 0.65 * tint
    image = np.stack([blur(image[..., c], 0.6) for c in range(3)], axis=-1)
    image += rng.normal(0.0, 8.0, size=image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8), label


def natural_dataset_json(n_train: int, file_ending: str) -> dict:
    return {
        "name": FOLDER.split("_", 1)[1],
        "description": "Synthetic RGB images: warm discs and cold squares on textured backgrounds",
        "reference": "toolkit toolkit.synthetic (generated)",
        "licence": "CC-BY-SA 4.0",
        "channel_names": {"0": CHANNEL_NAME, "1": CHANNEL_NAME, "2": CHANNEL_NAME},
        "labels": dict(LABELS),
        "numTraining": n_train,
        "file_ending": file_ending,
    }


def _write(array: np.ndarray, path: Path) -> None:
    image = sitk.GetImageFromArray(array, isVector=array.ndim == 3)
    sitk.WriteImage(image, str(path), useCompression=True)


def generate_natural_task(
    out_dir: str | Path,
    n_cases: int | None = None,
    seed: int = 0,
    n_test: int = 2,
    force: bool = False,
    file_ending: str = ".png",
    shape: tuple[int, int] = DEFAULT_SHAPE,
) -> Path:
    """Write ``Dataset920_SynthRGB`` under ``out_dir`` (built under a temporary name); its path."""
    n_cases = DEFAULT_CASES if n_cases is None else int(n_cases)
    if n_cases < 1 or n_test < 0:
        raise ToolkitError(
            f"need at least one training case and no negative test count, not {n_cases} and {n_test}"
        )
    if file_ending not in FILE_ENDINGS:
        raise ToolkitError(
            f"file ending for the rgb task must be one of {', '.join(FILE_ENDINGS)}, not {file_ending!r}"
        )
    out_dir = Path(out_dir)
    target = out_dir / FOLDER
    if target.exists() and not force:
        raise ToolkitError("exists; use --force to make it again", target)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{FOLDER}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
            (tmp / sub).mkdir(parents=True)
        for index in range(n_cases + n_test):
            name = f"{PREFIX}_{index + 1:03d}"
            image, label = make_natural_case(index, seed, shape)
            train = index < n_cases
            _write(image, tmp / ("imagesTr" if train else "imagesTs") / f"{name}_0000{file_ending}")
            _write(label, tmp / ("labelsTr" if train else "labelsTs") / f"{name}{file_ending}")
        (tmp / "dataset.json").write_text(
            json.dumps(natural_dataset_json(n_cases, file_ending), indent=4) + "\n"
        )
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
