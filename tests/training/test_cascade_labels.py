"""The cascade's perturbations of the previous stage's one-hot channels, against nnU-Net v2's
(batchgeneratorsv2's ApplyRandomBinaryOperatorTransform and
RemoveRandomConnectedComponentFromOneHotEncodingTransform as nnU-Net's trainer sets them up):
the probabilities, the ball, the connectivity, the size limit and the order."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from toolkit.training import augmentation as A

# many small boolean passes: one torch thread avoids waiting on the two shared cores
pytestmark = pytest.mark.usefixtures("one_torch_thread")


# scikit-image 0.26's ball (3D) and disk (2D) for these float radii, as the reference calls
# them: (radius, dims, side of the footprint, points)
REFERENCE_FOOTPRINTS = [
    (1.0, 3, 3, 7),
    (1.3, 3, 3, 7),
    (1.6, 3, 4, 8),
    (2.3, 3, 5, 33),
    (2.6, 3, 6, 56),
    (3.2, 3, 7, 119),  # the integer ball of radius 3 has 123: rounding drops 4 on the sphere
    (4.5, 3, 10, 360),
    (5.05, 3, 11, 503),
    (7.99, 3, 16, 1736),
    (8.0, 3, 17, 2109),
    (1.0, 2, 3, 5),
    (1.3, 2, 4, 4),
    (1.6, 2, 5, 8),
    (2.3, 2, 6, 15),
    (2.6, 2, 7, 20),
    (3.2, 2, 8, 31),
    (4.5, 2, 10, 60),
    (5.05, 2, 12, 79),
    (7.99, 2, 17, 193),
    (8.0, 2, 17, 197),
]


@pytest.mark.parametrize("radius, dims, side, points", REFERENCE_FOOTPRINTS)
def test_footprint_is_the_references_ball_of_a_real_radius(radius, dims, side, points):
    footprint = A.ball_footprint(radius, dims)
    assert footprint.shape == (side,) * dims and footprint.sum() == points
    assert footprint[((side - 1) // 2,) * dims]  # holds its origin


def test_footprint_shapes_are_balls_not_cubes():
    ball = A.ball_footprint(2.3, 3)  # stretched grid: the ball of radius 2
    z, y, x = np.indices((5, 5, 5)) - 2
    assert np.array_equal(ball, z * z + y * y + x * x <= 4)
    disk = A.ball_footprint(1.3, 2)  # the reference's disk is off-centre: a 2x2 block
    assert np.array_equal(np.argwhere(disk), [[1, 1], [1, 2], [2, 1], [2, 2]])


def _shift_dilation(mask: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """Independent definition: OR of the mask shifted by every footprint point."""
    origin = [(k - 1) // 2 for k in footprint.shape]
    padded = np.pad(mask, [(o, k - 1 - o) for o, k in zip(origin, footprint.shape, strict=True)])
    out = np.zeros_like(mask)
    for point in np.argwhere(footprint):
        out |= padded[tuple(slice(p, p + n) for p, n in zip(point, mask.shape, strict=True))]
    return out


@pytest.mark.parametrize("dims", [2, 3])
def test_dilation_and_erosion_match_an_independent_definition(dims):
    rng = np.random.default_rng(dims)
    shape = (11, 13, 12)[:dims] if dims == 3 else (31, 27)
    for radius in [1.0, 1.3, 2.6, 3.5, 5.2, 7.9]:
        mask = rng.random(shape) < 0.08
        footprint = A.ball_footprint(radius, dims)
        got = A.dilate(torch.from_numpy(mask), footprint).numpy()
        assert np.array_equal(got, _shift_dilation(mask, footprint))
        if np.array_equal(footprint, np.flip(footprint)) and footprint.shape[0] % 2:
            # centred: scipy's dilation is the same
            assert np.array_equal(got, ndimage.binary_dilation(mask, structure=footprint))
        eroded = A.morphology(torch.from_numpy(mask), "erode", radius).numpy()
        assert np.array_equal(eroded, ~_shift_dilation(~mask, footprint))
    full = torch.ones(shape, dtype=torch.bool)
    assert A.morphology(full, "erode", 3.0).all()  # the outside never erodes


def _whole_volume(mask: torch.Tensor, op: str, radius: float) -> torch.Tensor:
    footprint = A.ball_footprint(radius, mask.dim())
    grow = lambda m: A.dilate(m, footprint)  # noqa: E731
    shrink = lambda m: ~A.dilate(~m, footprint)  # noqa: E731
    steps = {"dilate": [grow], "erode": [shrink], "open": [shrink, grow], "close": [grow, shrink]}
    for step in steps[op]:
        mask = step(mask)
    return mask


def test_morphology_on_the_bounding_box_equals_the_whole_volume():
    rng = np.random.default_rng(7)
    for op in A.RandomBinaryOperator.operations:
        mask = np.zeros((40, 36, 44), dtype=bool)
        mask[10:22, 5:9, 30:42] = rng.random((12, 4, 12)) < 0.6
        radius = float(rng.uniform(1, 8))
        t = torch.from_numpy(mask)
        assert torch.equal(A.morphology(t, op, radius), _whole_volume(t, op, radius))


def test_binary_operator_draws_the_references_probabilities():
    op = A.RandomBinaryOperator()
    params = op.sample(np.random.default_rng(0), 10000, 3)
    assert abs(params.samples.size / 10000 - 0.4) < 0.02  # per sample
    drawn = [o for ops in params.operations for o in ops]
    assert abs(len(drawn) / (3 * params.samples.size) - 0.5) < 0.02  # per label
    names = [name for _, name, _ in drawn]
    for name in A.RandomBinaryOperator.operations:
        assert abs(names.count(name) / len(drawn) - 0.25) < 0.02
    radii = np.array([r for _, _, r in drawn])
    assert radii.min() >= 1.0 and radii.max() <= 8.0
    assert np.mean(radii != np.round(radii)) > 0.99  # a real number, not an integer
    counts = np.histogram(radii, bins=7, range=(1, 8))[0] / radii.size
    assert np.abs(counts - 1 / 7).max() < 0.02  # uniform
    pairs = [ops[:2] for ops in params.operations if len(ops) >= 2]
    descending = np.mean([a[0] > b[0] for a, b in pairs])
    assert abs(descending - 0.5) < 0.05  # labels in random order


def test_component_removal_draws_the_references_probabilities():
    removal = A.RandomComponentRemoval()
    params = removal.sample(np.random.default_rng(1), 10000, 3)
    assert abs(params.samples.size / 10000 - 0.2) < 0.02  # per sample
    drawn = [r for rs in params.removals for r in rs]
    assert abs(len(drawn) / (3 * params.samples.size) - 0.5) < 0.03  # per label
    picks = np.array([u for _, u in drawn])
    assert picks.min() >= 0 and picks.max() < 1


def test_component_removal_uses_full_connectivity_and_the_patch_fraction():
    mask = np.zeros((10, 10, 10), dtype=bool)  # 15% of the patch: 150 voxels
    mask[0, 0, 0] = mask[1, 1, 1] = True  # corners touch: one component
    mask[9, 9, 9] = True
    mask[4:9, 0:5, 4:10] = True  # 150 voxels: kept
    picks = {
        u: tuple(map(tuple, np.argwhere(A.removable_component(mask, 0.15, u))))
        for u in (0.0, 0.49, 0.5, 0.99)
    }
    assert picks[0.0] == picks[0.49] == ((0, 0, 0), (1, 1, 1))
    assert picks[0.5] == picks[0.99] == ((9, 9, 9),)
    mask[4, 0, 4] = False  # 149 voxels: now small enough
    assert A.removable_component(mask, 0.15, 0.5).sum() == 149
    assert A.removable_component(np.zeros((4, 4), dtype=bool), 0.15, 0.3) is None


def test_component_removal_only_touches_the_drawn_label():
    onehot = torch.zeros((2, 2, 8, 8, 8))
    onehot[:, 0, 1:3, 1:3, 1:3] = 1
    onehot[:, 1, 5:7, 5:7, 5:7] = 1
    removal = A.RandomComponentRemoval()
    out = removal.apply_to_onehot(
        onehot.clone(), A.ComponentRemovalParams(np.array([1]), [[(1, 0.0)]])
    )
    assert torch.equal(out[0], onehot[0]) and torch.equal(out[1, 0], onehot[1, 0])
    assert out[1, 1].sum() == 0


def test_cascade_runs_binary_operator_then_component_removal_on_the_final_patch():
    cascade = A.CascadeAugmentation()
    assert [t.name for t in cascade.transforms] == ["binary_operator", "component_removal"]
    assert [t.probability for t in cascade.transforms] == [0.4, 0.2]
    # two small blobs that a dilation merges into one component above 15% of the patch:
    # removed after the dilation, nothing is left to remove; the other way round, one is
    image = torch.zeros((1, 1, 10, 10, 10))
    labels = torch.zeros((1, 2, 10, 10, 10), dtype=torch.int16)
    labels[0, 1, 3:5, 3:5, 2:4] = 1
    labels[0, 1, 3:5, 3:5, 6:8] = 1
    params = A.CascadeParams(
        {
            "binary_operator": A.BinaryOperatorParams(np.array([0]), [[(0, "dilate", 2.3)]]),
            "component_removal": A.ComponentRemovalParams(np.array([0]), [[(0, 0.0)]]),
        }
    )
    net_input, _ = A.finish(A.Batch(image, labels), [1], [], cascade, params)
    grown = A.morphology(labels[0, 1] > 0, "dilate", 2.3)
    assert grown.sum() >= 150  # one component, too large to remove
    assert torch.equal(net_input[0, 1] > 0, grown)
    reversed_order = A.CascadeAugmentation()
    reversed_order.transforms = reversed_order.transforms[::-1]
    other, _ = A.finish(A.Batch(image, labels), [1], [], reversed_order, params)
    assert not torch.equal(other[0, 1] > 0, grown)


def test_cascade_sampling_is_seeded():
    cascade = A.CascadeAugmentation()

    def draw(seed):
        return cascade.sample(np.random.default_rng(seed), 64, 2).by_transform

    a, b = draw(3), draw(3)
    assert a["binary_operator"].operations == b["binary_operator"].operations
    assert a["component_removal"].removals == b["component_removal"].removals
    assert draw(4)["binary_operator"].operations != a["binary_operator"].operations


def test_parameter_checks_name_the_parameter():
    with pytest.raises(ValueError, match="`binary_operator.p_per_label`"):
        A.RandomBinaryOperator(p_per_label=2)
    with pytest.raises(ValueError, match="`binary_operator.radius`"):
        A.RandomBinaryOperator(radius=(0.5, 8))
    with pytest.raises(ValueError, match="`component_removal.max_fraction`"):
        A.RandomComponentRemoval(max_fraction=1.5)
