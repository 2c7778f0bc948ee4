"""``toolkit convert``: a Medical Segmentation Decathlon task (folder or ``.tar``) -> ``raw/``.

Sources accepted:

* an MSD task folder (``dataset.json`` with ``modality``, ``labels``, ``training``, ``test``;
  multi-modal images as one 4D NIfTI with the channels along the fourth axis);
* its ``.tar`` archive (also ``.tar.gz``/``.tgz``), unpacked next to the output, never outside
  its target folder: absolute names, ``..`` components, links out of it and special files
  are refused before anything is written;
* a dataset already in the converted layout (nnU-Net v2 raw: ``dataset.json`` with
  ``channel_names``, ``imagesTr/CASE_0000<ending>``, ``labelsTr/CASE<ending>``), or a toolkit
  dataset folder holding one in ``raw/``.

Output: one ``.nii.gz`` per channel (spacing, origin and direction of the source's first three
axes, exactly), integer labels (uint8, or uint16 beyond 255), and ``dataset.json``. Files whose
names start with ``.`` are skipped. The source is only read. The new ``raw/`` is built under a
temporary name and renamed into place when complete, so a killed convert leaves either no
dataset or the previous one, never half of one.
"""

from __future__ import annotations

import json
import os
import posixpath
import shutil
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import SimpleITK as sitk
from rich.markup import escape

from toolkit.errors import ToolkitError
from toolkit.io.dataset_json import (
    DatasetInfo,
    parse_channel_names,
    parse_labels,
    test_cases,
    training_cases,
    write_dataset_info,
)
from toolkit.io.images import has_image_suffix, label_dtype, strip_image_suffix
from toolkit.io.nifti_scan import scan
from toolkit.parallel import map_cases
from toolkit.progress import info, track
from toolkit.verify.stage import Report, choose_workers, verify_dataset
from toolkit.workspace import (
    FILE_ENDING,
    DatasetPaths,
    RawFolder,
    channel_file,
    check_dataset_name,
    label_file,
    resolve_workspace,
)

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
FORMAT_MSD = "msd"
FORMAT_RAW = "nnunetv2"
# names of folders this module makes inside a dataset folder while it works
_PARTIAL = ".raw-partial-"
_OLD = ".raw-old-"
_EXTRACT = ".extract-"
_FILTER_ERRORS = (tarfile.FilterError,) if hasattr(tarfile, "FilterError") else ()


# ---------------------------------------------------------------------------------------------
# what is converted


@dataclass(frozen=True)
class SourceCase:
    """One case of the source: its image file(s) and label file."""

    case: str
    images: tuple[Path, ...]  # one (maybe 4D) file for MSD; one file per channel for nnU-Net v2
    label: Path | None


@dataclass(frozen=True)
class Source:
    """A task ready to convert: where it is, what its dataset.json says, its cases."""

    root: Path
    format: str  # FORMAT_MSD or FORMAT_RAW
    channel_names: dict[str, str]
    labels: dict[str, int]
    training: list[SourceCase]
    test: list[SourceCase]
    name: str = ""
    description: str = ""
    licence: str = ""
    reference: str = ""
    notes: list[str] = field(default_factory=list)  # things the user should hear about


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def default_dataset_name(source: str | Path) -> str:
    """The task folder's name (``Task04_Hippocampus``), also for ``Task04_Hippocampus.tar``."""
    source = Path(source)
    name = source.name
    if source.is_dir() and name == "raw" and (source / "dataset.json").is_file():
        name = source.resolve().parent.name  # a toolkit dataset's raw/ folder
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return check_dataset_name(name)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ToolkitError(f"not valid JSON ({exc})", path) from None
    if not isinstance(data, dict):
        raise ToolkitError("dataset.json must hold a JSON object", path)
    return data


