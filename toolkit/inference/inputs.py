"""What ``toolkit predict -i`` accepts, and reading one case of it.

* A folder: every ``CASE_0000<ending>``, ``CASE_0001<ending>``, ... group is a case (one file
  per channel, as in the raw layout); any other image file is a case of its own (a
  single-channel image, or all channels in one 4D file or one multi-component image).
* A file: ``CASE_0000<ending>`` brings its sibling channel files when the model needs more
  than one channel; any other file is one case.

Any format SimpleITK reads (``.nii.gz``, ``.nii``, ``.mha``, ``.mhd``, ``.nrrd``, ...; without
SimpleITK, in the lean image, ``.mha`` and ``.mhd`` only: ``io/images.uses_simpleitk``), and 2D
natural images (``.png``, ``.bmp``, ``.tif``) as nnU-Net v2 reads them: an RGB(A) file holds
three (four) channels, so ``CASE_0000.png`` alone is a whole case of an RGB model. The
output of a case keeps its input's file ending (a PNG in, a PNG label map out). Hidden files (``.x``, macOS ``._x``) are skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toolkit.errors import ToolkitError
from toolkit.io.images import (
    IMAGE_SUFFIXES,
    Geometry,
    has_image_suffix,
    is_natural_image_file,
    load_image,
    read_channels,
    strip_image_suffix,
)

_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class InputCase:
    """One case to predict: one file per channel, or a single file holding every channel."""

    case: str
    files: tuple[Path, ...]
    file_ending: str  # of the input, reused for the output (".nii.gz", ".mha", ...)


def _ending(path: Path) -> str:
    return path.name[len(strip_image_suffix(path.name)) :]


def _is_candidate(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and has_image_suffix(path)


def _channel_of(path: Path) -> tuple[str, int] | None:
    m = _CHANNEL.match(strip_image_suffix(path.name))
    return (m.group("case"), int(m.group("channel"))) if m else None


def _channel_case(case: str, files: dict[int, Path], num_channels: int, where: Path) -> InputCase:
    expected = list(range(num_channels))
    if all(is_natural_image_file(p) for p in files.values()) and len(files) < num_channels:
        expected = list(range(len(files)))  # colour files hold several channels each
    if sorted(files) != expected:
        found = ", ".join(f"{c:04d}" for c in sorted(files))
        wanted = ", ".join(f"{c:04d}" for c in expected)
        raise ToolkitError(
            f"case {case!r} has channel files {found} but the model needs {num_channels} channel(s): {wanted}",
            where,
        )
    ordered = tuple(files[c] for c in expected)
    endings = {_ending(p) for p in ordered}
    if len(endings) != 1:
        raise ToolkitError(f"case {case!r} mixes file endings {sorted(endings)}", where)
    return InputCase(case, ordered, endings.pop())


def find_input_cases(path: str | Path, num_channels: int) -> list[InputCase]:
    """The cases of a file or folder, sorted by name; errors name the offending file."""
    path = Path(path)
    if path.is_dir():
        groups: dict[str, dict[int, Path]] = {}
        singles: list[InputCase] = []
        for p in sorted(path.iterdir()):
            if not _is_candidate(p):
                continue
            channel = _channel_of(p)
            if channel is None:
                singles.append(InputCase(strip_image_suffix(p.name), (p,), _ending(p)))
                continue
            case, index = channel
            if index in groups.setdefault(case, {}):
                raise ToolkitError(f"two files for channel {index:04d} of case {case!r}", p)
            groups[case][index] = p
        cases = [_channel_case(case, files, num_channels, path) for case, files in groups.items()]
        names = {c.case for c in cases}
        for single in singles:
            if single.case in names:
                raise ToolkitError(
                    f"case {single.case!r} is given both as channel files and as a single file",
                    single.files[0],
                )
            cases.append(single)
        if not cases:
            raise ToolkitError(
                "no images found (expected CASE_0000.nii.gz, ... or one image per case)", path
            )
        return sorted(cases, key=lambda c: c.case)
    if not path.exists():
        raise ToolkitError("input not found", path)
    if not has_image_suffix(path):
        raise ToolkitError(
            f"is not an image file this tool reads ({', '.join(IMAGE_SUFFIXES)})",
            path,
        )
    channel = _channel_of(path)
    if channel is not None and num_channels > 1:
        case, _ = channel
        ending = _ending(path)
        files = {}
        for c in range(num_channels):
            sibling = path.with_name(f"{case}_{c:04d}{ending}")
            if sibling.is_file():
                files[c] = sibling
        return [_channel_case(case, files, num_channels, path)]
    case = channel[0] if channel is not None else strip_image_suffix(path.name)
    return [InputCase(case, (path,), _ending(path))]


def _first_three_axes(geometry: Geometry, path: Path) -> Geometry:
    dim = geometry.dimension
    direction = np.asarray(geometry.direction, dtype=np.float64).reshape(dim, dim)[:3, :3]
    if abs(abs(np.linalg.det(direction)) - 1) > 1e-3:
        raise ToolkitError("the direction of its first three axes is not a rotation", path)
    return Geometry(
        spacing=tuple(float(s) for s in geometry.spacing[:3]),
        origin=tuple(float(o) for o in geometry.origin[:3]),
        direction=tuple(float(v) for v in direction.ravel()),
        size=tuple(int(s) for s in geometry.size[:3]),
    )


def read_single_file(path: Path, num_channels: int) -> tuple[np.ndarray, Geometry]:
    """``(c, z, y, x)`` float32 from one file: 4D (channels last axis), multi-component or single-channel."""
    image = load_image(path)
    dim = image.geometry.dimension
    components = image.components
    if dim == 4 and components == 1:
        array = image.array.astype(np.float32, copy=False)  # (c, z, y, x)
        geometry = _first_three_axes(image.geometry, path)
    elif dim in (2, 3):
        array = image.array.astype(np.float32, copy=False)
        if components > 1:
            array = np.moveaxis(array, -1, 0)  # (..., c) -> (c, ...)
        else:
            array = array[None]
        if dim == 2:
            array = array[:, None]
        geometry = image.geometry
    else:
        raise ToolkitError(
            f"is a {dim}D image with {components} component(s); expected 2D, 3D or 4D", path
        )
    if array.shape[0] != num_channels:
        raise ToolkitError(
            f"holds {array.shape[0]} channel(s) but the model needs {num_channels}", path
        )
    return np.ascontiguousarray(array), geometry


def read_input_case(case: InputCase, num_channels: int) -> tuple[np.ndarray, Geometry]:
    """The case's channels ``(c, z, y, x)`` float32 and the geometry of its (first) image."""
    if len(case.files) == 1:
        return read_single_file(case.files[0], num_channels)
    natural = all(is_natural_image_file(p) for p in case.files)
    if len(case.files) != num_channels and not natural:
        raise ToolkitError(
            f"case {case.case!r} has {len(case.files)} channel files but the model needs {num_channels}",
            case.files[0],
        )
    image, geometry = read_channels(list(case.files))
    if image.shape[0] != num_channels:
        raise ToolkitError(
            f"case {case.case!r}: its files hold {image.shape[0]} channel(s) but the model needs {num_channels}",
            case.files[0],
        )
    return image, geometry
