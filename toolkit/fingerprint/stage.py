"""The dataset fingerprint: what planning needs to know about the training cases.

Per case: spacing, the crop box of the non-zero region (all channels, holes filled), the
shape before and after cropping, and voxel counts per label. Per channel: statistics of the
foreground intensities (label > 0). The reference samples the same number of foreground
voxels from every case, with replacement, about 1e8 in total; the statistics therefore weigh
every case equally whatever its foreground size. We keep that weighting but take each case's
foreground voxels without replacement (all of them when there are fewer than the per-case
budget) and weigh each by ``1 / count``: the same statistics, without materialising 1e8
duplicated values for small datasets.

``fingerprint.json`` is written atomically; the arrays are in SimpleITK's ``(z, y, x)`` order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from toolkit.core.cropping import crop_to_nonzero
from toolkit.core.fingerprint import (
    CaseFingerprint,
    Fingerprint,
    IntensityStats,
)
from toolkit.errors import ToolkitError
from toolkit.io.dataset_json import CaseFiles, DatasetInfo, load_dataset_info, training_cases
from toolkit.io.images import read_channels, read_geometry, read_image
from toolkit.parallel import map_cases
from toolkit.progress import default_workers, info
from toolkit.workspace import DatasetPaths

__all__ = ["extract_fingerprint"]

# foreground voxels sampled for the intensity statistics, over the whole dataset
INTENSITY_SAMPLE_BUDGET = 100_000_000
INTENSITY_SEED = 1234
PERCENTILES = (0.5, 50.0, 99.5)
# samples per block of the statistics' float64 work arrays
_BLOCK = 1 << 22
# a case's peak in a worker, per voxel beyond the float32 image: the labels, the crop's mask,
# its labelling (int32) and the cropped labels; measured on LiTS-sized CT at 13.6-14.2 bytes per
# voxel in all (bench/results/plan_preprocess_ct.md)
FINGERPRINT_BYTES_PER_VOXEL = 11


# pure parts ----------------------------------------------------------------------------


@dataclass
class CaseAnalysis:
    """One case's fingerprint and its foreground samples per channel (for the statistics)."""

    fingerprint: CaseFingerprint
    samples: list[np.ndarray]  # float32 foreground values per channel


def fingerprint_peak_bytes(*, voxels: int, channels: int) -> int:
    """What one case of ``voxels`` (per channel) may need at its peak while fingerprinted."""
    return int(voxels * (4 * channels + FINGERPRINT_BYTES_PER_VOXEL))


