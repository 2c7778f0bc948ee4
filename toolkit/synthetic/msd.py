"""Writing a synthetic task folder in the Medical Segmentation Decathlon layout.

With the quirks of real downloads: multi-modal images as one 4D NIfTI (channels along the
fourth axis), macOS ``._`` junk files next to real ones, and ``dataset.json`` listing the
cases with ``./``-relative paths. A folder is built under a temporary name and renamed into
place when complete.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from toolkit.errors import ToolkitError
from toolkit.synthetic.anatomy import SyntheticCase
from toolkit.synthetic.natural import NATURAL_KIND, generate_natural_task
from toolkit.synthetic.tasks import KINDS, TaskSpec, check_shape, make_case, task_spec

# a sparsely annotated task's dense labels of its test cases (not part of the MSD layout)
DENSE_TEST_LABELS = "labelsTs"

# header of a macOS AppleDouble file, what `._x.nii.gz` junk in real downloads starts with
_APPLEDOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(64)


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


def _label_to_sitk(case: SyntheticCase, array: np.ndarray | None = None) -> sitk.Image:
    label = sitk.GetImageFromArray(case.label if array is None else array, isVector=False)
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
        "tensorImageSize": ("3D" if len(spec.modality) == 1 else "4D")
        if spec.dimension == 3
        else "2D",
        "modality": {str(i): m for i, m in enumerate(spec.modality)},
        "labels": _labels(spec),
        "numTraining": len(train),
        "numTest": len(test),
        "training": [
            {"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in train
        ],
        "test": [f"./imagesTs/{c}.nii.gz" for c in test],
        **(
            {"regions_class_order": list(spec.regions_class_order)}
            if spec.regions_class_order is not None
            else {}
        ),
    }


def _labels(spec: TaskSpec) -> dict:
    """MSD's value -> name labels; nnU-Net v2's name -> values when the task declares regions."""
    if spec.regions is None:
        return {str(i): name for i, name in enumerate(spec.labels)}
    return {"background": 0, **{name: list(v) for name, v in spec.regions.items()}}


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
    shape = check_shape(spec, shape)
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
        if spec.kind == "sparse":
            (tmp / DENSE_TEST_LABELS).mkdir()
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
            elif case.dense_label is not None:
                sitk.WriteImage(
                    _label_to_sitk(case, case.dense_label),
                    str(tmp / DENSE_TEST_LABELS / f"{name}.nii.gz"),
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
    """Several tasks (``all`` expands to every kind, ``rgb`` included); their folders in order."""
    expanded: list[str] = []
    for kind in kinds:
        for k in (*KINDS, NATURAL_KIND) if kind == "all" else (kind,):
            if k != NATURAL_KIND:
                task_spec(k)
            if k not in expanded:
                expanded.append(k)
    return [
        generate_natural_task(out_dir, n_cases=n_cases, seed=seed, n_test=n_test, force=force)
        if k == NATURAL_KIND
        else generate_task(k, out_dir, n_cases=n_cases, seed=seed, n_test=n_test, force=force)
        for k in expanded
    ]
