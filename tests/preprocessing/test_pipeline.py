"""preprocess_case and the way back to the original geometry (pure, no disk)."""

import numpy as np
import pytest
from scipy import ndimage

from toolkit.core.cropping import crop_to_nonzero, fill_holes
from toolkit.core.normalization import normalize_channel
from toolkit.core.plans import Architecture, Configuration, Normalization, Plans
from toolkit.errors import ToolkitError
from toolkit.io.images import Geometry
from toolkit.preprocessing.case import (
    MAX_LOCATIONS_PER_CLASS,
    preprocess_case,
    revert_labels,
    revert_to_original,
    sample_class_locations,
    source_record,
)

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def _plans(target_zyx, forward=(0, 1, 2), dims=3, normalization=None):
    forward = list(forward)
    backward = [forward.index(i) for i in range(3)]
    target_t = [target_zyx[a] for a in forward]
    arch = Architecture([4, 8], [[3] * dims] * 2, [[1] * dims, [2] * dims], [2, 2], [2])
    config = Configuration(
        name="3d_fullres" if dims == 3 else "2d",
        data_identifier="3d_fullres" if dims == 3 else "2d",
        spatial_dims=dims,
        target_spacing=target_t,
        median_shape=[10, 10, 10],
        patch_size=[8] * dims,
        batch_size=2,
        architecture=arch,
        normalization=normalization or [Normalization("zscore", use_nonzero_mask=True)],
    )
    plans = Plans(
        dataset_name="T",
        channel_names={"0": "MR"},
        labels={"background": 0, "organ": 1, "lesion": 2},
        transpose_forward=forward,
        transpose_backward=backward,
        original_median_spacing=list(target_zyx),
        original_median_shape=[10, 10, 10],
        configurations={config.name: config},
    )
    return plans, config


def _case(shape=(12, 20, 18), spacing_xyz=(0.8, 0.8, 3.0), seed=0):
    rng = np.random.default_rng(seed)
    image = np.zeros((1, *shape), dtype=np.float32)
    image[0, 1:-1, 2:-3, 3:-2] = rng.normal(
        100, 10, size=(shape[0] - 2, shape[1] - 5, shape[2] - 5)
    )
    seg = np.zeros(shape, dtype=np.uint8)
    seg[3:9, 6:12, 4:9] = 1
    seg[5:7, 8:10, 5:8] = 2
    geometry = Geometry(
        spacing=spacing_xyz, origin=(1.0, 2.0, 3.0), direction=IDENTITY, size=shape[::-1]
    )
    return image, seg, geometry


def test_fill_holes_matches_scipy():
    rng = np.random.default_rng(3)
    for _ in range(5):
        mask = ndimage.binary_opening(rng.random((16, 17, 18)) > 0.4)
        np.testing.assert_array_equal(fill_holes(mask), ndimage.binary_fill_holes(mask))


def test_crop_marks_outside_of_mask():
    image, seg, _ = _case()
    cropped, cseg, box = crop_to_nonzero(image, seg[None])
    assert box == [[1, 11], [2, 17], [3, 16]]
    assert cropped.shape[1:] == cseg.shape[1:] == (10, 15, 13)
    assert cseg.min() == 0  # the image has no hole: nothing outside the mask inside the box
    image[0, 5, 10, 10] = 0  # a hole is filled, stays inside
    _, cseg, _ = crop_to_nonzero(image, seg[None])
    assert cseg.min() == 0


def test_normalization_schemes():
    image = np.array([[0.0, 1.0], [3.0, 1000.0]], dtype=np.float32)
    ct = normalize_channel(
        image, Normalization("ct", False, mean=1.0, std=2.0, lower_bound=0.5, upper_bound=3.0), None
    )
    np.testing.assert_allclose(ct, [[-0.25, 0.0], [1.0, 1.0]])
    inside = np.array([[False, True], [True, True]])
    z = normalize_channel(image, Normalization("zscore", True), inside)
    assert z[0, 0] == 0.0 and z[inside].mean() == pytest.approx(0, abs=1e-6)
    z = normalize_channel(image, Normalization("zscore", False), inside)
    assert z.std() == pytest.approx(1, abs=1e-5)


def test_rgb_scheme_on_data_beyond_255_names_the_case_and_channel():
    image, seg, geometry = _case()
    plans, config = _plans(geometry.spacing_zyx, normalization=[Normalization("rgb_to_0_1")])
    data, _, _ = preprocess_case(np.clip(image, 0, 255), geometry, plans, config, seg, case="c1")
    assert 0 <= data.min() and data.max() <= 1.0001  # cubic resampling may overshoot a little
    with pytest.raises(ToolkitError, match=r"^case c1, channel 0: .*rgb_to_0_1 is for 8-bit"):
        preprocess_case(image * 10, geometry, plans, config, seg, case="c1")