def _inside(root: Path, relative: str, what: str, json_path: Path) -> Path:
    """``root/relative`` for a path listed in dataset.json, refusing one that leaves ``root``."""
    pure = PurePosixPath(relative.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts:
        raise ToolkitError(f"{what} {relative!r} points outside the task folder", json_path)
    return root.joinpath(*[p for p in pure.parts if p != "."])


def _listed_image(entry: object, key: str, root: Path, json_path: Path) -> Path:
    value = entry.get(key) if isinstance(entry, dict) else entry
    if not isinstance(value, str) or not value:
        raise ToolkitError(f"entry {entry!r} has no {key!r} path", json_path)
    return _inside(root, value, key, json_path)


def read_msd_task(root: Path) -> Source:
    """An MSD task folder's dataset.json and the cases it lists (junk ``._`` files skipped)."""
    json_path = root / "dataset.json"
    data = _read_json(json_path)
    modality = data.get("modality", data.get("channel_names"))
    channel_names = parse_channel_names(modality, json_path)
    labels = parse_labels(data.get("labels"), json_path)
    notes: list[str] = []

    def case_of(path: Path) -> str:
        return strip_image_suffix(path.name)

    training: list[SourceCase] = []
    if isinstance(data.get("training"), list):
        for entry in data["training"]:
            image = _listed_image(entry, "image", root, json_path)
            label = _listed_image(entry, "label", root, json_path)
            if image.name.startswith("."):
                continue
            training.append(SourceCase(case_of(image), (image,), label))
    else:
        for image in _image_files(root / "imagesTr"):
            training.append(SourceCase(case_of(image), (image,), root / "labelsTr" / image.name))
        notes.append("dataset.json lists no 'training' cases; took every image in imagesTr")
    test: list[SourceCase] = []
    if isinstance(data.get("test"), list):
        for entry in data["test"]:
            image = _listed_image(entry, "image", root, json_path)
            if not image.name.startswith("."):
                test.append(SourceCase(case_of(image), (image,), None))
    else:
        test = [SourceCase(case_of(p), (p,), None) for p in _image_files(root / "imagesTs")]

    listed = {c.images[0].name for c in training}
    unlisted = [p.name for p in _image_files(root / "imagesTr") if p.name not in listed]
    if unlisted:
        notes.append(
            f"{len(unlisted)} image(s) in imagesTr not listed in dataset.json were left out, e.g. {unlisted[0]}"
        )
    declared = data.get("numTraining")
    if isinstance(declared, int) and declared != len(training):
        notes.append(
            f"dataset.json says numTraining {declared} but lists {len(training)} training cases"
        )
    _check_unique(training + test, json_path)
    return Source(
        root=root,
        format=FORMAT_MSD,
        channel_names=channel_names,
        labels=labels,
        training=training,
        test=test,
        name=str(data.get("name") or ""),
        description=str(data.get("description") or ""),
        licence=str(data.get("licence") or data.get("license") or ""),
        reference=str(data.get("reference") or ""),
        notes=notes,
    )


def _image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and has_image_suffix(p)
    )


def _check_unique(cases: list[SourceCase], json_path: Path) -> None:
    seen: set[str] = set()
    for c in cases:
        if c.case in seen:
            raise ToolkitError(f"case {c.case!r} is listed twice", json_path)
        seen.add(c.case)


def read_raw_dataset(root: Path) -> Source:
    """A dataset already in the converted (nnU-Net v2 raw) layout."""
    folder = RawFolder(root)
    data = _read_json(folder.dataset_json)
    info = DatasetInfo.from_json(data, folder.dataset_json)
    training = [SourceCase(c.case, tuple(c.images), c.label) for c in training_cases(folder, info)]
    test = [SourceCase(c.case, tuple(c.images), None) for c in test_cases(folder, info)]
    return Source(
        root=root,
        format=FORMAT_RAW,
        channel_names=info.channel_names,
        labels=info.labels,
        training=training,
        test=test,
        name=info.name,
        description=info.description,
        licence=info.licence,
        reference=info.reference,
    )


def open_source(folder: Path) -> Source:
    """Recognise the layout of an (unpacked) task folder."""
    if not (folder / "dataset.json").is_file() and (folder / "raw" / "dataset.json").is_file():
        folder = folder / "raw"  # a toolkit dataset folder
    json_path = folder / "dataset.json"
    if not json_path.is_file():
        raise ToolkitError(
            "no dataset.json: not an MSD task folder nor a converted dataset", folder
        )
    data = _read_json(json_path)
    if "channel_names" in data and "modality" not in data:
        return read_raw_dataset(folder)
    if "modality" in data:
        return read_msd_task(folder)
    raise ToolkitError(
        "dataset.json has neither 'modality' (MSD) nor 'channel_names' (converted layout)",
        json_path,
    )


# ---------------------------------------------------------------------------------------------
# safe unpacking


def _member_problem(member: tarfile.TarInfo) -> str | None:
    """Why a member may not be unpacked (``None`` when it may)."""
    name = member.name
    pure = PurePosixPath(name)
    if pure.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "has an absolute path"
    if ".." in pure.parts or ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return "has a '..' component"
    if member.issym() or member.islnk():
        target = member.linkname
        if PurePosixPath(target).is_absolute() or target.startswith("\\"):
            return f"is a link to the absolute path {target!r}"
        base = str(pure.parent) if member.issym() else ""
        resolved = posixpath.normpath(posixpath.join(base, target))
        if resolved == ".." or resolved.startswith("../") or ".." in PurePosixPath(target).parts:
            return f"is a link pointing out of the archive's folder ({target!r})"
        return None
    if not (member.isfile() or member.isdir()):
        return "is a special file (device, fifo)"
    return None


