"""Augmentation: the rules, each transform's ranges and probabilities, alignment, seeding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from toolkit.training import augmentation as A
from toolkit.training.augmentation.spatial import (
    SpatialRules,
    enlarged_crop_size,
    rotation_matrix,
    sampling_matrix,
    spatial_rules,
    warp,
)

PATCH = (12, 14, 16)


def blobs(batch=2, channels=2, size=PATCH, seed=0):
    """Labels of a few boxes; image channel 0 equals the labels, channel 1 is noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros((batch, 1, *size), dtype=torch.int16)
    for b in range(batch):
        for value in (1, 2):
            box = [min(5, s - 1) for s in size]
            lo = [
                int(torch.randint(0, max(1, s - k), (1,), generator=g))
                for s, k in zip(size, box, strict=True)
            ]
            labels[(b, 0, *[slice(o, o + k) for o, k in zip(lo, box, strict=True)])] = value
    image = torch.cat(
        [labels.float(), torch.rand((batch, channels - 1, *size), generator=g) * 3 - 1], dim=1
    )
    return A.Batch(image, labels)


# rules ---------------------------------------------------------------------------------------


def test_rules_follow_the_reference():
    iso = spatial_rules((64, 64, 64))
    assert iso.rotation_limit == pytest.approx(math.radians(30)) and iso.rotation_axes == (0, 1, 2)
    assert not iso.slice_stack and iso.mirror_axes == (0, 1, 2)
    stack = spatial_rules((8, 64, 64))  # 64 / 8 > 3: in-plane only, first axis untouched
    assert stack.slice_stack and stack.rotation_axes == (0,) and stack.scaled_axes == (1, 2)
    assert stack.rotation_limit == pytest.approx(math.pi) and stack.crop_size[0] == 8
    assert spatial_rules((112, 64)).rotation_limit == pytest.approx(
        math.radians(15)
    )  # elongated 2D
    assert spatial_rules((64, 64)).rotation_limit == pytest.approx(math.pi)


@pytest.mark.parametrize(
    "patch, crop",
    [
        # worked by hand from nnU-Net's get_patch_size: the edge vector rotated by the largest
        # angle (capped at 90 degrees) about each axis, the largest |coordinate| / 0.85, floored
        ((512, 512), (602, 602)),  # +-180 degrees, capped at 90: 512 / 0.85
        ((512, 256), (659, 301)),  # elongated, 15 degrees: 512 cos + 256 sin = 560.8
        ((128, 128, 128), (205, 205, 205)),  # 30 degrees: 128 (cos + sin) = 174.9
        ((64, 96, 128), (121, 173, 168)),  # the sign of each rotation matters
        ((20, 256, 256), (20, 301, 301)),  # slice stack: first axis kept
    ],
)
def test_crop_size_follows_the_reference(patch, crop):
    assert spatial_rules(patch).crop_size == crop


def test_crop_size_is_never_below_the_patch():
    for patch in [(64, 64, 64), (20, 96, 80), (8, 64, 64), (96, 64), (40, 40), (5, 7)]:
        rules = spatial_rules(patch)
        assert all(c >= p for c, p in zip(rules.crop_size, patch, strict=True))
    assert enlarged_crop_size((41, 40), 0.0, False) == (48, 47)  # no rotation: / 0.85 only


# spatial alignment --------------------------------------------------------------------------------


def one_hot_resampled(labels: np.ndarray, matrix: np.ndarray, patch, order: int) -> np.ndarray:
    """An independent resampler (scipy) of one label channel. Order 1: the reference's rule,
    each value as a one-hot map with the crop padded by -1, linearly interpolated, scaled by
    1000 and compared in float16 (ties aside: the first value here). Order 0: nearest."""
    crop = np.array(labels.shape)
    c_in, c_out = (crop - 1) / 2, (np.array(patch) - 1) / 2
    offset = c_in - matrix @ c_out

    def resample(x, outside):
        return ndimage.affine_transform(
            x,
            matrix,
            offset=offset,
            output_shape=patch,
            order=order,
            mode="grid-constant",
            cval=outside,
        )

    if order == 0:
        return resample(labels, -1)
    values = np.union1d(np.unique(labels), [-1])
    maps = np.stack([resample((labels == v).astype(np.float64), float(v == -1)) for v in values])
    return values[(maps * 1000).astype(np.float16).argmax(0)]


