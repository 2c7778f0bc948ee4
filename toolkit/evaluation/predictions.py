"""Reading one validation case: its reference and the segmentation of each candidate.

A single configuration's segmentation is its label map ``CASE.nii.gz``. An ensemble's is
the argmax of its members' averaged probabilities (``CASE.npz``, read with
:func:`toolkit.inference.ensemble.load_probabilities`: float16 (classes, z, y, x), channel k
being label value k), or for regions the regions' rule on them
(:func:`toolkit.core.labels.labels_from_probabilities`), computed slab by slab in float32 so memory stays near the size
of the probability files themselves. Every file is read at most once per case.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toolkit.core.labels import LabelModel, labels_from_probabilities
from toolkit.errors import ToolkitError
from toolkit.evaluation.candidates import Candidate
from toolkit.evaluation.crossval import ValidationCase
from toolkit.inference.ensemble import load_probabilities, sum_probabilities
from toolkit.io.images import Geometry, label_dtype, read_image
from toolkit.workspace import DatasetPaths

_SLAB_VALUES = 1 << 24  # float32 values summed at a time when ensembling


@dataclass(frozen=True)
class CaseSources:
    """The files of one validation case, per configuration."""

    case: str
    fold: int
    reference: Path
    labels: dict[str, Path]
    probabilities: dict[str, Path]


def case_sources(paths: DatasetPaths, vc: ValidationCase, configurations: list[str]) -> CaseSources:
    return CaseSources(
        case=vc.case,
        fold=vc.fold,
        reference=vc.reference,
        labels={c: paths.validation_prediction(c, vc.fold, vc.case) for c in configurations},
        probabilities={
            c: paths.validation_probabilities(c, vc.fold, vc.case) for c in configurations
        },
    )


def metric_view(array: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, tuple[float, ...]]:
    """The array and spacing (mm, array order) that metrics use: 2D images as (y, x)."""
    if geometry.dimension == 2:
        return array.reshape(array.shape[1:]), tuple(float(s) for s in geometry.spacing[::-1])
    return array, geometry.spacing_zyx


def read_label_map(path: Path) -> tuple[np.ndarray, Geometry]:
    array, geometry = read_image(path)
    if not np.issubdtype(array.dtype, np.integer):
        raise ToolkitError(f"a label map must hold integers, not {array.dtype}", path)
    if array.size and array.min() < 0:
        raise ToolkitError("a label map must not hold negative values", path)
    return array, geometry


def read_probabilities(path: Path, num_classes: int, reference_geometry: Geometry) -> np.ndarray:
    """A validation case's probabilities (float16), checked against its reference's grid."""
    if not path.is_file():
        raise ToolkitError("probabilities not found (needed for an ensemble)", path)
    saved = load_probabilities(path, dtype=np.dtype(np.float16))
    expected = (num_classes, *reference_geometry.shape_zyx)
    if saved.probabilities.shape != expected:
        raise ToolkitError(
            f"probabilities have shape {saved.probabilities.shape}, expected {expected} "
            "(classes, z, y, x) of the reference",
            path,
        )
    if saved.geometry is not None:
        problem = reference_geometry.matches(saved.geometry)
        if problem is not None:
            raise ToolkitError(f"does not match the geometry of its reference: {problem}", path)
    return saved.probabilities


def ensemble_argmax(probabilities: list[np.ndarray], labels: LabelModel) -> np.ndarray:
    """The label map of the members' mean probabilities: the argmax of their sum (the same as
    of the mean) for classes, the regions' rule on their mean for regions."""
    shape = probabilities[0].shape[1:]
    top = max(labels.regions_class_order or (labels.num_outputs - 1,))
    out = np.empty(shape, dtype=label_dtype(top))
    per_slice = max(1, int(np.prod(shape[1:])) * probabilities[0].shape[0])
    step = max(1, _SLAB_VALUES // per_slice)
    for start in range(0, shape[0], step):
        stop = min(shape[0], start + step)
        total = sum_probabilities(p[:, start:stop] for p in probabilities)
        if labels.has_regions:
            total /= len(probabilities)
        labels_from_probabilities(total, labels.regions_class_order, out[start:stop])
    return out


class CaseLoader:
    """One validation case: the reference, and each candidate's segmentation on demand."""

    def __init__(self, sources: CaseSources, labels: LabelModel):
        self.sources = sources
        self.labels = labels
        self.label_values = labels.declared_values
        self.reference, self.geometry = read_label_map(sources.reference)
        self._check_values(self.reference, sources.reference)
        self._probabilities: dict[str, np.ndarray] = {}

    def _check_values(self, segmentation: np.ndarray, path: Path) -> None:
        top = int(segmentation.max()) if segmentation.size else 0
        if set(range(top + 1)) <= set(self.label_values):
            return  # every value up to the largest is declared: nothing to look for
        undeclared = sorted(set(np.unique(segmentation).tolist()) - set(self.label_values))
        if undeclared:
            raise ToolkitError(
                f"holds label value(s) {undeclared} not declared in dataset.json", path
            )

    def _labels(self, config: str) -> np.ndarray:
        path = self.sources.labels[config]
        if not path.is_file():
            raise ToolkitError("validation prediction not found", path)
        array, geometry = read_label_map(path)
        problem = self.geometry.matches(geometry)
        if problem is not None:
            raise ToolkitError(
                f"does not match the geometry of its reference {self.sources.reference}: {problem}",
                path,
            )
        self._check_values(array, path)
        return array

    def _probabilities_of(self, config: str) -> np.ndarray:
        if config not in self._probabilities:
            path = self.sources.probabilities[config]
            self._probabilities[config] = read_probabilities(
                path, self.labels.num_outputs, self.geometry
            )
        return self._probabilities[config]

    def segmentation(self, candidate: Candidate) -> np.ndarray:
        if not candidate.is_ensemble:
            return self._labels(candidate.configurations[0])
        return ensemble_argmax(
            [self._probabilities_of(c) for c in candidate.configurations], self.labels
        )
