import math

import numpy as np
import pytest
from grand_challenge_metrics import stats as gcm
from scipy import ndimage
from scipy.spatial.distance import cdist

from toolkit.evaluation.metrics import (
    case_metrics,
    class_metrics,
    dice_from_counts,
    image_diagonal_mm,
    label_boxes,
    overlap_scores,
)


def _blobs(seed: int, shape=(12, 20, 18), labels=(1, 2)) -> np.ndarray:
    """Random smooth blobs of each label (some may touch the image border)."""
    rng = np.random.default_rng(seed)
    seg = np.zeros(shape, np.uint8)
    for label in labels:
        field = ndimage.gaussian_filter(rng.normal(size=shape), 2.0)
        seg[(field > np.quantile(field, 0.85)) & (seg == 0)] = label
    return seg


def _surface_points(mask: np.ndarray, spacing) -> np.ndarray:
    eroded = ndimage.binary_erosion(mask, ndimage.generate_binary_structure(mask.ndim, 1))
    return np.argwhere(mask & ~eroded) * np.asarray(spacing)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_grand_challenge_metrics(seed):
    spacing = (2.5, 0.8, 1.1)
    ref, pred = _blobs(seed), _blobs(seed + 100)
    labels = [0, 1, 2]
    cm = gcm.calculate_confusion_matrix(ref, pred, labels)
    dice = gcm.dice_from_confusion_matrix(cm)
    iou = gcm.jaccard_from_confusion_matrix(cm)
    for m in case_metrics(ref, pred, [1, 2], spacing):
        k = m.label
        assert (m.tp, m.fp, m.fn) == (
            cm[k, k],
            cm[:, k].sum() - cm[k, k],
            cm[k, :].sum() - cm[k, k],
        )
        assert m.dice == pytest.approx(float(dice[k]), abs=1e-6)  # gcm computes in float32
        assert m.iou == pytest.approx(float(iou[k]), abs=1e-6)
        expected_hd95 = gcm.percentile_hausdorff_distance(
            ref == k, pred == k, 0.95, voxelspacing=spacing
        )
        assert m.hd95_mm == pytest.approx(expected_hd95, rel=1e-12)


@pytest.mark.parametrize("seed", [3, 4])
def test_cropping_changes_nothing(seed):
    # the per-class crop (one voxel of margin) gives the numbers of the whole image,
    # including structures that touch the image border
    spacing = (3.0, 1.0, 0.7)
    ref, pred = _blobs(seed), _blobs(seed + 7)
    ref[:, :, 0] = 1  # touches the border
    diagonal = image_diagonal_mm(ref.shape, spacing)
    for m in case_metrics(ref, pred, [1, 2], spacing, nsd_tolerance_mm=1.5):
        whole = class_metrics(ref == m.label, pred == m.label, m.label, spacing, 1.5, diagonal)
        assert m == whole


def test_nsd_and_hd95_against_brute_force():
    spacing = (2.0, 1.0, 1.0)
    ref = np.zeros((10, 16, 16), np.uint8)
    pred = np.zeros_like(ref)
    ref[2:7, 3:11, 3:11] = 1
    pred[3:8, 5:12, 3:10] = 1
    tolerance = 1.5
    (m,) = case_metrics(ref, pred, [1], spacing, nsd_tolerance_mm=tolerance)
    a, b = _surface_points(ref == 1, spacing), _surface_points(pred == 1, spacing)
    d = cdist(a, b)
    ref_to_pred, pred_to_ref = d.min(axis=1), d.min(axis=0)
    expected_nsd = (np.sum(ref_to_pred <= tolerance) + np.sum(pred_to_ref <= tolerance)) / (
        len(a) + len(b)
    )
    assert m.nsd == pytest.approx(expected_nsd)
    expected_hd95 = max(np.sort(x)[int((len(x) - 1) * 0.95)] for x in (ref_to_pred, pred_to_ref))
    assert m.hd95_mm == pytest.approx(expected_hd95)
    assert 0 < m.nsd < 1


