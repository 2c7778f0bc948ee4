"""Segmentation metrics of one case, per class, in millimetres.

Definitions (the same as grand-challenge-metrics, ``evalutils`` 0.6.0, which challenge
platforms use; ``tests/evaluation/test_metrics.py`` checks them against it):

* **TP / FP / FN** are voxel counts of the class; **Dice** = 2 TP / (2 TP + FP + FN),
  **IoU** = TP / (TP + FP + FN).
* **Surface** of a mask: its voxels that a face-connected erosion removes (voxels at the
  image border count as surface).
* **HD95**: the symmetric 95th-percentile Hausdorff distance: for each side, the distances
  from its surface voxels to the nearest surface voxel of the other side (Euclidean, with
  the voxel spacing), sorted, element ``int((n - 1) * 0.95)``; the larger of the two sides.
* **NSD** (normalised surface distance, Nikolov et al. 2021, voxel-surface form): the
  fraction of the surface voxels of both sides lying within ``tolerance`` mm of the other
  side's surface. ``DEFAULT_NSD_TOLERANCE_MM`` = 2 mm; the right value is the inter-rater
  variability of the structure, so ``toolkit evaluate --nsd-tolerance`` sets it.
* **Volumes** of reference and prediction in mm^3 (for a 2D image, an area in mm^2).

Empty masks are handled explicitly, never silently scored 0 or 1:

* reference **and** prediction empty: Dice, IoU, HD95 and NSD are *undefined* (NaN, an empty
  cell in ``cases.csv``, ``null`` in JSON) and are left out of every mean; the case still
  counts for the other classes. A correct "nothing here" neither rewards nor punishes.
* exactly one side empty: Dice = IoU = NSD = 0 and HD95 = the image diagonal in mm (the
  largest distance possible inside the image), so a missed or hallucinated structure
  weighs as the worst possible distance.

Why our own code and not a call into grand-challenge-metrics: those functions compute a
Euclidean distance transform over the whole image for each direction, and HD95 and NSD
would each compute them again. Here every class is cropped to the bounding box of reference
and prediction (one voxel of margin), the surface-to-surface distances are found with a k-d
tree over the surface voxels (exact nearest neighbours: the same numbers, see the tests) and
serve both HD95 and NSD. On a 120x256x256 CT-like case that is several times faster.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from toolkit.core.constants import NSD_TOLERANCE_MM as DEFAULT_NSD_TOLERANCE_MM
from toolkit.core.labels import target_mask

HD_PERCENTILE = 0.95

Box = tuple[slice, ...]


@dataclass(frozen=True)
class ClassMetrics:
    """The metrics of one foreground class in one case (NaN = undefined, see module doc)."""

    label: int
    dice: float
    iou: float
    tp: int
    fp: int
    fn: int
    hd95_mm: float
    nsd: float
    ref_volume_mm3: float
    pred_volume_mm3: float

    @property
    def ref_empty(self) -> bool:
        return self.tp + self.fn == 0

    @property
    def pred_empty(self) -> bool:
        return self.tp + self.fp == 0


def overlap_scores(tp: int, fp: int, fn: int) -> tuple[float, float]:
    """(Dice, IoU); both NaN when reference and prediction are empty."""
    union = tp + fp + fn
    if union == 0:
        return math.nan, math.nan
    return 2.0 * tp / (2.0 * tp + fp + fn), tp / union


def dice_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """Vectorised Dice over arrays of counts; NaN where all three are 0."""
    tp = np.asarray(tp, dtype=np.float64)
    denominator = 2.0 * tp + np.asarray(fp, dtype=np.float64) + np.asarray(fn, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(
            denominator > 0, 2.0 * tp / np.where(denominator > 0, denominator, 1.0), np.nan
        )


def image_diagonal_mm(shape: tuple[int, ...], spacing: tuple[float, ...]) -> float:
    """The largest distance between two voxel centres of the image."""
    return float(math.sqrt(sum(((n - 1) * s) ** 2 for n, s in zip(shape, spacing, strict=True))))


def surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` removed by one face-connected erosion (the image border is outside)."""
    footprint = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=footprint, iterations=1)


