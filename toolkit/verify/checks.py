"""The checks of ``toolkit verify``: per case (in worker processes) and for the dataset folder.

What is checked, per case (training and test):

* every channel file (and the label of a training case) exists and is readable, headers and
  pixel data alike: a truncated ``.nii.gz`` is found by reading its gzip stream to the end,
  because SimpleITK fills the missing part with zeros without a word;
* each case's channels and label share shape, spacing (relative tolerance 1e-4), origin and
  direction; one value per pixel; the same dimension (2D or 3D) as the rest of the dataset;
* images hold no NaN or inf; labels hold whole numbers, declared in ``dataset.json``;
* a training case whose label holds no foreground is a warning, not an error.

And for the dataset: ``dataset.json`` is valid, its ``numTraining`` matches the cases found,
the channel files match ``channel_names`` (no ``CASE_0002`` when two channels are declared).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from toolkit.core.labels import foreground_labels
from toolkit.io.dataset_json import CaseFiles, DatasetInfo
from toolkit.io.images import Geometry
from toolkit.io.nifti_scan import is_nifti, scan
from toolkit.verify.report import Problem, Severity
from toolkit.workspace import RawFolder

SPACING_RTOL = 1e-4


# ---------------------------------------------------------------------------------------------
# one file


@dataclass
class _ReadFile:
    geometry: Geometry | None = None
    array: np.ndarray | None = None
    nonfinite: int = 0  # NaN/inf found in the file's bytes (SimpleITK reads NaN in NIfTI as 0)
    problems: list[str] = field(default_factory=list)


def _read_file(path: Path, pixels: bool) -> _ReadFile:
    """Header (and pixel data when asked) of one image file, problems as phrases."""
    result = _ReadFile()
    if not path.is_file():
        result.problems.append("missing")
        return result
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        result.problems.append("unreadable (not an image SimpleITK can read)")
        return result
    if reader.GetDimension() not in (2, 3):
        result.problems.append(
            f"is {reader.GetDimension()}D; expected a 2D or 3D image (one channel per file)"
        )
        return result
    if reader.GetNumberOfComponents() != 1:
        result.problems.append(
            f"has {reader.GetNumberOfComponents()} values per pixel; expected one channel per file"
        )
        return result
    result.geometry = Geometry(
        spacing=tuple(reader.GetSpacing()),
        origin=tuple(reader.GetOrigin()),
        direction=tuple(reader.GetDirection()),
        size=tuple(reader.GetSize()),
    )
    if any(s <= 0 for s in result.geometry.spacing):
        result.problems.append(f"spacing {result.geometry.spacing} is not positive")
    payload = scan(path)
    if payload.problem is not None:
        result.problems.append(payload.problem)
        return result
    result.nonfinite = payload.nonfinite
    if pixels:
        try:
            result.array = sitk.GetArrayFromImage(reader.Execute())
        except RuntimeError:
            result.problems.append("unreadable pixel data (truncated or corrupt file)")
    return result


def _geometry_phrase(this: Geometry, reference: Geometry, reference_name: str) -> str | None:
    """How ``this`` differs from its case's reference channel, or ``None``."""
    if this.dimension != reference.dimension:
        return f"is {this.dimension}D but {reference_name} is {reference.dimension}D"
    problem = this.matches(reference, rtol=SPACING_RTOL)
    if problem is None:
        return None
    if " != " in problem:  # "spacing A != B"
        mine, theirs = problem.split(" != ", 1)
        return f"{mine} differs from {reference_name} ({theirs})"
    return f"{problem} from {reference_name}"


def _label_values(array: np.ndarray) -> tuple[np.ndarray | None, str | None]:
    """Distinct values of a label array, or a phrase saying why they are not whole numbers."""
    if array.dtype.kind == "f":
        finite = np.isfinite(array)
        if not finite.all():
            return (
                None,
                f"holds {int(array.size - finite.sum())} NaN or inf values; labels must be whole numbers",
            )
        whole = np.equal(np.round(array), array)
        if not whole.all():
            example = float(array[~whole].flat[0])
            return (
                None,
                f"holds values that are not whole numbers (e.g. {example:g}); labels must be whole numbers",
            )
    if array.dtype.kind in "iu" and array.size and array.min() >= 0 and array.max() < 1 << 20:
        counts = np.bincount(array.ravel().astype(np.int64, copy=False))
        return np.flatnonzero(counts), None
    return np.unique(array), None


# ---------------------------------------------------------------------------------------------
# one case (runs in worker processes: plain arguments, plain results)


@dataclass(frozen=True)
class CaseCheck:
    case: str
    images: tuple[Path, ...]
    label: Path | None
    declared_labels: tuple[int, ...]


@dataclass(frozen=True)
class CaseOutcome:
    case: str
    problems: tuple[Problem, ...]
    dimension: int | None  # of channel 0, when readable


