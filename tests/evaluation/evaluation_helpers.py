"""A tiny workspace with references, a split and fake cross-validation predictions.

Each configuration's probabilities are 0.6 on the reference's class and 0.2 elsewhere,
except in its *wrong* voxels, where the next class gets 0.5, the reference's class 0.4 and
the third 0.1. Its label map is the argmax. Two configurations wrong in disjoint places
therefore make a perfect ensemble, and voxels wrong in both stay wrong in the ensemble.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from toolkit.inference.ensemble import save_probabilities
from toolkit.io.dataset_json import DatasetInfo, write_dataset_info
from toolkit.io.images import Geometry, write_image
from toolkit.workspace import DatasetPaths, channel_file, label_file

LABELS = {"background": 0, "liver": 1, "tumour": 2}
NUM_CLASSES = 3
SHAPE = (8, 24, 24)  # z, y, x
SPACING_XYZ = (1.0, 1.0, 2.0)
BOX = (slice(2, 6), slice(6, 14), slice(6, 14))  # class 1 in every case, shifted per case

WrongFn = Callable[[int, np.ndarray], np.ndarray]  # (case index, reference) -> wrong voxels


def geometry(shape=SHAPE) -> Geometry:
    return Geometry(
        SPACING_XYZ,
        (0.0, 0.0, 0.0),
        (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
        tuple(shape[::-1]),
    )


def case_name(i: int) -> str:
    return f"case_{i:03d}"


def reference(i: int) -> np.ndarray:
    """Class 1: a 4x8x8 box shifted per case; class 2 (3 of 4 cases): a 2x3x3 box inside it."""
    seg = np.zeros(SHAPE, np.uint8)
    shift = (i % 3) * 2
    z, y, x = BOX
    seg[z, slice(y.start + shift, y.stop + shift), x] = 1
    if i % 4 != 3:
        seg[3:5, 8 + shift : 11 + shift, 8:11] = 2
    return seg


def object_box(ref: np.ndarray) -> tuple[slice, ...]:
    zs, ys, xs = np.nonzero(ref)
    return (
        slice(zs.min(), zs.max() + 1),
        slice(ys.min(), ys.max() + 1),
        slice(xs.min(), xs.max() + 1),
    )


def wrong_left(i: int, ref: np.ndarray) -> np.ndarray:
    """The two lowest x columns of the object."""
    wrong = np.zeros(ref.shape, bool)
    z, y, x = object_box(ref)
    wrong[z, y, x.start : x.start + 2] = True
    return wrong


def wrong_right(i: int, ref: np.ndarray) -> np.ndarray:
    """The highest x column of the object."""
    wrong = np.zeros(ref.shape, bool)
    z, y, x = object_box(ref)
    wrong[z, y, x.stop - 1 : x.stop] = True
    return wrong


def nothing_wrong(i: int, ref: np.ndarray) -> np.ndarray:
    return np.zeros(ref.shape, bool)


def spurious_blob(i: int, ref: np.ndarray) -> np.ndarray:
    """A 2x2x2 blob of class 1 far from the object (in every second case)."""
    wrong = np.zeros(ref.shape, bool)
    if i % 2 == 0:
        wrong[0:2, 20:22, 20:22] = True
    return wrong


def combine(*fns: WrongFn) -> WrongFn:
    def wrong(i: int, ref: np.ndarray) -> np.ndarray:
        out = np.zeros(ref.shape, bool)
        for fn in fns:
            out |= fn(i, ref)
        return out

    return wrong


def probabilities(ref: np.ndarray, wrong: np.ndarray) -> np.ndarray:
    onehot = np.eye(NUM_CLASSES, dtype=np.float32)[ref].transpose(3, 0, 1, 2)
    nxt = np.eye(NUM_CLASSES, dtype=np.float32)[(ref + 1) % NUM_CLASSES].transpose(3, 0, 1, 2)
    right = 0.6 * onehot + 0.2 * (1 - onehot)
    bad = 0.4 * onehot + 0.5 * nxt + 0.1 * (1 - onehot - nxt)
    return np.where(wrong[None], bad, right).astype(np.float16)


def make_dataset(
    root: Path, name: str = "Toy", n_cases: int = 10, n_folds: int = 5
) -> DatasetPaths:
    paths = DatasetPaths(Path(root) / name)
    info = DatasetInfo(
        channel_names={"0": "MR"}, labels=dict(LABELS), num_training=n_cases, name=name
    )
    write_dataset_info(paths.dataset_json, info)
    geo = geometry()
    for i in range(n_cases):
        case = case_name(i)
        ref = reference(i)
        write_image(paths.labels_tr / label_file(case), ref, geo)
        write_image(paths.images_tr / channel_file(case, 0), ref.astype(np.float32) * 100, geo)
    cases = [case_name(i) for i in range(n_cases)]
    folds = [[c for j, c in enumerate(cases) if j % n_folds == k] for k in range(n_folds)]
    split = [{"train": [c for c in cases if c not in val], "val": val} for val in folds]
    paths.splits_json.write_text(json.dumps(split, indent=1))
    return paths


def fold_of(paths: DatasetPaths) -> dict[str, int]:
    split = json.loads(paths.splits_json.read_text())
    return {c: k for k, fold in enumerate(split) for c in fold["val"]}


def add_configuration(
    paths: DatasetPaths,
    config: str,
    wrong: WrongFn,
    with_probabilities: bool = True,
    skip: set[str] | None = None,
) -> None:
    """Validation predictions of ``config`` for every case (except those in ``skip``)."""
    geo = geometry()
    for case, fold in fold_of(paths).items():
        if skip and case in skip:
            continue
        i = int(case.split("_")[1])
        ref = reference(i)
        probs = probabilities(ref, wrong(i, ref))
        label = np.argmax(probs.astype(np.float32), axis=0).astype(np.uint8)
        write_image(paths.validation_prediction(config, fold, case), label, geo)
        if with_probabilities:
            save_probabilities(paths.validation_probabilities(config, fold, case), probs, geo)