@pytest.mark.parametrize("dims", [2, 3])
def test_labels_resample_as_interpolated_one_hot_maps(dims):
    """Every label channel (target with its -1, a cascade's previous stage) is resampled as
    one-hot maps, linearly, argmax; checked against scipy. Nearest neighbour differs a lot."""
    rng = np.random.default_rng(1)
    crop, patch = (16, 18, 20)[-dims:], (12, 14, 16)[-dims:]
    labels = torch.from_numpy(rng.integers(-1, 3, (1, 2, *crop)).astype(np.int16))
    labels[0, 1] = labels[0, 1].clamp(0, 1)  # the previous stage's prediction: 0 / 1 only
    rules = SpatialRules(
        patch, crop, 0.5, (0,) if dims == 2 else (0, 1, 2), tuple(range(dims)), (), False
    )
    matrix = sampling_matrix(rules, np.array([0.4] * len(rules.rotation_axes)), 1.3)
    _, ours = warp(labels.float(), labels, torch.from_numpy(matrix)[None], patch)
    for channel in (0, 1):
        source = labels[0, channel].numpy()
        expected = one_hot_resampled(source, matrix, patch, order=1)
        nearest = one_hot_resampled(source, matrix, patch, order=0)
        got = ours[0, channel].numpy()
        assert (expected == -1).any() and (expected[expected != -1] >= channel - 1).all()
        assert (got == expected).mean() > 0.995
        assert (nearest == expected).mean() < 0.97  # the test tells the two rules apart


def test_label_ties_go_to_the_nearest_voxel():
    """A point exactly between two voxels reads 0.5 of each one-hot map: the nearest voxel
    (``grid_sample`` rounds half to even: 0.5 to voxel 0, 1.5 to voxel 2) settles the tie,
    whatever the values."""
    labels = torch.tensor([[[[-1, 0, 5]], [[2, 1, 3]]]], dtype=torch.int16)  # (1, 2, 1, 3)
    _, out = warp(labels.float(), labels, torch.eye(2, dtype=torch.float64)[None], (1, 2))
    lowest = [[[[-1, 0]], [[1, 1]]]]
    assert out.tolist() == [[[[-1, 5]], [[2, 3]]]] != lowest


def test_a_point_half_a_voxel_past_the_border_keeps_the_border_label():
    """The crop is padded with the outside label and interpolated: past a border voxel's
    centre its label holds while it outweighs the padding, up to half a voxel; further out
    the outside label wins."""
    labels = torch.full((1, 1, 1, 5), 2, dtype=torch.int16)
    for scale, expected in ((1.2, [2, 2, 2, 2, 2]), (1.6, [-1, 2, 2, 2, -1])):
        matrix = torch.tensor([[[1.0, 0.0], [0.0, scale]]], dtype=torch.float64)
        # offsets from the centre 2 * scale: 2.4 is 0.4 past the border centre, 3.2 is 1.2
        _, out = warp(labels.float(), labels, matrix, (1, 5))
        assert out[0, 0, 0].tolist() == expected


def test_points_outside_the_crop_get_the_outside_label_in_every_channel():
    rules = SpatialRules(PATCH, PATCH, 0.0, (0, 1, 2), (0, 1, 2), (), False)
    labels = torch.ones((1, 2, *PATCH), dtype=torch.int16)
    labels[:, 1] = 2
    params = A.SpatialParams(
        np.array([0]), np.diag([1.4] * 3)[None], np.array([False]), np.array([True])
    )
    out = A.SpatialTransform(rules).apply(A.Batch(labels.float(), labels), params)
    centre = (np.array(PATCH) - 1) / 2
    offsets = np.abs(np.indices(PATCH) - centre.reshape(3, 1, 1, 1)) * 1.4
    # beyond the outer edge of the border voxels, on any axis
    outside = torch.from_numpy((offsets > centre.reshape(3, 1, 1, 1) + 0.5).any(0))
    assert outside.any() and not outside.all()
    for channel, value in ((0, 1), (1, 2)):
        got = out.labels[0, channel]
        assert (got[outside] == -1).all()
        assert (got == value).sum() >= (~outside).sum() * 0.9