def surface_distances(
    ref: np.ndarray, pred: np.ndarray, spacing: tuple[float, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """(distances from each reference surface voxel to the nearest prediction surface voxel,
    and back) in mm; both masks non-empty.

    Exact nearest-neighbour distances between the two sets of surface voxel centres (a k-d
    tree), the same numbers as a Euclidean distance transform of the other surface, at a cost
    that grows with the surfaces rather than with the box around them.
    """
    scale = np.asarray(spacing, dtype=np.float64)
    ref_points = np.argwhere(surface(ref)) * scale
    pred_points = np.argwhere(surface(pred)) * scale
    ref_to_pred = cKDTree(pred_points).query(ref_points, k=1)[0]
    pred_to_ref = cKDTree(ref_points).query(pred_points, k=1)[0]
    return ref_to_pred, pred_to_ref


def percentile_distance(
    ref_to_pred: np.ndarray, pred_to_ref: np.ndarray, percentile: float = HD_PERCENTILE
) -> float:
    """Symmetric percentile Hausdorff distance with grand-challenge-metrics' index rule."""

    def directed(d: np.ndarray) -> float:
        return float(
            np.partition(d, int((d.size - 1) * percentile))[int((d.size - 1) * percentile)]
        )

    return max(directed(ref_to_pred), directed(pred_to_ref))


def normalized_surface_distance(
    ref_to_pred: np.ndarray, pred_to_ref: np.ndarray, tolerance_mm: float
) -> float:
    within = np.count_nonzero(ref_to_pred <= tolerance_mm) + np.count_nonzero(
        pred_to_ref <= tolerance_mm
    )
    return float(within / (ref_to_pred.size + pred_to_ref.size))


def label_boxes(segmentation: np.ndarray) -> dict[int, Box]:
    """Bounding box of every label value > 0 present in ``segmentation`` (one pass)."""
    if not np.issubdtype(segmentation.dtype, np.integer):
        raise ValueError(f"a label map must hold integers, not {segmentation.dtype}")
    objects = ndimage.find_objects(segmentation)
    return {value + 1: box for value, box in enumerate(objects) if box is not None}


def _union_box(a: Box | None, b: Box | None, shape: tuple[int, ...], margin: int = 1) -> Box:
    boxes = [box for box in (a, b) if box is not None]
    return tuple(
        slice(
            max(0, min(box[axis].start for box in boxes) - margin),
            min(n, max(box[axis].stop for box in boxes) + margin),
        )
        for axis, n in enumerate(shape)
    )


def _values_box(boxes: list[Box | None], shape: tuple[int, ...]) -> Box | None:
    """The box around several label values' boxes (``None`` where none is present)."""
    present = [b for b in boxes if b is not None]
    if not present:
        return None
    if len(present) == 1:
        return present[0]
    return tuple(
        slice(min(b[axis].start for b in present), max(b[axis].stop for b in present))
        for axis in range(len(shape))
    )


def _squeeze_flat_axes(
    ref: np.ndarray, pred: np.ndarray, spacing: tuple[float, ...]
) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    # an axis of one voxel has no surface along it (a 3D image with one slice is a 2D image)
    keep = [axis for axis, n in enumerate(ref.shape) if n > 1] or [0]
    shape = tuple(ref.shape[a] for a in keep)
    return ref.reshape(shape), pred.reshape(shape), tuple(spacing[a] for a in keep)


def class_metrics(
    ref: np.ndarray,
    pred: np.ndarray,
    label: int,
    spacing: tuple[float, ...],
    nsd_tolerance_mm: float,
    diagonal_mm: float,
) -> ClassMetrics:
    """Metrics of boolean masks ``ref`` and ``pred`` (the whole image or a crop holding both)."""
    tp = int(np.count_nonzero(ref & pred))
    ref_count = int(np.count_nonzero(ref))
    pred_count = int(np.count_nonzero(pred))
    fp, fn = pred_count - tp, ref_count - tp
    dice, iou = overlap_scores(tp, fp, fn)
    voxel_volume = float(np.prod(spacing))
    if ref_count == 0 and pred_count == 0:
        hd95 = nsd = math.nan
    elif ref_count == 0 or pred_count == 0:
        hd95, nsd = diagonal_mm, 0.0
    else:
        r, p, flat_spacing = _squeeze_flat_axes(ref, pred, spacing)
        ref_to_pred, pred_to_ref = surface_distances(r, p, flat_spacing)
        hd95 = percentile_distance(ref_to_pred, pred_to_ref)
        nsd = normalized_surface_distance(ref_to_pred, pred_to_ref, nsd_tolerance_mm)
    return ClassMetrics(
        label=label,
        dice=dice,
        iou=iou,
        tp=tp,
        fp=fp,
        fn=fn,
        hd95_mm=hd95,
        nsd=nsd,
        ref_volume_mm3=ref_count * voxel_volume,
        pred_volume_mm3=pred_count * voxel_volume,
    )


def case_metrics(
    reference: np.ndarray,
    prediction: np.ndarray,
    labels: list[int] | Mapping[int, Sequence[int]],
    spacing: tuple[float, ...],
    nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM,
    reference_boxes: dict[int, Box] | None = None,
    prediction_boxes: dict[int, Box] | None = None,
    ignore: int | None = None,
) -> list[ClassMetrics]:
    """Metrics of every foreground label in ``labels`` for one case.

    ``reference`` and ``prediction`` are integer label maps of the same shape with
    ``spacing`` in the same axis order (mm). Each class is measured inside the bounding box
    of its reference and predicted voxels, so the cost grows with the structures, not with
    the image. Pass the boxes (:func:`label_boxes`) when they are already known.

    ``labels`` may map a key to several label values (a region, measured as the union of
    its values; :attr:`toolkit.core.labels.LabelModel.regions`): the metrics then carry the
    key. Voxels where the reference holds ``ignore`` count on neither side (nnU-Net v2's
    evaluation; here for the surface distances too).
    """
    if reference.shape != prediction.shape:
        raise ValueError(
            f"reference shape {reference.shape} != prediction shape {prediction.shape}"
        )
    if len(spacing) != reference.ndim:
        raise ValueError(f"spacing {spacing} does not match a {reference.ndim}D array")
    spacing = tuple(float(s) for s in spacing)
    ref_boxes = label_boxes(reference) if reference_boxes is None else reference_boxes
    pred_boxes = label_boxes(prediction) if prediction_boxes is None else prediction_boxes
    diagonal = image_diagonal_mm(reference.shape, spacing)
    targets = labels if isinstance(labels, Mapping) else {v: (v,) for v in labels}
    results = []
    for label, values in targets.items():
        if label == 0:
            continue
        ref_box = _values_box([ref_boxes.get(v) for v in values], reference.shape)
        pred_box = _values_box([pred_boxes.get(v) for v in values], reference.shape)
        if ref_box is None and pred_box is None:
            results.append(
                ClassMetrics(label, math.nan, math.nan, 0, 0, 0, math.nan, math.nan, 0.0, 0.0)
            )
            continue
        box = _union_box(ref_box, pred_box, reference.shape)
        ref_mask = target_mask(reference[box], values)
        pred_mask = target_mask(prediction[box], values)
        if ignore is not None:
            annotated = reference[box] != ignore
            ref_mask &= annotated
            pred_mask &= annotated
        results.append(
            class_metrics(
                ref_mask,
                pred_mask,
                label,
                spacing,
                nsd_tolerance_mm,
                diagonal,
            )
        )
    return results