def test_identical_masks_are_perfect():
    seg = _blobs(5)
    for m in case_metrics(seg, seg.copy(), [1, 2], (1.0, 1.0, 1.0)):
        assert (m.dice, m.iou, m.hd95_mm, m.nsd) == (1.0, 1.0, 0.0, 1.0)
        assert m.fp == m.fn == 0
        assert m.ref_volume_mm3 == m.pred_volume_mm3 == m.tp


def test_empty_reference_and_prediction_is_undefined_not_zero_or_one():
    ref = np.zeros((6, 8, 8), np.uint8)
    pred = np.zeros_like(ref)
    ref[1:3, 1:3, 1:3] = 1
    pred[1:3, 1:3, 1:3] = 1
    one, two = case_metrics(ref, pred, [1, 2], (2.0, 1.0, 1.0))
    assert one.dice == 1.0
    assert (
        math.isnan(two.dice)
        and math.isnan(two.iou)
        and math.isnan(two.hd95_mm)
        and math.isnan(two.nsd)
    )
    assert (two.tp, two.fp, two.fn, two.ref_volume_mm3, two.pred_volume_mm3) == (0, 0, 0, 0.0, 0.0)
    assert all(math.isnan(v) for v in overlap_scores(0, 0, 0))
    assert np.isnan(dice_from_counts(np.array([0]), np.array([0]), np.array([0]))[0])


@pytest.mark.parametrize("empty_side", ["reference", "prediction"])
def test_one_side_empty_scores_worst(empty_side):
    spacing = (2.0, 1.0, 0.5)
    seg = np.zeros((6, 8, 10), np.uint8)
    seg[1:3, 1:4, 1:4] = 1
    empty = np.zeros_like(seg)
    ref, pred = (empty, seg) if empty_side == "reference" else (seg, empty)
    (m,) = case_metrics(ref, pred, [1], spacing)
    assert (m.dice, m.iou, m.nsd) == (0.0, 0.0, 0.0)
    assert m.hd95_mm == pytest.approx(math.sqrt((5 * 2.0) ** 2 + (7 * 1.0) ** 2 + (9 * 0.5) ** 2))
    assert m.ref_volume_mm3 + m.pred_volume_mm3 == pytest.approx(18 * 2.0 * 1.0 * 0.5)


def test_two_dimensional_and_single_slice_images():
    ref2d = np.zeros((20, 20), np.uint8)
    ref2d[5:12, 5:12] = 1
    pred2d = np.zeros_like(ref2d)
    pred2d[6:13, 5:12] = 1
    (m2d,) = case_metrics(ref2d, pred2d, [1], (0.5, 0.5))
    expected = gcm.percentile_hausdorff_distance(ref2d, pred2d, 0.95, voxelspacing=(0.5, 0.5))
    assert m2d.hd95_mm == pytest.approx(expected)
    assert m2d.ref_volume_mm3 == pytest.approx(49 * 0.25)  # an area for 2D images
    # one slice of a 3D image: the slice axis has no surface of its own
    (m3d,) = case_metrics(ref2d[None], pred2d[None], [1], (3.0, 0.5, 0.5))
    assert m3d.hd95_mm == pytest.approx(m2d.hd95_mm)
    assert m3d.nsd == pytest.approx(m2d.nsd)


def test_label_boxes_and_shape_checks():
    seg = np.zeros((4, 5, 6), np.uint8)
    seg[1:3, 2:4, 0:1] = 2
    assert label_boxes(seg) == {2: (slice(1, 3), slice(2, 4), slice(0, 1))}
    with pytest.raises(ValueError, match="integers"):
        label_boxes(seg.astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        case_metrics(seg, seg[:2], [1], (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        case_metrics(seg, seg, [1], (1.0, 1.0))