def check_case(check: CaseCheck) -> CaseOutcome:
    """Every per-case rule of the module docstring for one case."""
    problems: list[Problem] = []

    def add(file: Path, message: str, severity: Severity = Severity.ERROR) -> None:
        problems.append(Problem(check.case, file, message, severity))

    reference: tuple[Geometry, str] | None = None
    for channel, path in enumerate(check.images):
        # a NIfTI image's bytes were scanned for NaN already; decoding it again finds nothing new
        read = _read_file(path, pixels=not is_nifti(path))
        for message in read.problems:
            add(
                path,
                message if channel == 0 or message != "missing" else f"missing (channel {channel})",
            )
        if read.geometry is None:
            continue
        if reference is None:
            reference = (read.geometry, path.name)
        else:
            phrase = _geometry_phrase(read.geometry, *reference)
            if phrase is not None:
                add(path, phrase)
        bad = read.nonfinite
        if read.array is not None and read.array.dtype.kind in "fc":
            bad = max(bad, int(read.array.size - np.isfinite(read.array).sum()))
        if bad:
            add(path, f"holds {bad} NaN or inf values")
    if check.label is not None:
        read = _read_file(check.label, pixels=True)
        for message in read.problems:
            add(check.label, message)
        if read.geometry is not None and reference is not None:
            phrase = _geometry_phrase(read.geometry, *reference)
            if phrase is not None:
                add(check.label, phrase)
        if read.nonfinite:
            add(
                check.label,
                f"holds {read.nonfinite} NaN or inf values; labels must be whole numbers",
            )
        elif read.array is not None:
            values, phrase = _label_values(read.array)
            if phrase is not None:
                add(check.label, phrase)
            elif values is not None:
                undeclared = sorted(set(values.tolist()) - set(check.declared_labels))
                if undeclared:
                    declared = ", ".join(str(v) for v in check.declared_labels)
                    add(
                        check.label,
                        f"holds label values {_list(undeclared)} not declared in dataset.json (declared: {declared})",
                    )
                elif not any(v != 0 for v in values.tolist()):
                    add(check.label, "holds no foreground (only background)", Severity.WARNING)
    dimension = reference[0].dimension if reference is not None else None
    return CaseOutcome(check.case, tuple(problems), dimension)


def _list(values: list) -> str:
    shown = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values[:10])
    return shown + (f" and {len(values) - 10} more" if len(values) > 10 else "")


# ---------------------------------------------------------------------------------------------
# the dataset


def folder_problems(
    folder: RawFolder, info: DatasetInfo, training: list[CaseFiles], test: list[CaseFiles]
) -> list[Problem]:
    """Rules about the dataset as a whole (cheap: listings and dataset.json only)."""
    problems: list[Problem] = []
    if not training:
        problems.append(
            Problem(
                "",
                folder.images_tr,
                f"no training cases (CASE_0000{info.file_ending} with labelsTr/CASE{info.file_ending})",
            )
        )
    if info.num_training != len(training):
        problems.append(
            Problem(
                "",
                folder.dataset_json,
                f"numTraining is {info.num_training} but {len(training)} training cases were found",
            )
        )
    if not foreground_labels(info.label_values):
        problems.append(
            Problem("", folder.dataset_json, "declares no foreground label (only background)")
        )
    pattern_cases = {"imagesTr": {c.case for c in training}, "imagesTs": {c.case for c in test}}
    for directory, cases in (
        (folder.images_tr, pattern_cases["imagesTr"]),
        (folder.images_ts, pattern_cases["imagesTs"]),
    ):
        if not directory.is_dir():
            continue
        expected = {
            p.name for c in (training if directory == folder.images_tr else test) for p in c.images
        }
        for path in sorted(directory.iterdir()):
            if path.name.startswith(".") or path.name in expected:
                continue
            case = _case_of_channel_file(path.name, info.file_ending)
            if case is not None and case in cases:
                problems.append(
                    Problem(
                        case,
                        path,
                        f"is a channel beyond those in dataset.json's channel_names ({info.num_channels}: {', '.join(info.channels)})",
                    )
                )
            else:
                problems.append(
                    Problem(
                        "",
                        path,
                        f"is not a channel file CASE_NNNN{info.file_ending}; ignored",
                        Severity.WARNING,
                    )
                )
    if folder.labels_tr.is_dir():
        known = {c.label.name for c in training if c.label is not None}
        for path in sorted(folder.labels_tr.iterdir()):
            if not path.name.startswith(".") and path.name not in known:
                problems.append(
                    Problem(
                        "",
                        path,
                        f"is not a label file CASE{info.file_ending}; ignored",
                        Severity.WARNING,
                    )
                )
    return problems


def _case_of_channel_file(name: str, file_ending: str) -> str | None:
    if not name.endswith(file_ending):
        return None
    stem = name[: -len(file_ending)]
    case, _, channel = stem.rpartition("_")
    return case if case and len(channel) == 4 and channel.isdigit() else None


def dimension_problems(outcomes: list[tuple[CaseFiles, int | None]]) -> list[Problem]:
    dims = Counter(d for _, d in outcomes if d is not None)
    if len(dims) <= 1:
        return []
    usual = dims.most_common(1)[0][0]
    return [
        Problem(files.case, files.images[0], f"is {d}D while the other cases are {usual}D")
        for files, d in outcomes
        if d is not None and d != usual
    ]
