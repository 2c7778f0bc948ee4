"""Bounded memory on large CT: the same numbers as the whole-volume code, and workers capped by memory.

The whole-volume reference below is the resampling as it was before it went slab by slab
(every changing axis applied to the whole volume, smallest output first, then clipped);
the slab-wise code must give the same images within float32 rounding (products of other
sizes round differently in BLAS) and the same labels except where an interpolated indicator
sits on 0.5 within that rounding.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from toolkit.convert.stage import convert_peak_bytes
from toolkit.core.plans import Resampling
from toolkit.core.resampling import (
    _apply_axis,
    _axis_orders,
    axis_operator,
    resample,
    resample_labels,
)
from toolkit.fingerprint.stage import (
    PERCENTILES,
    fingerprint_peak_bytes,
    intensity_statistics,
    label_counts,
)
from toolkit.parallel import (
    GIB,
    capped_workers,
    cgroup_headroom,
    meminfo_available,
    workers_for_memory,
)
from toolkit.preprocessing.stage import preprocess_peak_bytes

CASES = [
    # (shape, new shape, spacing, new spacing): isotropic up/down, anisotropic (nearest in z)
    ((12, 15, 17), (17, 11, 23), [1, 1, 1], [1, 1, 1]),
    ((9, 40, 33), (30, 36, 40), [5.0, 0.8, 0.8], [1.5, 0.78, 0.78]),
    ((20, 31, 29), (14, 40, 22), [1, 1, 1], [1, 1, 1]),
    ((30, 20, 20), (60, 20, 20), [1, 1, 1], [1, 1, 1]),
]


def whole_volume(volume, new_shape, orders, coarse, clip=True):
    """The resampling before slabs: each changing axis over the whole volume, then clipped."""
    out = volume.astype(np.float32)
    for axis in sorted(range(volume.ndim), key=lambda a: new_shape[a] / volume.shape[a]):
        out = _apply_axis(out, axis, new_shape[axis], orders[axis])
    if not clip or all(o <= 1 for o in orders):
        return out
    if coarse is not None and orders[coarse] == 0:
        other = tuple(a for a in range(volume.ndim) if a != coarse)
        select = axis_operator(volume.shape[coarse], new_shape[coarse], 0)
        shape = [1] * volume.ndim
        shape[coarse] = -1
        lo = (select @ volume.min(axis=other).astype(np.float64)).reshape(shape)
        hi = (select @ volume.max(axis=other).astype(np.float64)).reshape(shape)
        return np.clip(out, lo.astype(np.float32), hi.astype(np.float32))
    return np.clip(out, volume.min(), volume.max())


@pytest.mark.parametrize("shape,new_shape,spacing,new_spacing", CASES)
@pytest.mark.parametrize("slab_bytes", [64, 5000, 32 << 20])
@pytest.mark.parametrize("order", [1, 3])
def test_slabs_give_the_whole_volume_numbers(
    shape, new_shape, spacing, new_spacing, slab_bytes, order
):
    rng = np.random.default_rng(0)
    image = (rng.normal(size=shape) * 100).astype(np.float32)
    orders, coarse = _axis_orders(3, order, spacing, new_spacing, 0, 3.0)
    reference = whole_volume(image, list(new_shape), orders, coarse)
    ours = resample(
        image[None], new_shape, spacing, new_spacing, order=order, slab_bytes=slab_bytes
    )[0]
    assert ours.dtype == np.float32 and ours.shape == tuple(new_shape)
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-6 * np.abs(reference).max())
    # float64 input: cast slab by slab, the same numbers
    again = resample(
        image[None].astype(np.float64),
        new_shape,
        spacing,
        new_spacing,
        order=order,
        slab_bytes=slab_bytes,
    )[0]
    np.testing.assert_array_equal(again, ours)


@pytest.mark.parametrize("shape,new_shape,spacing,new_spacing", CASES)
@pytest.mark.parametrize("slab_bytes", [64, 5000, 32 << 20])
def test_slab_labels_follow_the_one_hot_rule_of_the_whole_volume(
    shape, new_shape, spacing, new_spacing, slab_bytes
):
    # smooth labels (nested blobs, an outside rim): no indicator exactly on 0.5
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = np.sqrt(sum((g * k) ** 2 for g, k in zip(grid, (1.0, 1.13, 0.91), strict=True)))
    seg = np.zeros(shape, dtype=np.int8)
    seg[r < 0.83] = 1
    seg[r < 0.41] = 2
    seg[..., 0] = -1
    orders, coarse = _axis_orders(3, 1, spacing, new_spacing, 0, 3.0)
    reference = np.zeros(new_shape, dtype=np.int8)
    for label in np.unique(seg):
        indicator = whole_volume(
            (seg == label).astype(np.float32), list(new_shape), orders, coarse, clip=False
        )
        reference[indicator >= 0.5] = label
    ours = resample_labels(
        seg[None], new_shape, spacing, new_spacing, Resampling(), slab_bytes=slab_bytes
    )[0]
    assert ours.dtype == np.int8
    np.testing.assert_array_equal(ours, reference)


def test_label_counts_per_slab_equal_unique():
    rng = np.random.default_rng(3)
    seg = rng.integers(0, 4, size=(37, 9, 11)).astype(np.uint8)
    values, counts = np.unique(seg, return_counts=True)
    assert label_counts(seg) == dict(zip(values.tolist(), counts.tolist(), strict=True))
    assert list(label_counts(seg)) == sorted(label_counts(seg))


def _reference_statistics(per_case):
    """The statistics as computed before: every sample in float64, weights 1 / case size."""
    chunks = [s for s in per_case if s.size]
    values = np.concatenate(chunks).astype(np.float64)
    weights = np.concatenate([np.full(s.size, 1.0 / s.size) for s in chunks])
    mean = (values * weights).sum() / weights.sum()
    std = math.sqrt(((values - mean) ** 2 * weights).sum() / weights.sum())
    order = np.argsort(values, kind="stable")
    v, w = values[order], weights[order]
    cum = np.cumsum(w)
    positions = (cum - w) / (cum[-1] - w[-1])
    return mean, std, [float(np.interp(p / 100, positions, v)) for p in PERCENTILES]


@pytest.mark.parametrize("seed", range(6))
def test_intensity_statistics_equal_the_float64_computation(seed, monkeypatch):
    import toolkit.fingerprint.stage as stage

    monkeypatch.setattr(stage, "_BLOCK", [7, 64, 1 << 22][seed % 3])  # blocks cut everywhere
    rng = np.random.default_rng(seed)
    per_case = []
    for _ in range(int(rng.integers(1, 6))):
        size = int(rng.integers(1, 2000))
        values = rng.normal(40, 30, size) if seed % 2 else rng.integers(-5, 6, size)
        per_case.append(np.asarray(values, dtype=np.float32))
    stats = intensity_statistics(per_case)
    mean, std, (p_lo, median, p_hi) = _reference_statistics(per_case)
    assert stats.mean == pytest.approx(mean, rel=1e-12)
    assert stats.std == pytest.approx(std, rel=1e-12)
    # percentiles: the same sorted order, running sums and interpolation, bit for bit
    assert (stats.percentile_00_5, stats.median, stats.percentile_99_5) == (p_lo, median, p_hi)
    assert stats.num_samples == sum(s.size for s in per_case)


def test_worker_rule_with_fake_memory():
    # 24 GB machine, 20 GB free, 3.5 GB per case: 5 fit beside the 1 GB reserve
    assert workers_for_memory(requested=8, available_bytes=20 * GIB, peak_bytes=int(3.5 * GIB)) == 5
    assert workers_for_memory(requested=2, available_bytes=20 * GIB, peak_bytes=int(3.5 * GIB)) == 2
    # nothing fits: still one worker; unknown memory or peak: as requested
    assert workers_for_memory(requested=4, available_bytes=2 * GIB, peak_bytes=3 * GIB) == 1
    assert workers_for_memory(requested=4, available_bytes=None, peak_bytes=3 * GIB) == 4
    assert workers_for_memory(requested=4, available_bytes=8 * GIB, peak_bytes=None) == 4
    assert workers_for_memory(requested=0, available_bytes=8 * GIB, peak_bytes=GIB) == 1
    assert (
        workers_for_memory(requested=8, available_bytes=9 * GIB, peak_bytes=GIB, reserve_bytes=0)
        == 8
    )


def test_memory_readings():
    text = "MemTotal:       24000000 kB\nMemFree: 1 kB\nMemAvailable:   20000000 kB\n"
    assert meminfo_available(text) == 20000000 * 1024
    assert meminfo_available("MemTotal: 5 kB\n") is None
    assert cgroup_headroom("max\n", "123\n") is None  # v2 without a limit
    assert cgroup_headroom("8589934592\n", "2147483648\n") == 6 * GIB
    assert cgroup_headroom("8589934592", "2147483648", inactive_file=GIB) == 7 * GIB
    assert cgroup_headroom("9223372036854771712", "10") is None  # v1 "no limit"
    assert cgroup_headroom("", "") is None


def test_the_cap_is_printed_when_it_applies(monkeypatch, capsys):
    import toolkit.parallel as parallel

    printed = []
    monkeypatch.setattr(parallel, "info", printed.append)
    monkeypatch.setattr(parallel, "memory_available", lambda: 10 * GIB)
    # a worker's base (0.25 GB) is added to the case's own 2.75 GB
    assert parallel.WORKER_BYTES == GIB // 4
    assert capped_workers(8, int(2.75 * GIB), "preprocess 3d_fullres") == 3
    assert printed == [
        "preprocess 3d_fullres: 3 workers instead of 8 (3.0 GB per case, 10.0 GB available)"
    ]
    printed.clear()
    assert capped_workers(2, int(2.75 * GIB), "preprocess") == 2 and printed == []
    monkeypatch.setattr(parallel, "memory_available", lambda: 2 * GIB)
    assert capped_workers(2, 3 * GIB, "fingerprint") == 1
    assert "1 worker instead of 2" in printed[0]


def test_lits_sized_case_estimates_stay_under_4_gb():
    # the largest LiTS-like bench case: 350 slices of 512x512 at 5 mm, to 1.5 mm
    preprocess = preprocess_peak_bytes(
        voxels=350 * 512 * 512, voxels_after=1167 * 538 * 538, channels=1
    )
    fingerprint = fingerprint_peak_bytes(voxels=600 * 512 * 512, channels=1)
    convert = convert_peak_bytes(voxels=600 * 512 * 512)
    assert preprocess < 4 * GIB and fingerprint < 4 * GIB and convert < 4 * GIB
    # 24 GB machine with 20 GB free: several workers, never all eight
    assert 1 < workers_for_memory(requested=8, available_bytes=20 * GIB, peak_bytes=preprocess) < 8


def test_class_locations_searched_in_blocks_are_the_same(monkeypatch):
    import toolkit.preprocessing.case as case

    rng = np.random.default_rng(5)
    seg = rng.integers(-1, 3, size=(1, 20, 25, 30)).astype(np.int8)
    whole = case.sample_class_locations(seg, [1, 2])  # one block: the whole-array search
    monkeypatch.setattr(case, "_LOCATION_BLOCK", 97)
    assert case.sample_class_locations(seg, [1, 2]) == whole


def test_holes_filled_in_blocks_equal_scipy(monkeypatch):
    from scipy import ndimage

    import toolkit.core.cropping as cropping

    rng = np.random.default_rng(6)
    mask = rng.random((17, 19, 23)) > 0.3
    monkeypatch.setattr(cropping, "_BLOCK", 101)
    np.testing.assert_array_equal(cropping.fill_holes(mask), ndimage.binary_fill_holes(mask))
