"""``toolkit convert``: a Medical Segmentation Decathlon task (folder or ``.tar``) -> ``raw/``.

Sources accepted (read by :mod:`toolkit.convert.sources`): an MSD task folder, its ``.tar``
archive (also ``.tar.gz``/``.tgz``, unpacked safely by :mod:`toolkit.convert.archive`), or a
dataset already in the converted (nnU-Net v2 raw) layout, or a toolkit dataset folder holding
one in ``raw/``.

Output: one ``.nii.gz`` per channel (spacing, origin and direction of the source's first three
axes, exactly; 2D PNG/BMP/TIFF natural images with nnU-Net v2's geometry for them, an RGB(A)
file split into its channels), integer labels (uint8, or uint16 beyond 255), written case by case by
:mod:`toolkit.convert.cases`, and ``dataset.json``. Files whose names start with ``.`` are
skipped. The source is only read. The new ``raw/`` is built under a temporary name and renamed
into place when complete, so a killed convert leaves either no dataset or the previous one,
never half of one. The new dataset is then verified (:mod:`toolkit.verify.stage`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from rich.markup import escape

from toolkit.convert.archive import TASK_ARCHIVE_SUFFIXES, is_archive, safe_extract, task_root
from toolkit.convert.cases import CaseJob, convert_case
from toolkit.convert.regions import RegionDeclaration, labels_with_regions, parse_region_option
from toolkit.convert.sources import Source, open_source
from toolkit.core.labels import label_model
from toolkit.errors import ToolkitError
from toolkit.io.dataset_json import DatasetInfo, write_dataset_info
from toolkit.io.images import read_geometry
from toolkit.io.staging import process_alive
from toolkit.parallel import map_cases
from toolkit.progress import info
from toolkit.verify.report import Report
from toolkit.verify.stage import choose_workers, verify_dataset
from toolkit.workspace import (
    FILE_ENDING,
    DatasetPaths,
    RawFolder,
    check_dataset_name,
    resolve_workspace,
)

__all__ = ["ConvertResult", "convert_task", "dataset_paths_for", "parse_region_option"]

# names of folders this module makes inside a dataset folder while it works
_PARTIAL = ".raw-partial-"
_OLD = ".raw-old-"
_EXTRACT = ".extract-"


def default_dataset_name(source: str | Path) -> str:
    """The task folder's name (``Task04_Hippocampus``), also for ``Task04_Hippocampus.tar``."""
    source = Path(source)
    name = source.name
    if source.is_dir() and name == "raw" and (source / "dataset.json").is_file():
        name = source.resolve().parent.name  # a toolkit dataset's raw/ folder
    for suffix in TASK_ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return check_dataset_name(name)


# a case's peak in a worker per image voxel (all channels): the source image, its label, their
# arrays and the images written; measured at 10.1 on LiTS-sized CT
# (bench/results/plan_preprocess_ct.md)
CONVERT_BYTES_PER_VOXEL = 11


def convert_peak_bytes(*, voxels: int) -> int:
    """What converting one case of ``voxels`` image voxels (all channels) may need at its peak."""
    return int(voxels * CONVERT_BYTES_PER_VOXEL)


def _largest_peak(cases: list) -> int | None:
    """The largest :func:`convert_peak_bytes` of the source cases, read from the headers."""
    voxels = 0
    for case in cases:
        try:
            voxels = max(voxels, sum(math.prod(read_geometry(p).size) for p in case.images))
        except ToolkitError:
            continue  # an unreadable file is reported by its case's conversion
    return convert_peak_bytes(voxels=voxels) if voxels else None


@dataclass
class ConvertResult:
    paths: DatasetPaths
    converted: bool  # False when the dataset existed and --force was not given
    training_cases: int = 0
    test_cases: int = 0
    report: Report | None = None  # verify's report of the new dataset


def dataset_paths_for(
    source: str | Path, workspace: str | Path | None, name: str | None
) -> DatasetPaths:
    """Where ``toolkit convert SOURCE`` writes: ``<workspace>/<name or the task's name>``."""
    chosen = check_dataset_name(name) if name else default_dataset_name(source)
    return DatasetPaths(resolve_workspace(workspace) / chosen)


def _remove_stale(root: Path) -> None:
    """Work folders of earlier converts that were killed (their process is gone)."""
    if not root.is_dir():
        return
    for path in root.iterdir():
        for prefix in (_PARTIAL, _OLD, _EXTRACT):
            if path.name.startswith(prefix) and path.is_dir():
                suffix = path.name[len(prefix) :]
                if (
                    suffix.isdigit()
                    and int(suffix) != os.getpid()
                    and not process_alive(int(suffix))
                ):
                    shutil.rmtree(path, ignore_errors=True)


def _check_not_inside(source: Path, paths: DatasetPaths) -> None:
    src, dst = source.resolve(), paths.root.resolve()
    if src == dst or dst in src.parents:
        raise ToolkitError(
            f"the source lies inside the dataset folder it would be converted into ({paths.root}); "
            "use another --name or --workspace",
            source,
        )
    if src.is_dir() and src in dst.parents:
        raise ToolkitError(
            f"the dataset folder {paths.root} would lie inside the source folder, which convert never "
            "modifies; use --workspace to put the workspace elsewhere",
            source,
        )