def label_counts(seg: np.ndarray) -> dict[int, int]:
    """Voxels per label value, ascending, counted a few slices at a time (no sorted copy)."""
    counts: dict[int, int] = {}
    volume = seg.reshape(-1, *seg.shape[-2:]) if seg.ndim >= 2 else seg.reshape(1, -1)
    step = max(1, _BLOCK // max(math.prod(volume.shape[1:]), 1))
    for start in range(0, volume.shape[0], step):
        values, n = np.unique(volume[start : start + step], return_counts=True)
        for v, k in zip(values.tolist(), n.tolist(), strict=True):
            counts[int(v)] = counts.get(int(v), 0) + int(k)
    return dict(sorted(counts.items()))


def all_finite(image: np.ndarray) -> bool:
    """No NaN or infinity in ``(c, z, y, x)``, checked a slice at a time."""
    if image.dtype.kind not in "fc":
        return True
    return all(bool(np.isfinite(image[:, z]).all()) for z in range(image.shape[1]))


def analyze_case(
    image: np.ndarray,
    seg: np.ndarray,
    spacing_zyx: list[float],
    case: str,
    max_samples: int,
    seed: int = INTENSITY_SEED,
) -> CaseAnalysis:
    """Fingerprint of one case from ``(c, z, y, x)`` image and ``(z, y, x)`` labels."""
    cropped, cropped_seg, box = crop_to_nonzero(image, seg[None])
    foreground = cropped_seg[0] > 0
    rng = np.random.default_rng(seed)
    n_fg = int(foreground.sum())
    pick = None
    if n_fg > max_samples:
        pick = np.sort(rng.choice(n_fg, size=max_samples, replace=False))
    samples = []
    for c in range(cropped.shape[0]):
        values = cropped[c][foreground].astype(np.float32, copy=False)
        samples.append(values[pick] if pick is not None else values)
    fp = CaseFingerprint(
        case=case,
        spacing=[float(s) for s in spacing_zyx],
        shape_before_cropping=[int(s) for s in image.shape[1:]],
        crop_bbox=box,
        shape_after_cropping=[int(s) for s in cropped.shape[1:]],
        label_voxels={str(v): n for v, n in label_counts(seg).items()},
    )
    return CaseAnalysis(fp, samples)


def _sort_keys(per_case: list[np.ndarray]) -> np.ndarray:
    """Every sample as one uint64 that sorts by (value, position in the concatenation).

    The high half holds the float32 value's bits made to sort like the value (negative
    values' bits flipped, positive ones' sign bit set), the low half the sample's index. One
    in-place sort of these keys gives the order of a stable argsort of the values, in 8
    bytes per sample instead of the 40 of values, indices and weights in float64.
    """
    total = sum(s.size for s in per_case)
    if total >= 1 << 32:
        raise ValueError(f"{total} intensity samples: at most 2**32 can be ranked")
    keys = np.empty(total, dtype=np.uint64)
    offset = 0
    for samples in per_case:
        for start in range(0, samples.size, _BLOCK):
            part = samples[start : start + _BLOCK].astype(np.float32) + np.float32(0.0)  # -0 -> +0
            bits = part.view(np.uint32)
            bits = np.where(bits >> 31 == 1, ~bits, bits | np.uint32(1 << 31))
            index = np.arange(offset + start, offset + start + part.size, dtype=np.uint64)
            keys[offset + start : offset + start + part.size] = (
                bits.astype(np.uint64) << np.uint64(32)
            ) | index
        offset += samples.size
    keys.sort()
    return keys


def _decode(keys: np.ndarray, offsets: np.ndarray, case_weights: np.ndarray):
    """Values (float64) and weights of a block of sorted keys."""
    bits = (keys >> np.uint64(32)).astype(np.uint32)
    bits = np.where(bits >> 31 == 1, bits & np.uint32(0x7FFFFFFF), ~bits)
    case = np.searchsorted(offsets, keys & np.uint64(0xFFFFFFFF), side="right") - 1
    return bits.view(np.float32).astype(np.float64), case_weights[case]


def weighted_percentiles(per_case: list[np.ndarray], percentiles: tuple[float, ...]) -> list[float]:
    """Percentiles of the samples of every case, each case weighing the same in total.

    The numbers of ``np.interp(p, positions, values)`` over the samples in stable sorted
    order, ``positions = (cum - w) / (cum[-1] - w[-1])`` with ``cum`` the running sum of the
    weights ``1 / case size`` (numpy's default 'linear' percentiles when all weights are
    equal), computed block by block from sorted keys so that no array of float64 values,
    weights, running sums or positions of every sample exists at once.
    """
    per_case = [s for s in per_case if s.size]
    sizes = np.asarray([s.size for s in per_case], dtype=np.int64)
    if sizes.sum() == 1:
        return [float(per_case[0].ravel()[0])] * len(percentiles)
    offsets = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.uint64)
    case_weights = np.asarray([1.0 / n for n in sizes], dtype=np.float64)
    keys = _sort_keys(per_case)
    # first pass: the running sum's end and the last weight, for the positions' scale
    carry = 0.0
    for start in range(0, keys.size, _BLOCK):
        _, w = _decode(keys[start : start + _BLOCK], offsets, case_weights)
        carry = float(np.cumsum(np.concatenate(([carry], w)))[-1])
    scale = carry - float(w[-1])
    # second pass: the interval of positions around each percentile
    results: dict[int, float] = {}
    carry, previous = 0.0, None  # previous: (position, value) of the last sample seen
    for start in range(0, keys.size, _BLOCK):
        v, w = _decode(keys[start : start + _BLOCK], offsets, case_weights)
        cum = np.cumsum(np.concatenate(([carry], w)))[1:]
        carry = float(cum[-1])
        positions = (cum - w) / scale
        for i, p in enumerate(percentiles):
            if i in results:
                continue
            q = p / 100.0
            count = int(np.searchsorted(positions, q, side="right"))
            if count == positions.size:
                continue
            if count == 0:
                if previous is None:
                    results[i] = float(v[0])
                    continue
                xp0, fp0 = previous
            else:
                xp0, fp0 = positions[count - 1], v[count - 1]
            results[i] = float(np.interp(q, [xp0, positions[count]], [fp0, v[count]]))
        previous = (positions[-1], v[-1])
    last = float(v[-1])
    return [results.get(i, last) for i in range(len(percentiles))]