def safe_extract(archive: Path, target: Path, quiet: bool = False) -> None:
    """Unpack ``archive`` into ``target``; every member is checked before anything is written."""
    try:
        tar = tarfile.open(archive)
    except (tarfile.TarError, OSError) as exc:
        raise ToolkitError(f"not a readable tar archive ({exc})", archive) from None
    with tar:
        try:
            members = tar.getmembers()
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise ToolkitError(f"truncated or corrupt archive ({exc})", archive) from None
        for member in members:
            problem = _member_problem(member)
            if problem is not None:
                raise ToolkitError(f"refusing to unpack: member {member.name!r} {problem}", archive)
        target.mkdir(parents=True, exist_ok=True)
        root = target.resolve()
        for member in track(members, f"unpack {archive.name}", quiet=quiet):
            # links unpacked earlier could redirect a later member: check where it really lands
            destination = Path(os.path.realpath(root / member.name))
            if destination != root and root not in destination.parents:
                raise ToolkitError(
                    f"refusing to unpack: member {member.name!r} would land outside the target",
                    archive,
                )
            try:
                if hasattr(tarfile, "data_filter"):
                    tar.extract(member, root, set_attrs=False, filter="data")
                else:
                    tar.extract(member, root, set_attrs=False)
            except _FILTER_ERRORS as exc:
                raise ToolkitError(f"refusing to unpack: {exc}", archive) from None
            except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
                raise ToolkitError(f"truncated or corrupt archive ({exc})", archive) from None