def convert_task(
    source: str | Path,
    paths: DatasetPaths,
    workers: int | None = None,
    force: bool = False,
    quiet: bool = False,
    regions: RegionDeclaration | None = None,
) -> ConvertResult:
    """Convert ``source`` into ``paths.raw``, then verify it.

    ``regions`` (``--regions``) replaces the source's foreground labels by regions
    (:mod:`toolkit.convert.regions`); a raw dataset's own regions are kept otherwise.

    Without ``force`` an existing dataset is left exactly as it is. Data problems in the
    source stop the conversion with one error listing them (each is also printed); nothing is
    written then. Problems that only verify finds are in the result's report.
    """
    source = Path(source).expanduser()
    if not source.exists():
        raise ToolkitError(
            "not found: give an MSD task folder, its .tar archive or a converted dataset", source
        )
    if not (source.is_dir() or is_archive(source)):
        raise ToolkitError("is neither a task folder nor a .tar archive", source)
    _check_not_inside(source, paths)
    if paths.raw.exists() and not force:
        if paths.dataset_json.is_file():
            return ConvertResult(paths, converted=False)
        raise ToolkitError("exists but holds no dataset.json; use --force to replace it", paths.raw)
    created_root = not paths.root.exists()
    paths.root.mkdir(parents=True, exist_ok=True)
    _remove_stale(paths.root)
    extract_dir = paths.root / f"{_EXTRACT}{os.getpid()}"
    partial = paths.root / f"{_PARTIAL}{os.getpid()}"
    old = paths.root / f"{_OLD}{os.getpid()}"
    try:
        if is_archive(source):
            shutil.rmtree(extract_dir, ignore_errors=True)
            safe_extract(source, extract_dir, quiet=quiet)
            task = open_source(task_root(extract_dir, source))
        else:
            task = open_source(source)
        for note in task.notes:
            info(escape(f"note: {note}"))
        task = _with_labels_checked(task, regions)
        result = _convert_into(task, source, partial, paths, workers, quiet)
        if paths.raw.exists():
            os.replace(paths.raw, old)
        os.replace(partial, paths.raw)
    finally:
        for folder in (extract_dir, partial, old):
            if folder.exists():
                shutil.rmtree(folder, ignore_errors=True)
        if created_root and not any(paths.root.iterdir()):
            paths.root.rmdir()  # a failed first convert leaves no empty dataset folder
    result.report = verify_dataset(paths, workers=workers, quiet=quiet)
    return result


def _with_labels_checked(task: Source, regions: RegionDeclaration | None) -> Source:
    """The task with ``--regions`` applied; its labels' meaning checked before anything is written."""
    json_path = task.root / "dataset.json"
    if regions is not None:
        labels = labels_with_regions(task.labels, regions, json_path)
        task = dataclasses.replace(
            task, labels=labels, regions_class_order=list(regions.regions_class_order)
        )
    label_model(task.labels, task.regions_class_order, json_path)
    return task


def _convert_into(
    task: Source, origin: Path, partial: Path, paths: DatasetPaths, workers: int | None, quiet: bool
) -> ConvertResult:
    if not task.training:
        raise ToolkitError("has no training cases", task.root)
    shutil.rmtree(partial, ignore_errors=True)
    folder = RawFolder(partial)
    for sub in (folder.images_tr, folder.labels_tr):
        sub.mkdir(parents=True)
    if task.test:
        folder.images_ts.mkdir()
    max_label = max(
        v for value in task.labels.values() for v in (value if isinstance(value, list) else [value])
    )
    num_channels = len(task.channel_names)
    jobs = [
        CaseJob(c, task.format, num_channels, folder.images_tr, folder.labels_tr, max_label)
        for c in task.training
    ]
    jobs += [
        CaseJob(c, task.format, num_channels, folder.images_ts, None, max_label) for c in task.test
    ]
    inputs = [p for c in task.training + task.test for p in (*c.images, c.label) if p is not None]
    n_workers = choose_workers(workers, inputs)
    peak = _largest_peak(task.training + task.test) if n_workers > 1 and len(jobs) > 1 else None
    results = map_cases(
        convert_case, jobs, n_workers, f"convert {paths.name}", quiet, peak_bytes=peak
    )
    failed = [r for r in results if r.problem is not None]
    if failed:
        for r in failed:
            info(escape(f"error: case {r.case}: {r.problem}"))
        raise ToolkitError(
            f"{len(failed)} of {len(results)} cases could not be converted (listed above; first: {failed[0].problem}); "
            "nothing was written",
            origin,
        )
    dataset = DatasetInfo(
        channel_names=dict(task.channel_names),
        labels=dict(task.labels),
        regions_class_order=task.regions_class_order,
        num_training=len(task.training),
        file_ending=FILE_ENDING,
        name=task.name or paths.name,
        description=task.description,
        source=str(origin.resolve()),
        licence=task.licence,
        reference=task.reference,
        extra={"source_format": task.format, "numTest": len(task.test)},
    )
    write_dataset_info(folder.dataset_json, dataset)
    return ConvertResult(
        paths, converted=True, training_cases=len(task.training), test_cases=len(task.test)
    )
