"""The ``preprocess`` stage: every training case of each configuration, in parallel, resumable.

A case is complete when its properties file exists next to its arrays and records the hash
of the current configuration (``source``); anything else (missing, half-written, made for an
older plan) is computed again. Files are written atomically, properties last.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from toolkit.core.plans import Configuration, Plans, dataset_plans
from toolkit.core.resampling import case_target_spacing, compute_new_shape
from toolkit.errors import ToolkitError
from toolkit.io.atomic import sweep_temporaries
from toolkit.io.dataset_json import CaseFiles, load_dataset_info, training_cases
from toolkit.io.images import read_channels, read_geometry, read_image
from toolkit.io.preprocessed import case_paths, complete_cases, load_properties, save_case
from toolkit.parallel import map_cases
from toolkit.preprocessing.case import preprocess_case, source_record
from toolkit.progress import default_workers, info
from toolkit.workspace import DatasetPaths

__all__ = ["PreprocessResult", "preprocess_dataset"]


@dataclass
class PreprocessResult:
    data_identifier: str
    done: list[str] = field(default_factory=list)  # computed now
    skipped: list[str] = field(default_factory=list)  # already complete and current
    removed: list[str] = field(default_factory=list)  # cases no longer in the dataset
    seconds: float = 0.0


# a case's peak in a worker beyond its float32 data: per voxel before resampling (the labels,
# the crop's masks and labelling, the cropped labels) on top of the image and its normalized
# copy (8 bytes per channel), and per voxel after (labels, the indicator being resampled, the
# intermediate of all axes but one) on top of the float32 output (4 per channel); fitted to
# the peaks of LiTS-sized CT (bench/results/plan_preprocess_ct.md) with a margin of 10-20 %
BYTES_PER_INPUT_VOXEL = 6
BYTES_PER_OUTPUT_VOXEL = 3


def preprocess_peak_bytes(*, voxels: int, voxels_after: int, channels: int) -> int:
    """What one case may need at its peak: ``voxels`` as read, ``voxels_after`` resampled."""
    return int(
        voxels * (8 * channels + BYTES_PER_INPUT_VOXEL)
        + voxels_after * (4 * channels + BYTES_PER_OUTPUT_VOXEL)
    )


def largest_peak(cases: list[CaseFiles], plans: Plans, configuration: Configuration) -> int:
    """The largest :func:`preprocess_peak_bytes` of ``cases`` (from their headers, uncropped)."""
    peak = 0
    for files in cases:
        geometry = read_geometry(files.images[0])
        spacing = [geometry.spacing_zyx[a] for a in plans.transpose_forward]
        shape = [geometry.shape_zyx[a] for a in plans.transpose_forward]
        after = compute_new_shape(shape, spacing, case_target_spacing(configuration, spacing))
        peak = max(
            peak,
            preprocess_peak_bytes(
                voxels=math.prod(shape), voxels_after=math.prod(after), channels=len(files.images)
            ),
        )
    return peak


@dataclass(frozen=True)
class _Job:
    files: CaseFiles
    plans: Plans
    configuration: Configuration
    folder: str


def _run(job: _Job) -> str:
    from pathlib import Path

    image, geometry = read_channels(job.files.images)
    seg = None
    if job.files.label is not None:
        seg, seg_geometry = read_image(job.files.label)
        problem = geometry.matches(seg_geometry)
        if problem is not None:
            raise ToolkitError(f"label does not match its image: {problem}", job.files.label)
    data, out_seg, props = preprocess_case(
        image, geometry, job.plans, job.configuration, seg, case=job.files.case
    )
    if out_seg is None:
        raise ToolkitError("training case without a label file", job.files.images[0])
    save_case(Path(job.folder), job.files.case, data, out_seg, props)
    return job.files.case


def is_current(folder, case: str, expected_hash: str) -> bool:
    data_path, seg_path, props_path = case_paths(folder, case)
    if not (props_path.is_file() and data_path.is_file() and seg_path.is_file()):
        return False
    try:
        props = load_properties(folder, case)
    except (ToolkitError, ValueError, TypeError, KeyError):
        return False
    return props.source.get("hash") == expected_hash


def configurations_to_run(plans: Plans, names: list[str] | None) -> list[Configuration]:
    """The requested configurations (all by default), one per data identifier."""
    chosen = (
        [plans.configuration(n) for n in names] if names else list(plans.configurations.values())
    )
    unique: dict[str, Configuration] = {}
    for c in chosen:
        unique.setdefault(c.data_identifier, c)
    return list(unique.values())


def preprocess_dataset(
    paths: DatasetPaths,
    configurations: list[str] | None = None,
    workers: int | None = None,
    force: bool = False,
    quiet: bool = False,
) -> list[PreprocessResult]:
    plans = dataset_plans(paths)
    dataset = load_dataset_info(paths)
    cases = training_cases(paths, dataset)
    if not cases:
        raise ToolkitError("no training cases in imagesTr/labelsTr", paths.raw)
    names = {c.case for c in cases}
    workers = default_workers(workers)
    results = []
    for configuration in configurations_to_run(plans, configurations):
        start = time.perf_counter()
        folder = paths.preprocessed_dir(configuration.data_identifier)
        folder.mkdir(parents=True, exist_ok=True)
        sweep_temporaries(folder)  # of a preprocess killed mid-write
        result = PreprocessResult(configuration.data_identifier)
        for orphan in sorted(set(complete_cases(folder)) - names):
            for p in case_paths(folder, orphan):
                p.unlink(missing_ok=True)
            result.removed.append(orphan)
        expected = source_record(plans, configuration)["hash"]
        pending = []
        for files in cases:
            if not force and is_current(folder, files.case, expected):
                result.skipped.append(files.case)
            else:
                pending.append(_Job(files, plans, configuration, str(folder)))
        peak = None
        if workers > 1 and len(pending) > 1:
            peak = largest_peak([j.files for j in pending], plans, configuration)
        result.done = map_cases(
            _run,
            pending,
            workers,
            f"preprocess {configuration.data_identifier}",
            quiet,
            peak_bytes=peak,
        )
        result.seconds = time.perf_counter() - start
        if not quiet:
            info(
                f"{configuration.data_identifier}: {len(result.done)} cases preprocessed, "
                f"{len(result.skipped)} already current ({result.seconds:.1f} s) in {folder}"
            )
        results.append(result)
    return results
