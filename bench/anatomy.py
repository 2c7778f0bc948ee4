"""A segmentation task built from real brain anatomy that ships in a Debian package.

Debian's ``mricron-data`` holds the Colin 27 brain (``ch2bet``, 1 mm, skull-stripped) and
the AAL parcellation on the same grid. From them this script makes an MSD-style task of
four deep grey structures (1 caudate, 2 putamen, 3 thalamus, 4 hippocampus; left and right
merged) around the basal ganglia: each "subject" is the template under a random smooth
deformation (a small affine plus a smoothed random displacement field), with a random
smooth intensity bias, a random gamma and noise. Nothing is committed: the package is
downloaded with ``apt-get download`` into ``bench/work/`` (Debian's archive is reachable
from these machines) and unpacked with ``dpkg -x``; the task is generated in seconds.

    python -m bench.anatomy OUT [--cases 20] [--test-cases 5] [--seed 0]

prints the task folder (``OUT/Task905_DeepGrey``), ready for ``toolkit convert``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from bench import harness

TASK = "Task905_DeepGrey"
PACKAGE = "mricron-data"
TEMPLATES = Path("usr/share/mricron/templates")
IMAGE_FILE, LABEL_FILE = "ch2bet.nii.gz", "aal.nii.gz"
# AAL values of each structure (left, right) -> our label
STRUCTURES = {
    "caudate": (71, 72),
    "putamen": (73, 74),
    "thalamus": (77, 78),
    "hippocampus": (37, 38),
}
MARGIN_MM = 10  # around the structures' bounding box: about 74 x 90 x 102 voxels
MAX_DISPLACEMENT_MM = 4.0
DISPLACEMENT_SMOOTHING_MM = 10.0
MAX_ROTATION_DEG = 6.0
MAX_SCALE = 0.06


def atlas_folder(work: Path = harness.WORK / "mricron") -> Path:
    """The package's template folder, downloaded and unpacked once."""
    folder = work / "x" / TEMPLATES
    if (folder / IMAGE_FILE).is_file() and (folder / LABEL_FILE).is_file():
        return folder
    work.mkdir(parents=True, exist_ok=True)
    for old in work.glob(f"{PACKAGE}_*.deb"):
        old.unlink()
    got = subprocess.run(["apt-get", "download", PACKAGE], cwd=work, capture_output=True, text=True)
    debs = sorted(work.glob(f"{PACKAGE}_*.deb"))
    if got.returncode or not debs:
        raise SystemExit(f"`apt-get download {PACKAGE}` failed: {got.stderr.strip()[-300:]}")
    subprocess.run(["dpkg", "-x", str(debs[-1]), str(work / "x")], check=True)
    return folder


def load_template(folder: Path) -> tuple[np.ndarray, np.ndarray, sitk.Image]:
    """Image (float32) and our labels (uint8), cropped around the structures, and the crop's
    reference image (geometry)."""
    image = sitk.ReadImage(str(folder / IMAGE_FILE))
    aal = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / LABEL_FILE)))
    labels = np.zeros(aal.shape, dtype=np.uint8)
    for value, pair in enumerate(STRUCTURES.values(), start=1):
        labels[np.isin(aal, pair)] = value
    spacing = np.array(image.GetSpacing()[::-1])
    margin = np.round(MARGIN_MM / spacing).astype(int)
    hits = np.argwhere(labels > 0)
    lo = np.maximum(hits.min(0) - margin, 0)
    hi = np.minimum(hits.max(0) + 1 + margin, labels.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    cropped = image[int(lo[2]) : int(hi[2]), int(lo[1]) : int(hi[1]), int(lo[0]) : int(hi[0])]
    array = sitk.GetArrayFromImage(image).astype(np.float32)[box]
    return array, labels[box], cropped


def random_subject(
    image: np.ndarray, labels: np.ndarray, spacing: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The template under a random smooth deformation, with a random bias, gamma and noise."""
    shape = np.array(image.shape)
    centre = (shape - 1) / 2
    angles = np.deg2rad(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG, 3))
    rotation = np.eye(3)
    for axis, angle in enumerate(angles):
        c, s = np.cos(angle), np.sin(angle)
        i, j = [a for a in range(3) if a != axis]
        turn = np.eye(3)
        turn[i, i], turn[i, j], turn[j, i], turn[j, j] = c, -s, s, c
        rotation = rotation @ turn
    matrix = rotation * (1 + rng.uniform(-MAX_SCALE, MAX_SCALE, 3))
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")).reshape(3, -1)
    coords = matrix @ (grid - centre[:, None]) + centre[:, None]
    sigma = DISPLACEMENT_SMOOTHING_MM / spacing
    for axis in range(3):
        field = ndimage.gaussian_filter(rng.standard_normal(tuple(shape)), sigma)
        field *= MAX_DISPLACEMENT_MM / spacing[axis] / max(np.abs(field).max(), 1e-6)
        coords[axis] += field.ravel()
    warped = ndimage.map_coordinates(image, coords, order=1, mode="constant").reshape(shape)
    warped_labels = ndimage.map_coordinates(labels, coords, order=0, mode="constant")
    bias = ndimage.gaussian_filter(rng.standard_normal(tuple(shape)), 20.0 / spacing)
    bias = np.exp(0.25 * bias / max(np.abs(bias).max(), 1e-6))
    top = max(float(warped.max()), 1e-6)
    warped = top * (warped / top) ** rng.uniform(0.8, 1.25) * bias
    warped += rng.normal(0, 0.02 * top, warped.shape) * (warped > 0)
    return warped.astype(np.float32), warped_labels.reshape(shape).astype(np.uint8)


def write_task(out: Path, cases: int, test_cases: int, seed: int) -> Path:
    folder = atlas_folder()
    image, labels, reference = load_template(folder)
    spacing = np.array(reference.GetSpacing()[::-1])
    task = out / TASK
    if task.exists():
        shutil.rmtree(task)
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (task / sub).mkdir(parents=True)
    training = []
    for k in range(cases + test_cases):
        rng = np.random.default_rng([seed, k])
        subject, subject_labels = random_subject(image, labels, spacing, rng)
        name = f"deepgrey_{k:03d}.nii.gz"
        held_out = k >= cases  # references of held-out cases go to labelsTs/
        image_dir, label_dir = ("imagesTs", "labelsTs") if held_out else ("imagesTr", "labelsTr")
        (task / label_dir).mkdir(exist_ok=True)
        for array, target in (
            (subject, task / image_dir / name),
            (subject_labels, task / label_dir / name),
        ):
            written = sitk.GetImageFromArray(array)
            written.CopyInformation(reference)
            sitk.WriteImage(written, str(target), useCompression=True)
        if not held_out:
            training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    dataset = {
        "name": "DeepGrey",
        "description": "Colin 27 deep grey structures (AAL), random smooth deformations",
        "reference": f"Debian {PACKAGE}: ch2bet and AAL; generated by bench/anatomy.py",
        "tensorImageSize": "3D",
        "modality": {"0": "MRI"},
        "labels": {"0": "background", **{str(i): n for i, n in enumerate(STRUCTURES, 1)}},
        "numTraining": cases,
        "numTest": test_cases,
        "training": training,
        "test": [f"./imagesTs/deepgrey_{k:03d}.nii.gz" for k in range(cases, cases + test_cases)],
    }
    (task / "dataset.json").write_text(json.dumps(dataset, indent=2))
    return task


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--cases", type=int, default=20, help="training cases")
    parser.add_argument("--test-cases", type=int, default=5, help="held-out cases (labelsTs/)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(write_task(args.out, args.cases, args.test_cases, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
