import itertools

import numpy as np
import pytest
import torch
from torch import nn

from toolkit.inference.sliding_window import (
    WindowSettings,
    predict_windows,
    sliding_window_logits,
)
from toolkit.inference.windows import (
    count_windows,
    gaussian_factor,
    gaussian_factors,
    gaussian_importance_map,
    mirror_combinations,
    weight_sums,
    window_grid,
    window_starts,
)

CPU = torch.device("cpu")


class Identity(nn.Module):
    """'Logits' = the input channels: sliding window must give back the input exactly."""

    spatial_dims = 3

    def forward(self, x):
        return x * 1.0


class Identity2D(Identity):
    spatial_dims = 2

    def forward(self, x):
        assert x.ndim == 4
        return x * 1.0


class Constant(nn.Module):
    spatial_dims = 3

    def __init__(self, value, classes=2):
        super().__init__()
        self.value = value
        self.classes = classes

    def forward(self, x):
        return torch.full((x.shape[0], self.classes, *x.shape[2:]), float(self.value))


def small_conv_net(seed=0, cin=1, classes=3):
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv3d(cin, 4, 3, padding=1), nn.LeakyReLU(), nn.Conv3d(4, classes, 3, padding=1)
    )
    net.spatial_dims = 3
    return net.eval()


# -- Gaussian map