def _task_root(extracted: Path, archive: Path) -> Path:
    """The folder with dataset.json: the unpack folder itself or its single task folder."""
    if (extracted / "dataset.json").is_file():
        return extracted
    folders = [p for p in extracted.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if len(folders) == 1:
        inner = folders[0]
        if (inner / "dataset.json").is_file() or (inner / "raw" / "dataset.json").is_file():
            return inner
    raise ToolkitError("holds no task folder with a dataset.json", archive)


# ---------------------------------------------------------------------------------------------
# one case (runs in worker processes)


@dataclass(frozen=True)
class CaseJob:
    source: SourceCase
    format: str
    num_channels: int
    images_out: Path
    labels_out: Path | None
    max_label: int


@dataclass(frozen=True)
class CaseResult:
    case: str
    problem: str | None  # one line naming the file, or None when converted


def _read(path: Path) -> sitk.Image:
    """A source image, refusing a truncated file that SimpleITK would read as zeros."""
    if not path.is_file():
        raise ToolkitError("file not found", path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        payload = scan(path)
        if payload.problem is not None:
            raise ToolkitError(payload.problem, path)
        if payload.nonfinite:
            raise ToolkitError(
                f"holds {payload.nonfinite} NaN or inf values (they would be read as 0)", path
            )
        image = reader.Execute()
    except RuntimeError:
        raise ToolkitError("unreadable image (not a file SimpleITK can read)", path) from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ToolkitError(
            f"has {image.GetNumberOfComponentsPerPixel()} values per pixel; expected scalar images",
            path,
        )
    return image


def _first_axes(image: sitk.Image, array: np.ndarray, dim: int, path: Path) -> sitk.Image:
    """``array`` as an image with the geometry of ``image``'s first ``dim`` axes."""
    full = image.GetDimension()
    out = sitk.GetImageFromArray(array, isVector=False)
    out.SetSpacing(image.GetSpacing()[:dim])
    out.SetOrigin(image.GetOrigin()[:dim])
    direction = np.asarray(image.GetDirection()).reshape(full, full)[:dim, :dim]
    try:
        out.SetDirection(tuple(float(v) for v in direction.ravel()))
    except RuntimeError:
        raise ToolkitError(
            "its direction's first three axes do not form a valid direction matrix", path
        ) from None
    return out


def _write(image: sitk.Image, path: Path) -> None:
    # straight into the partial folder: renaming that whole folder is the atomic step, so a
    # temporary file and fsync per image would only cost time
    sitk.WriteImage(image, str(path), useCompression=True)


def _split_channels(path: Path, num_channels: int) -> list[sitk.Image]:
    """One image per channel: a 4D MSD image split along its fourth axis, else the image."""
    image = _read(path)
    dim = image.GetDimension()
    if dim == 4:
        channels = image.GetSize()[3]
        if channels != num_channels:
            raise ToolkitError(
                f"has {channels} channels along its fourth axis but dataset.json declares {num_channels} modalities",
                path,
            )
        array = sitk.GetArrayViewFromImage(image)  # (c, z, y, x)
        return [
            _first_axes(image, np.ascontiguousarray(array[c]), 3, path) for c in range(channels)
        ]
    if dim in (2, 3):
        if num_channels != 1:
            raise ToolkitError(
                f"is a {dim}D image with one channel but dataset.json declares {num_channels} modalities "
                "(multi-modal MSD images are 4D)",
                path,
            )
        return [image]
    raise ToolkitError(f"is {dim}D; expected a 2D, 3D or 4D (multi-modal) image", path)


def convert_label(image: sitk.Image, path: Path, max_declared: int) -> sitk.Image:
    """Integer label image (uint8, uint16 beyond 255); float labels must hold whole numbers."""
    dim = image.GetDimension()
    array = sitk.GetArrayFromImage(image)
    if dim == 4 and image.GetSize()[3] == 1:
        array, dim = array[0], 3
    elif dim not in (2, 3):
        raise ToolkitError(f"is a {dim}D label; expected 2D or 3D", path)
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise ToolkitError("label holds NaN or inf values", path)
        whole = np.equal(np.round(array), array)
        if not whole.all():
            raise ToolkitError(
                f"label holds values that are not whole numbers (e.g. {float(array[~whole].flat[0]):g})",
                path,
            )
    elif array.dtype.kind not in "iub":
        raise ToolkitError(
            f"label has pixel type {array.dtype}; expected integers or whole floats", path
        )
    low = int(array.min()) if array.size else 0
    high = int(array.max()) if array.size else 0
    if low < 0:
        raise ToolkitError(f"label holds the negative value {low}", path)
    if high > np.iinfo(np.uint16).max:
        raise ToolkitError(
            f"label holds the value {high}; at most 65535 labels are supported", path
        )
    out = array.astype(label_dtype(max(high, max_declared)))
    return (
        _first_axes(image, out, dim, path)
        if image.GetDimension() != dim
        else _same_geometry(image, out)
    )


def _same_geometry(image: sitk.Image, array: np.ndarray) -> sitk.Image:
    out = sitk.GetImageFromArray(array, isVector=False)
    out.CopyInformation(image)
    return out


def convert_case(job: CaseJob) -> CaseResult:
    """Write one case's channel files (and label); a data problem is returned, not raised."""
    case = job.source.case
    try:
        if job.format == FORMAT_MSD:
            channels = _split_channels(job.source.images[0], job.num_channels)
        else:
            channels = []
            for path in job.source.images:
                image = _read(path)
                if image.GetDimension() not in (2, 3):
                    raise ToolkitError(
                        f"is {image.GetDimension()}D; expected 2D or 3D (one channel per file)",
                        path,
                    )
                channels.append(image)
        if job.source.label is not None and job.labels_out is not None:
            label = convert_label(_read(job.source.label), job.source.label, job.max_label)
        else:
            label = None
        for c, image in enumerate(channels):
            _write(image, job.images_out / channel_file(case, c))
        if label is not None and job.labels_out is not None:
            _write(label, job.labels_out / label_file(case))
    except ToolkitError as exc:
        return CaseResult(case, exc.one_line())
    return CaseResult(case, None)


# ---------------------------------------------------------------------------------------------
# the whole conversion


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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale(root: Path) -> None:
    """Work folders of earlier converts that were killed (their process is gone)."""
    if not root.is_dir():
        return
    for path in root.iterdir():
        for prefix in (_PARTIAL, _OLD, _EXTRACT):
            if path.name.startswith(prefix) and path.is_dir():
                suffix = path.name[len(prefix) :]
                if suffix.isdigit() and int(suffix) != os.getpid() and not _pid_alive(int(suffix)):
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
) -> ConvertResult:
    """Convert ``source`` into ``paths.raw``, then verify it.

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
            task = open_source(_task_root(extract_dir, source))
        else:
            task = open_source(source)
        for note in task.notes:
            info(escape(f"note: {note}"))
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
    max_label = max(task.labels.values())
    num_channels = len(task.channel_names)
    jobs = [
        CaseJob(c, task.format, num_channels, folder.images_tr, folder.labels_tr, max_label)
        for c in task.training
    ]
    jobs += [
        CaseJob(c, task.format, num_channels, folder.images_ts, None, max_label) for c in task.test
    ]
    inputs = [p for c in task.training + task.test for p in (*c.images, c.label) if p is not None]
    results = map_cases(
        convert_case, jobs, choose_workers(workers, inputs), f"convert {paths.name}", quiet
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