@pytest.mark.parametrize("transform", ["spatial", "mirror"])
def test_spatial_transforms_keep_image_and_labels_aligned(transform):
    rules = spatial_rules(PATCH)
    crop = rules.crop_size
    batch = blobs(batch=8, size=crop, seed=3)
    if transform == "spatial":
        t = A.SpatialTransform(rules, p_rotation=1.0, p_scaling=1.0)
    else:
        t = A.Mirror(rules.mirror_axes, probability=1.0)
        batch = A.SpatialTransform(rules, 0.0, 0.0).apply(batch, None)
    params = t.sample(np.random.default_rng(0), batch.batch_size, batch.num_channels)
    out = t.apply(A.Batch(batch.image.clone(), batch.labels.clone()), params)
    assert out.image.shape[2:] == PATCH and out.labels.shape[2:] == PATCH
    # image channel 0 was the label map: (linearly) resampled, it must still match the labels
    agree = (out.image[:, 0].round() == out.labels[:, 0].float()).float().mean()
    assert agree > (0.95 if transform == "spatial" else 0.999)
    assert not torch.equal(
        out.labels, A.SpatialTransform(rules, 0.0, 0.0).apply(batch, None).labels
    )


def test_untransformed_samples_are_exact_central_crops():
    rules = spatial_rules(PATCH)
    batch = blobs(batch=3, size=rules.crop_size)
    out = A.SpatialTransform(rules, 0.0, 0.0).apply(
        A.Batch(batch.image.clone(), batch.labels.clone()), None
    )
    m = [(c - p) // 2 for c, p in zip(rules.crop_size, PATCH, strict=True)]
    region = (slice(None), slice(None), *[slice(a, a + p) for a, p in zip(m, PATCH, strict=True)])
    assert torch.equal(out.image, batch.image[region]) and torch.equal(
        out.labels, batch.labels[region]
    )


def test_slice_stack_rotates_in_plane_only():
    rules = spatial_rules((4, 20, 20))
    t = A.SpatialTransform(rules, p_rotation=1.0, p_scaling=1.0)
    params = t.sample(np.random.default_rng(0), 16, 1)
    for m in params.matrices:
        assert np.allclose(m[0], [1, 0, 0]) and np.allclose(m[:, 0], [1, 0, 0])
    labels = torch.zeros((16, 1, *rules.crop_size), dtype=torch.int16)
    for z in range(4):
        labels[:, 0, z, 8:22, 8:22] = z + 1
    out = t.apply(A.Batch(labels.float(), labels), params)
    # every slice of the output comes from the same slice of the input (-1: zoomed beyond it)
    for z in range(4):
        assert set(out.labels[:, 0, z].unique().tolist()) - {-1} == {0, z + 1}
    outside = out.labels[:, 0] == -1  # zoomed beyond the crop alike in every slice
    assert outside.any() and (outside == outside[:, :1]).all()


# value ranges ----------------------------------------------------------------------------------


def _forced(transform, batch, seed=0):
    rng = np.random.default_rng(seed)
    if isinstance(transform, A.Mirror):
        return transform.sample(rng, batch.batch_size, batch.num_channels)
    return transform.make_params(rng, np.arange(batch.batch_size), batch.num_channels)


def test_noise_blur_brightness_contrast_gamma_lowres_ranges():
    batch = blobs(batch=6)
    before = batch.image.clone()

    noise = _forced(A.GaussianNoise(), batch)
    assert ((noise.std >= 0) & (noise.std <= 0.1)).all()
    out = A.GaussianNoise().apply(A.Batch(before.clone(), batch.labels), noise)
    diff = out.image - before
    assert diff.std() < 0.15

    blur = _forced(A.GaussianBlur(), batch)
    assert ((blur.sigmas >= 0.5) & (blur.sigmas <= 1.0)).all()
    out = A.GaussianBlur().apply(A.Batch(before.clone(), batch.labels), blur)
    changed = torch.from_numpy(blur.channels)
    for b in range(6):
        for c in range(2):
            x, y = before[b, c], out.image[b, c]
            assert y.min() >= x.min() - 1e-5 and y.max() <= x.max() + 1e-5
            assert torch.equal(x, y) != bool(changed[b, c])

    bright = _forced(A.Brightness(), batch)
    assert ((bright.factors >= 0.75) & (bright.factors <= 1.25)).all()
    assert (bright.factors < 1).any() and (bright.factors > 1).any()
    out = A.Brightness().apply(A.Batch(before.clone(), batch.labels), bright)
    assert torch.allclose(
        out.image, before * torch.from_numpy(bright.factors).float()[..., None, None, None]
    )

    contrast = _forced(A.Contrast(), batch)
    out = A.Contrast().apply(A.Batch(before.clone(), batch.labels), contrast)
    flat_in, flat_out = before.flatten(2), out.image.flatten(2)
    assert (flat_out.amin(2) >= flat_in.amin(2) - 1e-5).all() and (
        flat_out.amax(2) <= flat_in.amax(2) + 1e-5
    ).all()

    for invert in (False, True):
        gamma = _forced(A.Gamma(invert=invert), batch)
        assert ((gamma.factors >= 0.7) & (gamma.factors <= 1.5)).all()
        out = A.Gamma(invert=invert).apply(A.Batch(before.clone(), batch.labels), gamma)
        assert torch.allclose(out.image.flatten(2).mean(2), before.flatten(2).mean(2), atol=1e-4)
        assert torch.allclose(out.image.flatten(2).std(2), before.flatten(2).std(2), atol=1e-4)

    low = _forced(A.LowResolution(), batch)
    assert ((low.zoom >= 0.5) & (low.zoom <= 1.0)).all()
    out = A.LowResolution().apply(A.Batch(before.clone(), batch.labels), low)
    assert out.image.shape == before.shape
    assert (out.image.flatten(2).amax(2) <= before.flatten(2).amax(2) + 1e-5).all()


def test_noise_shares_its_sigma_across_channels_but_not_its_field():
    """As the reference's GaussianNoiseTransform (synchronize_channels): one standard deviation
    per sample, the noise drawn independently for each channel."""
    batch = blobs(batch=8, channels=3)
    t = A.GaussianNoise()
    params = t.make_params(np.random.default_rng(0), np.arange(8), 3)
    params.std[:] = np.linspace(0.02, 0.1, 8)
    out = t.apply(A.Batch(batch.image.clone(), batch.labels), params)
    diff = (out.image - batch.image).flatten(2)  # (sample, channel, voxel)
    for b in range(8):
        expected = torch.full((3,), float(params.std[b]))
        assert torch.allclose(diff[b].std(dim=1), expected, rtol=0.1)
        correlation = torch.corrcoef(diff[b])  # independent fields: off-diagonal near 0
        assert (correlation - torch.eye(3)).abs().max() < 0.1


def test_low_resolution_keeps_the_first_axis_of_a_slice_stack():
    batch = blobs(batch=2, size=(4, 16, 16))
    t = A.LowResolution(ignore_axes=(0,))
    params = t.make_params(np.random.default_rng(0), np.arange(2), 2)
    params.channels[:] = True
    params.zoom[:] = 0.5
    out = t.apply(A.Batch(batch.image.clone(), batch.labels), params)
    # each slice only mixes with itself: a constant slice stays constant
    image = torch.zeros((1, 1, 4, 16, 16))
    image[:, :, 2] = 1.0
    out = t.apply(
        A.Batch(image, torch.zeros((1, 1, 4, 16, 16), dtype=torch.int16)),
        A.LowResParams(np.array([0]), np.array([[True]]), np.array([[0.5]])),
    )
    assert torch.equal(out.image[0, 0, :, 5, 5], torch.tensor([0.0, 0.0, 1.0, 0.0]))


# probabilities --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "transform, expected",
    [
        (A.GaussianNoise(), 0.1),
        (A.GaussianBlur(), 0.2 * (1 - 0.5**2)),  # p 0.2, and at least one of 2 channels at p 0.5
        (A.Brightness(), 0.15),
        (A.Contrast(), 0.15),
        (A.LowResolution(), 0.25 * (1 - 0.5**2)),
        (A.Gamma(probability=0.1, invert=True), 0.1),
        (A.Gamma(), 0.3),
    ],
)
def test_observed_probabilities(transform, expected):
    rng = np.random.default_rng(7)
    hits, total = 0, 0
    for _ in range(1500):
        params = transform.sample(rng, 4, 2)
        total += 4
        if params is not None:
            if hasattr(params, "channels"):
                hits += int(params.channels.any(axis=1).sum())
            else:
                hits += params.samples.size
    assert abs(hits / total - expected) < 0.02