def intensity_statistics(per_case: list[np.ndarray]) -> IntensityStats:
    """Statistics of one channel's foreground samples, every case with the same total weight.

    Sums run per case and block (float64 accumulators), so the main process needs about 12
    bytes per sample (the samples and one sort key each) whatever the dataset's size.
    """
    chunks = [s.ravel() for s in per_case if s.size]
    if not chunks:
        nan = float("nan")
        return IntensityStats(nan, nan, nan, nan, nan, nan, nan, 0)
    total = float(len(chunks))  # each case's weights add up to one
    mean = sum(float(s.sum(dtype=np.float64)) / s.size for s in chunks) / total
    spread = 0.0
    for s in chunks:
        case = 0.0
        for start in range(0, s.size, _BLOCK):
            d = s[start : start + _BLOCK].astype(np.float64) - mean
            case += float(np.dot(d, d))
        spread += case / s.size
    std = float(math.sqrt(max(spread / total, 0.0)))
    p_lo, median, p_hi = weighted_percentiles(chunks, PERCENTILES)
    return IntensityStats(
        mean=mean,
        std=std,
        median=median,
        min=float(min(s.min() for s in chunks)),
        max=float(max(s.max() for s in chunks)),
        percentile_00_5=p_lo,
        percentile_99_5=p_hi,
        num_samples=int(sum(s.size for s in chunks)),
    )


def dataset_fingerprint(
    dataset_name: str, info_: DatasetInfo, analyses: list[CaseAnalysis], budget: int, seed: int
) -> Fingerprint:
    cases = [a.fingerprint for a in analyses]
    channels = info_.num_channels
    intensity = [intensity_statistics([a.samples[c] for a in analyses]) for c in range(channels)]
    return Fingerprint(
        dataset_name=dataset_name,
        channel_names=dict(info_.channel_names),
        labels=dict(info_.labels),
        regions_class_order=info_.regions_class_order,
        num_training=info_.num_training,
        cases=cases,
        intensity=intensity,
        median_relative_size_after_cropping=float(
            np.median([c.relative_size_after_cropping for c in cases])
        ),
        sampling={"budget": budget, "per_case": budget // max(len(cases), 1), "seed": seed},
    )


# I/O -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    files: CaseFiles
    labels: tuple[int, ...]
    max_samples: int
    seed: int


def _run_job(job: _Job) -> CaseAnalysis:
    files = job.files
    if files.label is None:
        raise ToolkitError("training case without a label file", files.images[0])
    image, geometry = read_channels(files.images)
    seg, seg_geometry = read_image(files.label)
    problem = geometry.matches(seg_geometry)
    if problem is not None:
        raise ToolkitError(f"label does not match its image: {problem}", files.label)
    if not np.issubdtype(seg.dtype, np.integer):
        if not np.all(np.mod(seg, 1) == 0):
            raise ToolkitError("label holds non-integer values", files.label)
        seg = seg.astype(np.int32)
    present = set(label_counts(seg))
    unknown = sorted(present - set(job.labels))
    if unknown:
        raise ToolkitError(
            f"label holds values {unknown} not declared in dataset.json (declared: {sorted(job.labels)})",
            files.label,
        )
    if not all_finite(image):
        raise ToolkitError("image holds NaN or infinite values", files.images[0])
    return analyze_case(
        image, seg, list(geometry.spacing_zyx), files.case, job.max_samples, job.seed
    )


def _largest_peak(cases: list[CaseFiles]) -> int:
    voxels = max(math.prod(read_geometry(c.images[0]).shape_zyx) for c in cases)
    return fingerprint_peak_bytes(voxels=voxels, channels=len(cases[0].images))


def extract_fingerprint(
    paths: DatasetPaths,
    workers: int | None = None,
    quiet: bool = False,
    budget: int = INTENSITY_SAMPLE_BUDGET,
    seed: int = INTENSITY_SEED,
) -> Fingerprint:
    """Fingerprint every training case (in parallel) and write ``fingerprint.json``."""
    paths.require_raw()
    dataset = load_dataset_info(paths)
    cases = training_cases(paths, dataset)
    if not cases:
        raise ToolkitError("no training cases in imagesTr/labelsTr", paths.raw)
    per_case = max(1, budget // len(cases))
    jobs = [_Job(c, tuple(dataset.label_values), per_case, seed) for c in cases]
    workers = default_workers(workers)
    peak = _largest_peak(cases) if workers > 1 and len(cases) > 1 else None
    analyses = map_cases(_run_job, jobs, workers, "fingerprint", quiet, peak_bytes=peak)
    fingerprint = dataset_fingerprint(paths.name, dataset, analyses, budget, seed)
    fingerprint.save(paths.fingerprint_json)
    if not quiet:
        info(f"fingerprint of {len(cases)} cases written to {paths.fingerprint_json}")
    return fingerprint
