"""Resampling: exact separable splines, the anisotropic rule, labels and probabilities."""

import numpy as np
import pytest
from scipy import ndimage

from toolkit.core.plans import Resampling
from toolkit.core.resampling import (
    axis_operator,
    coarse_axis,
    compute_new_shape,
    resample,
    resample_labels,
    resample_probabilities,
)


@pytest.mark.parametrize("order", [0, 1, 3])
def test_separable_resampling_equals_a_3d_spline(order):
    rng = np.random.default_rng(0)
    image = rng.normal(size=(12, 15, 17)).astype(np.float32)
    new_shape = (17, 11, 23)
    ours = resample(image[None], new_shape, [1, 1, 1], [1, 1, 1], order=order)[0]
    zoom = [n / o for n, o in zip(new_shape, image.shape, strict=True)]
    reference = ndimage.zoom(
        image.astype(np.float64), zoom, order=order, mode="nearest", grid_mode=True
    )
    reference = np.clip(reference, image.min(), image.max())
    assert ours.shape == new_shape and ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference, atol=2e-5)


def test_same_shape_is_returned_unchanged():
    image = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)
    np.testing.assert_array_equal(resample(image, (2, 3, 4), [1, 1, 1], [2, 2, 2]), image)
    assert np.allclose(axis_operator(5, 5, 3), np.eye(5))


def test_coarse_axis_rule():
    assert coarse_axis([5.0, 1.0, 1.0], [1.0, 1.0, 1.0]) == 0
    assert (
        coarse_axis([1.0, 1.0, 1.0], [1.0, 1.0, 4.0]) == 2
    )  # the new grid decides when the old is isotropic
    assert coarse_axis([2.0, 1.0, 1.0], [2.5, 1.0, 1.0]) is None
    assert (
        coarse_axis([5.0, 5.0, 1.0], [1, 1, 1]) is None
    )  # two coarse axes: no single thick-slice axis


def test_anisotropic_data_uses_nearest_between_slices():
    rng = np.random.default_rng(1)
    image = rng.normal(size=(1, 4, 10, 10)).astype(np.float32)
    out = resample(image, (8, 10, 10), [5.0, 1.0, 1.0], [2.5, 1.0, 1.0], order=3)
    # in-plane unchanged, each new slice is a copy of one old slice (nearest neighbour)
    for z in range(8):
        assert any(np.array_equal(out[0, z], image[0, k]) for k in range(4))


def test_compute_new_shape_rounds():
    assert compute_new_shape([10, 20, 30], [1.0, 0.5, 0.7], [1.0, 1.0, 1.0]) == [10, 10, 21]


def test_labels_keep_values_and_follow_the_one_hot_rule():
    seg = np.zeros((1, 8, 8, 8), dtype=np.int8)
    seg[0, 2:6, 2:6, 2:6] = 1
    seg[0, 3:5, 3:5, 3:5] = 2
    seg[0, :, :, 0] = -1
    up = resample_labels(seg, (16, 16, 16), [1, 1, 1], [0.5, 0.5, 0.5], Resampling())
    assert up.shape == (1, 16, 16, 16) and up.dtype == np.int8
    assert set(np.unique(up).tolist()) == {-1, 0, 1, 2}
    assert (up[0] == 2).sum() == 4**3 - 8  # linear interpolation rounds the cube's 8 corners off
    back = resample_labels(up, (8, 8, 8), [0.5, 0.5, 0.5], [1, 1, 1], Resampling())
    np.testing.assert_array_equal(back, seg)


def test_probabilities_stay_a_distribution():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(3, 6, 7, 8))
    probs = (np.exp(logits) / np.exp(logits).sum(0)).astype(np.float32)
    out = resample_probabilities(probs, (9, 5, 12), [1, 1, 1], [0.7, 1.4, 0.7], Resampling())
    assert out.shape == (3, 9, 5, 12)
    np.testing.assert_allclose(out.sum(0), 1.0, atol=1e-5)
    assert out.min() >= 0
