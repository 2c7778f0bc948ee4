"""From logits on the preprocessed grid to a label map (and probabilities) on the input's grid.

The way back mirrors :mod:`toolkit.preprocessing.case` (and gives what its
``revert_to_original`` gives): resample to the cropped shape (linearly, nearest along a coarse
axis: ``Resampling.probability_order``), undo the axis transpose, paste into the uncropped
extent (outside the crop box: background with probability 1; for regions, every region
with probability 0). What is resampled is the logits; softmax (one sigmoid per region, for
regions) comes after, so a voxel's class is the argmax of the resampled logits, and a
region's voxels are those whose resampled logit is above 0 (probability above 0.5), written
as a label map through ``regions_class_order``
(:func:`toolkit.core.labels.segmentation_from_probabilities`).

Memory: one class at a time is resampled and its preprocessed-grid logits are released, so
beside the input's-grid result only one class is ever held twice. Without probabilities,
only a running maximum and the label map are kept.
"""

from __future__ import annotations

from collections.abc import MutableSequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.core.cropping import box_slices
from toolkit.core.labels import probabilities_inplace, segmentation_from_probabilities
from toolkit.core.plans import Configuration, Plans
from toolkit.core.postprocessing import Postprocessing, apply_postprocessing
from toolkit.core.resampling import case_target_spacing, resample_probabilities, transpose_spatial
from toolkit.inference.ensemble import save_probabilities
from toolkit.io.images import Geometry, label_dtype, write_image
from toolkit.io.preprocessed import CaseProperties


@dataclass
class Prediction:
    """One case's prediction on the input image's grid."""

    labels: np.ndarray  # (z, y, x) uint8 (uint16 beyond 255 classes), the input's array shape
    geometry: Geometry  # the input image's
    probabilities: np.ndarray | None = None  # (num_classes, z, y, x) float32 softmax, or None
    regions_class_order: tuple[int, ...] | None = None  # regions: sigmoid channels, written values

    def postprocessed(self, postprocessing: Postprocessing | None) -> Prediction:
        if postprocessing is None or postprocessing.is_identity:
            return self
        return Prediction(
            apply_postprocessing(self.labels, postprocessing),
            self.geometry,
            self.probabilities,
            self.regions_class_order,
        )

    def save(self, label_path: str | Path, probabilities_path: str | Path | None = None) -> None:
        """The label map with the input's exact geometry; the probabilities (float16 ``.npz``) if asked."""
        if probabilities_path is not None:
            if self.probabilities is None:
                raise ValueError("this prediction was made without probabilities")
            save_probabilities(
                probabilities_path, self.probabilities, self.geometry, self.regions_class_order
            )
        write_image(label_path, self.labels, self.geometry)


def _as_numpy(array: Any) -> np.ndarray:
    """A numpy array or a torch tensor (on any device) as float32 numpy; this module imports
    no torch, so that the torch-free predictor can use it."""
    if not isinstance(array, np.ndarray) and hasattr(array, "detach"):
        return array.detach().float().cpu().numpy()
    return np.asarray(array, dtype=np.float32)


def logits_to_original(
    logits: MutableSequence[Any],
    props: CaseProperties,
    plans: Plans,
    configuration: Configuration,
    with_probabilities: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-class logits on the preprocessed grid -> (labels ``(z, y, x)``, probabilities ``(k, z, y, x)`` or None).

    ``logits`` holds one spatial array per class (numpy, or torch tensors) and is emptied as it is consumed (entries
    become ``None``) so that each class's memory is released once resampled.
    """
    k = len(logits)
    model = plans.label_model()
    grid = tuple(int(s) for s in props.shape_after_resampling)
    spacing_t = [props.spacing[a] for a in plans.transpose_forward]
    current = case_target_spacing(configuration, spacing_t)
    shape_t = [props.shape_after_cropping[a] for a in plans.transpose_forward]
    box = box_slices(props.crop_bbox)
    dtype = label_dtype(max(model.regions_class_order or (k - 1,)))

    def resampled(c: int) -> np.ndarray:
        array = _as_numpy(logits[c])
        logits[c] = None  # type: ignore[call-overload]
        if tuple(array.shape) != grid:
            raise ValueError(
                f"logits of shape {array.shape} are not on the preprocessed grid {grid}"
            )
        return resample_probabilities(
            array[None], shape_t, current, spacing_t, configuration.resampling
        )[0]

    labels = np.zeros(props.shape_before_cropping, dtype=dtype)
    labels_t = transpose_spatial(labels[None][(slice(None), *box)], plans.transpose_forward)[0]
    if not with_probabilities and model.has_regions:
        for c, value in enumerate(model.regions_class_order):
            labels_t[resampled(c) > 0] = value  # sigmoid above 0.5; later regions win
        return labels, None
    if not with_probabilities:
        best = resampled(0)
        for c in range(1, k):
            values = resampled(c)
            better = values > best
            labels_t[better] = c
            np.maximum(best, values, out=best)
        return labels, None

    probabilities = np.zeros((k, *props.shape_before_cropping), dtype=np.float32)
    if not model.has_regions:
        probabilities[0] = 1.0  # outside the crop box: background
    inside = transpose_spatial(probabilities[(slice(None), *box)], plans.transpose_forward)
    for c in range(k):
        inside[c] = resampled(c)
    probabilities_inplace(inside, model)
    segmentation_from_probabilities(inside, model, out=labels_t)
    return labels, probabilities
