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


@pytest.mark.parametrize("patch", [(64, 64, 64), (20, 96, 80), (8, 64, 64), (96, 64), (40, 40)])
def test_crop_covers_every_rotation_and_keeps_even_margins(patch):
    rules = spatial_rules(patch)
    for axis, (p, c) in enumerate(zip(rules.patch_size, rules.crop_size, strict=True)):
        assert (c - p) % 2 == 0 and c >= p
        if not (rules.slice_stack and axis == 0):
            assert c >= p / 0.85 - 1
    # any angle up to the limit fits: check the rotated patch's corners in each rotation plane
    dims = len(patch)
    planes = (
        [(0, 1)] if dims == 2 else ([(1, 2)] if rules.slice_stack else [(1, 2), (0, 2), (0, 1)])
    )
    for i, j in planes:
        for angle in np.linspace(0, min(rules.rotation_limit, math.pi / 2), 37):
            c, s = math.cos(angle), math.sin(angle)
            assert patch[i] * c + patch[j] * s <= rules.crop_size[i] + 1e-6
            assert patch[i] * s + patch[j] * c <= rules.crop_size[j] + 1e-6
    assert enlarged_crop_size(tuple(patch), 0.0, False)[-1] >= patch[-1]


# spatial alignment --------------------------------------------------------------------------------


@pytest.mark.parametrize("dims", [2, 3])
def test_warp_matches_an_independent_resampler(dims):
    """Our grid_sample convention equals scipy's affine_transform (order 0) with the same map."""
    rng = np.random.default_rng(1)
    crop = (22, 26, 30)[-dims:]
    patch = (12, 14, 16)[-dims:]
    # blocky regions so that rounding ties at voxel boundaries are rare
    big = ndimage.zoom(
        rng.integers(0, 4, [max(2, c // 5) for c in crop]),
        [c / max(2, c // 5) for c in crop],
        order=0,
    )
    labels = torch.from_numpy(big[tuple(slice(0, c) for c in crop)].astype(np.int16))[None, None]
    angle = 0.4
    rules = SpatialRules(
        patch, crop, 0.5, (0,) if dims == 2 else (0, 1, 2), tuple(range(dims)), (), False
    )
    from toolkit.training.augmentation.spatial import sampling_matrix

    matrix = sampling_matrix(rules, np.array([angle] * len(rules.rotation_axes)), 1.2)
    _, ours = warp(labels.float(), labels, torch.from_numpy(matrix)[None], patch)
    c_in = (np.array(crop) - 1) / 2
    c_out = (np.array(patch) - 1) / 2
    expected = ndimage.affine_transform(
        labels[0, 0].numpy(),
        matrix,
        offset=c_in - matrix @ c_out,
        output_shape=patch,
        order=0,
        cval=0,
    )
    agree = (ours[0, 0].numpy() == expected).mean()
    assert agree > 0.97


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
    # every slice of the output comes from the same slice of the input
    for z in range(4):
        assert set(out.labels[:, 0, z].unique().tolist()) == {0, z + 1}


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
    assert torch.allclose(diff[:, 0], diff[:, 1], atol=1e-6)  # one field for all channels
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