def test_same_spacing_round_trip_is_exact():
    image, seg, geometry = _case()
    plans, config = _plans(geometry.spacing_zyx)
    data, out_seg, props = preprocess_case(image, geometry, plans, config, seg, case="c1")
    assert data.shape == (1, 10, 15, 13) and out_seg.dtype == np.int8
    assert props.crop_bbox == [[1, 11], [2, 17], [3, 16]]
    assert props.shape_after_resampling == [10, 15, 13]
    np.testing.assert_array_equal(revert_labels(out_seg, props, plans, config), seg)


def test_transpose_and_resampling_round_trip():
    image, seg, geometry = _case(
        shape=(20, 18, 12), spacing_xyz=(3.0, 0.8, 0.8)
    )  # coarse axis is x (last)
    plans, config = _plans([0.8, 0.8, 3.0], forward=(2, 0, 1))
    data, out_seg, props = preprocess_case(image, geometry, plans, config, seg)
    assert props.shape_after_resampling[0] == props.shape_after_cropping[2]  # x first
    back = revert_labels(out_seg, props, plans, config)
    np.testing.assert_array_equal(back, seg)
    # to a finer grid and back: labels survive
    plans, config = _plans([0.4, 0.4, 1.5], forward=(2, 0, 1))
    data, out_seg, props = preprocess_case(image, geometry, plans, config, seg)
    assert props.shape_after_resampling == [
        14,
        36,
        26,
    ]  # cropped (z, y, x) = (18, 13, 7), x first, doubled
    back = revert_labels(out_seg, props, plans, config)
    for label in (1, 2):
        a, b = back == label, seg == label
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) >= 0.99


def test_revert_to_original_pastes_probabilities():
    image, seg, geometry = _case()
    plans, config = _plans(geometry.spacing_zyx)
    _, out_seg, props = preprocess_case(image, geometry, plans, config, seg)
    onehot = np.stack([(out_seg[0] == k) | ((k == 0) & (out_seg[0] < 0)) for k in range(3)]).astype(
        np.float32
    )
    probs = revert_to_original(onehot, props, plans, config)
    assert probs.shape == (3, *seg.shape)
    np.testing.assert_array_equal(probs.argmax(0), seg)
    assert probs[0, 0, 0, 0] == 1.0 and probs[1:, 0, 0, 0].sum() == 0
    with pytest.raises(ValueError, match="preprocessed grid"):
        revert_to_original(onehot[:, :-1], props, plans, config)


def test_2d_configuration_keeps_slice_spacing():
    image, seg, geometry = _case(spacing_xyz=(0.8, 0.8, 3.0))
    plans, config = _plans([3.0, 0.4, 0.4], dims=2)
    config.target_spacing = [5.0, 0.4, 0.4]  # the slice axis is never resampled in 2d
    data, out_seg, props = preprocess_case(image, geometry, plans, config, seg)
    assert props.shape_after_resampling[0] == props.shape_after_cropping[0]
    assert props.shape_after_resampling[1] == 2 * props.shape_after_cropping[1]


def test_without_labels_and_channel_checks():
    image, _, geometry = _case()
    plans, config = _plans(geometry.spacing_zyx)
    data, out_seg, props = preprocess_case(image, geometry, plans, config)
    assert out_seg is None and props.class_locations == {}
    with pytest.raises(ValueError, match="channels"):
        preprocess_case(np.concatenate([image, image]), geometry, plans, config)


def test_class_locations_are_capped_and_seeded():
    seg = np.zeros((1, 40, 40, 40), dtype=np.int8)
    seg[0, :30] = 1
    seg[0, 0, 0, :3] = 2
    a = sample_class_locations(seg, [1, 2, 3])
    assert len(a["1"]) == MAX_LOCATIONS_PER_CLASS and len(a["2"]) == 3 and a["3"] == []
    assert all(seg[0][tuple(v)] == 1 for v in a["1"][:100])
    assert a == sample_class_locations(seg, [1, 2, 3])
    seg[0, :] = 1  # 64000 voxels: 1% coverage is below the cap; a larger class keeps >= 1%
    big = np.ones((1, 120, 100, 100), dtype=np.int8)
    assert len(sample_class_locations(big, [1])["1"]) == 12000


def test_source_hash_changes_with_the_plan():
    image, seg, geometry = _case()
    plans, config = _plans(geometry.spacing_zyx)
    before = source_record(plans, config)["hash"]
    config.target_spacing = [2.0, 1.0, 1.0]
    assert source_record(plans, config)["hash"] != before
    config.batch_size = 7  # training-only fields do not make the data stale
    assert source_record(plans, config)["hash"] == source_record(plans, config)["hash"]
