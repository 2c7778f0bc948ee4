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
from toolkit.io.images import read_channels, read_image
from toolkit.parallel import map_cases
from toolkit.progress import default_workers, info
from toolkit.workspace import DatasetPaths

__all__ = ["extract_fingerprint"]

# foreground voxels sampled for the intensity statistics, over the whole dataset
INTENSITY_SAMPLE_BUDGET = 100_000_000
INTENSITY_SEED = 1234
PERCENTILES = (0.5, 50.0, 99.5)


# pure parts ----------------------------------------------------------------------------


@dataclass
class CaseAnalysis:
    """One case's fingerprint and its foreground samples per channel (for the statistics)."""

    fingerprint: CaseFingerprint
    samples: list[np.ndarray]  # float32 foreground values per channel


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
    values, counts = np.unique(seg, return_counts=True)
    fp = CaseFingerprint(
        case=case,
        spacing=[float(s) for s in spacing_zyx],
        shape_before_cropping=[int(s) for s in image.shape[1:]],
        crop_bbox=box,
        shape_after_cropping=[int(s) for s in cropped.shape[1:]],
        label_voxels={str(int(v)): int(n) for v, n in zip(values, counts, strict=True)},
    )
    return CaseAnalysis(fp, samples)


def weighted_percentiles(
    values: np.ndarray, weights: np.ndarray, percentiles: tuple[float, ...]
) -> list[float]:
    """Percentiles of weighted samples; with equal weights, numpy's default ('linear')."""
    order = np.argsort(values, kind="stable")
    v, w = values[order].astype(np.float64), weights[order].astype(np.float64)
    cum = np.cumsum(w)
    if len(v) == 1:
        return [float(v[0])] * len(percentiles)
    positions = (cum - w) / (cum[-1] - w[-1])
    return [float(np.interp(p / 100.0, positions, v)) for p in percentiles]


def intensity_statistics(per_case: list[np.ndarray]) -> IntensityStats:
    """Statistics of one channel's foreground samples, every case with the same total weight."""
    chunks = [s for s in per_case if s.size]
    if not chunks:
        nan = float("nan")
        return IntensityStats(nan, nan, nan, nan, nan, nan, nan, 0)
    values = np.concatenate(chunks).astype(np.float64)
    weights = np.concatenate([np.full(s.size, 1.0 / s.size) for s in chunks])
    total = weights.sum()
    mean = float((values * weights).sum() / total)
    std = float(math.sqrt(max(((values - mean) ** 2 * weights).sum() / total, 0.0)))
    p_lo, median, p_hi = weighted_percentiles(values, weights, PERCENTILES)
    return IntensityStats(
        mean=mean,
        std=std,
        median=median,
        min=float(values.min()),
        max=float(values.max()),
        percentile_00_5=p_lo,
        percentile_99_5=p_hi,
        num_samples=int(values.size),
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
    present = set(np.unique(seg).tolist())
    unknown = sorted(present - set(job.labels))
    if unknown:
        raise ToolkitError(
            f"label holds values {unknown} not declared in dataset.json (declared: {sorted(job.labels)})",
            files.label,
        )
    if not np.all(np.isfinite(image)):
        raise ToolkitError("image holds NaN or infinite values", files.images[0])
    return analyze_case(
        image, seg, list(geometry.spacing_zyx), files.case, job.max_samples, job.seed
    )


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
    analyses = map_cases(_run_job, jobs, default_workers(workers), "fingerprint", quiet)
    fingerprint = dataset_fingerprint(paths.name, dataset, analyses, budget, seed)
    fingerprint.save(paths.fingerprint_json)
    if not quiet:
        info(f"fingerprint of {len(cases)} cases written to {paths.fingerprint_json}")
    return fingerprint