def test_observed_probabilities_spatial_and_mirror():
    rules = spatial_rules(PATCH)
    spatial, mirror = A.SpatialTransform(rules), A.Mirror(rules.mirror_axes)
    rng = np.random.default_rng(3)
    rotated = scaled = flips = 0
    n = 3000
    for _ in range(n // 4):
        p = spatial.sample(rng, 4, 1)
        rotated += int(p.rotated.sum())
        scaled += int(p.scaled.sum())
        m = mirror.sample(rng, 4, 1)
        flips += 0 if m is None else int(m.flips.sum())
    assert abs(rotated / n - 0.2) < 0.02 and abs(scaled / n - 0.2) < 0.02
    assert abs(flips / (3 * n) - 0.5) < 0.02


# seeding -------------------------------------------------------------------------------------


def test_same_seed_same_batch_other_seed_other_batch():
    rules = spatial_rules(PATCH)
    aug = A.Augmenter(rules)
    batch = blobs(batch=8, size=rules.crop_size)

    def run(seed):
        return aug(A.Batch(batch.image.clone(), batch.labels.clone()), np.random.SeedSequence(seed))

    a, b, c = run(5), run(5), run(6)
    assert torch.equal(a.image, b.image) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.image, c.image)


def test_finish_masks_maps_outside_label_and_builds_cascade_channels():
    image = torch.ones((1, 2, 4, 4, 4))
    labels = torch.zeros((1, 2, 4, 4, 4), dtype=torch.int16)
    labels[0, 0, 0] = -1
    labels[0, 0, 1] = 2
    labels[0, 1, 2] = 1
    net_input, target = A.finish(A.Batch(image, labels), [1, 2], masked_channels=[1])
    assert net_input.shape == (1, 4, 4, 4, 4)
    assert (net_input[0, 1, 0] == 0).all() and (net_input[0, 0, 0] == 1).all()
    assert target.min() == 0 and (target[0, 0, 1] == 2).all() and target.dtype == torch.int64
    assert (net_input[0, 2] == (labels[0, 1] == 1)).all() and net_input[0, 3].sum() == 0