@pytest.mark.parametrize("patch", [(1, 20, 17), (16, 16, 16), (5, 32, 9)])
def test_gaussian_map_peak_positive_symmetric(patch):
    g = gaussian_importance_map(patch)
    assert g.shape == patch and g.dtype == np.float32
    assert g.max() == pytest.approx(1.0)
    assert (g > 0).all()
    for axes in mirror_combinations(range(3)):
        assert np.array_equal(g, np.flip(g, axes)) if axes else True
    # the peak is at the centre (for even sizes, the central 2 voxels share it)
    centre = tuple((s - 1) // 2 for s in patch)
    assert g[centre] == pytest.approx(1.0, rel=0.02)
    # separable: the map is the outer product of its 1-D profiles
    f = gaussian_factors(patch)
    assert np.allclose(g, np.einsum("i,j,k->ijk", *f), rtol=1e-6)


def test_gaussian_sigma_is_an_eighth_of_the_patch():
    for size in (64, 128, 160):
        w = gaussian_factor(size)
        x = np.arange(size) - (size - 1) / 2
        std = np.sqrt((w * x**2).sum() / w.sum())
        assert std == pytest.approx(size / 8, rel=0.01)
        # edges: 4 sigma from the centre, exp(-8) relative to the peak, never zero
        profile = np.exp(-0.5 * (x / (size / 8)) ** 2)
        assert np.allclose(w, profile / profile.max(), rtol=1e-9)
        assert w.min() == w[0] > 0


# -- window positions


@pytest.mark.parametrize(
    "size,patch,step,expected",
    [
        (110, 64, 0.5, [0, 23, 46]),
        (64, 64, 0.5, [0]),
        (65, 64, 0.5, [0, 1]),
        (128, 64, 0.5, [0, 32, 64]),
        (5, 1, 0.5, [0, 1, 2, 3, 4]),
        (100, 40, 1.0, [0, 30, 60]),
    ],
)
def test_window_starts_examples(size, patch, step, expected):
    assert window_starts(size, patch, step) == expected


@pytest.mark.parametrize(
    "size,patch,step",
    list(itertools.product([7, 33, 64, 97, 300], [1, 4, 32, 48], [0.25, 0.5, 1.0])),
)
def test_window_starts_cover_evenly_without_duplicates(size, patch, step):
    if size < patch:
        with pytest.raises(ValueError):
            window_starts(size, patch, step)
        return
    starts = window_starts(size, patch, step)
    assert starts[0] == 0 and starts[-1] == size - patch
    assert len(set(starts)) == len(starts) == len(sorted(starts))
    gaps = np.diff(starts)
    assert (gaps <= max(1, patch * step) + 1).all()  # rounding adds at most one voxel
    covered = np.zeros(size, bool)
    for s in starts:
        covered[s : s + patch] = True
    assert covered.all()


def test_weight_sums_equal_brute_force_accumulation():
    shape, patch = (13, 40, 29), (8, 16, 16)
    grid = window_grid(shape, patch, 0.5)
    g = gaussian_importance_map(patch).astype(np.float64)
    total = np.zeros(shape)
    for z, y, x in itertools.product(*grid):
        total[z : z + 8, y : y + 16, x : x + 16] += g
    sums = weight_sums(shape, grid, gaussian_factors(patch))
    assert np.allclose(total, np.einsum("i,j,k->ijk", *sums), rtol=1e-6)


def test_mirror_combinations_are_all_subsets():
    assert mirror_combinations([0, 1, 2]) == [
        (),
        (0,),
        (1,),
        (2,),
        (0, 1),
        (0, 2),
        (1, 2),
        (0, 1, 2),
    ]
    assert mirror_combinations([]) == [()]
    assert len(mirror_combinations([1, 2])) == 4


# -- the engine


@pytest.mark.parametrize(
    "shape,patch,mirror,per_forward",
    [
        ((2, 20, 37, 30), (8, 16, 16), (), 1),
        ((2, 20, 37, 30), (8, 16, 16), (0, 1, 2), 8),
        ((1, 5, 10, 40), (8, 16, 16), (1, 2), 3),  # smaller than the patch: padded
        ((1, 16, 16, 16), (16, 16, 16), (0,), 2),  # exactly one window
    ],
)
def test_identity_network_reconstructs_its_input(shape, patch, mirror, per_forward):
    data = torch.from_numpy(np.random.default_rng(0).normal(size=shape).astype(np.float32))
    settings = WindowSettings(patch, 0.5, mirror, per_forward)
    counted = []
    out = sliding_window_logits([Identity()], data, shape[0], settings, CPU, CPU, counted.append)
    assert len(out) == shape[0]
    for c in range(shape[0]):
        assert out[c].shape == shape[1:]
        assert torch.allclose(out[c], data[c], atol=1e-5)
    assert sum(counted) == count_windows(shape[1:], patch, 0.5)


def test_identity_2d_network_works_slice_by_slice():
    data = torch.from_numpy(np.random.default_rng(1).normal(size=(1, 6, 30, 21)).astype(np.float32))
    settings = WindowSettings((1, 16, 16), 0.5, (1, 2), 4)
    out = sliding_window_logits([Identity2D()], data, 1, settings, CPU, CPU)
    assert torch.allclose(out[0], data[0], atol=1e-5)


def test_mirroring_is_symmetric():
    """With every axis mirrored, predicting a flipped volume gives the flipped prediction."""
    net = small_conv_net()
    x = torch.from_numpy(np.random.default_rng(2).normal(size=(1, 1, 8, 12, 10)).astype(np.float32))
    axes = (0, 1, 2)
    with torch.inference_mode():
        ref = predict_windows([net], x, axes, 4)
        for combo in mirror_combinations(axes)[1:]:
            dims = [a + 2 for a in combo]
            flipped = predict_windows([net], torch.flip(x, dims), axes, 4)
            assert torch.allclose(torch.flip(flipped, dims), ref, atol=1e-5)
        # without mirroring the same network is not symmetric (the test above can fail)
        plain = predict_windows([net], x, (), 1)
        assert not torch.allclose(
            torch.flip(predict_windows([net], torch.flip(x, [2]), (), 1), [2]), plain, atol=1e-4
        )


def test_mirrored_prediction_is_the_mean_over_flips():
    net = small_conv_net(seed=3)
    x = torch.from_numpy(np.random.default_rng(3).normal(size=(2, 1, 6, 8, 8)).astype(np.float32))
    with torch.inference_mode():
        expected = (
            sum(
                torch.flip(net(torch.flip(x, [a + 2 for a in c])), [a + 2 for a in c])
                for c in mirror_combinations([1, 2])
            )
            / 4
        )
        for per_forward in (1, 3, 8):
            assert torch.allclose(
                predict_windows([net], x, (1, 2), per_forward), expected, atol=1e-5
            )


def test_folds_logits_are_averaged():
    data = torch.zeros((1, 10, 20, 20))
    settings = WindowSettings((8, 16, 16), 0.5, (0,), 2)
    out = sliding_window_logits([Constant(1.0), Constant(4.0)], data, 2, settings, CPU, CPU)
    assert torch.allclose(out[0], torch.full((10, 20, 20), 2.5))


def test_batching_does_not_change_the_result():
    net = small_conv_net(seed=4, cin=2, classes=2)
    data = torch.from_numpy(
        np.random.default_rng(4).normal(size=(2, 12, 24, 20)).astype(np.float32)
    )
    a = sliding_window_logits([net], data, 2, WindowSettings((8, 16, 16), 0.5, (0, 2), 1), CPU, CPU)
    b = sliding_window_logits(
        [net], data, 2, WindowSettings((8, 16, 16), 0.5, (0, 2), 16), CPU, CPU
    )
    for x, y in zip(a, b, strict=True):
        assert torch.allclose(x, y, atol=1e-5)


def test_wrong_channel_count_is_reported():
    with pytest.raises(ValueError, match="expected 3 classes"):
        sliding_window_logits(
            [Constant(0.0, classes=2)],
            torch.zeros((1, 8, 16, 16)),
            3,
            WindowSettings((8, 16, 16)),
            CPU,
            CPU,
        )