def test_binary_operator_uses_the_ball_and_keeps_one_hot_exclusive():
    onehot = torch.zeros((1, 2, 12, 12, 12))
    onehot[0, 0, 3:6, 3:6, 3:6] = 1
    onehot[0, 1, 6:9, 6:9, 6:9] = 1
    op = A.RandomBinaryOperator()
    params = A.BinaryOperatorParams(np.array([0]), [[(0, "dilate", 2.3)]])
    out = op.apply_to_onehot(onehot.clone(), params)
    # 3^3 grown by the ball of radius 2 (33 voxels, not the 5^3 cube): 179 voxels; class 1
    # loses its one corner voxel within that ball (a cube would take 2^3 of them)
    grown = ndimage.binary_dilation(onehot[0, 0].numpy() > 0, structure=A.ball_footprint(2.3, 3))
    assert grown.sum() == 179 and torch.equal(out[0, 0] > 0, torch.from_numpy(grown))
    assert out[0, 1].sum() == 27 - 1
    assert (out.sum(1) <= 1).all()
    eroded = op.apply_to_onehot(
        onehot.clone(), A.BinaryOperatorParams(np.array([0]), [[(1, "erode", 1.0)]])
    )
    assert eroded[0, 1].sum() == 1 and torch.equal(eroded[0, 0], onehot[0, 0])


def test_parameter_checks_name_the_parameter():
    with pytest.raises(ValueError, match="`noise.std`"):
        A.GaussianNoise(std=(0.2, 0.1))
    with pytest.raises(ValueError, match="`blur.probability`"):
        A.GaussianBlur(probability=1.5)


def test_3d_rotations_compose_last_axis_first():
    # the reference builds Rz @ Ry @ Rx @ S (x, y, z = array axes 0, 1, 2)
    rules = spatial_rules((64, 64, 64))
    angles = np.array([0.3, -0.2, 0.5])
    expected = (
        rotation_matrix(3, 2, 0.5)
        @ rotation_matrix(3, 1, -0.2)
        @ rotation_matrix(3, 0, 0.3)
        @ np.diag([1.1] * 3)
    )
    np.testing.assert_allclose(sampling_matrix(rules, angles, 1.1), expected)
    reversed_order = (
        rotation_matrix(3, 0, 0.3) @ rotation_matrix(3, 1, -0.2) @ rotation_matrix(3, 2, 0.5)
    )
    assert not np.allclose(sampling_matrix(rules, angles, 1.0), reversed_order)
