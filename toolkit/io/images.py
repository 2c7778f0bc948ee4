"""Reading and writing images with SimpleITK, geometry kept exactly.

Conventions used everywhere in the toolkit:

* Arrays are in SimpleITK's numpy order: ``(z, y, x)`` for 3D, and a 2D image is read as a
  3D array with one slice ``(1, y, x)`` so every stage handles one shape of data.
* :class:`Geometry` keeps SimpleITK's own physical description (``(x, y, z)`` spacing,
  origin, direction) so an output is written with exactly the input's values.
  ``Geometry.spacing_zyx`` gives the spacing in array order, which is what planning and
  preprocessing use. A 2D image's slice axis gets the spacing ``NO_SPACING`` (999), never
  resampled.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from toolkit.errors import ToolkitError
from toolkit.io.atomic import atomic_path

NO_SPACING = 999.0
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".tif", ".tiff")


@dataclass(frozen=True)
class Geometry:
    """Physical placement of an image, in SimpleITK's (x, y, z) order."""

    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    size: tuple[int, ...]  # (x, y, z) voxels

    @property
    def dimension(self) -> int:
        return len(self.spacing)

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        if self.dimension == 2:
            return (NO_SPACING, float(self.spacing[1]), float(self.spacing[0]))
        return tuple(float(s) for s in self.spacing[::-1])  # type: ignore[return-value]

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        if self.dimension == 2:
            return (1, int(self.size[1]), int(self.size[0]))
        return tuple(int(s) for s in self.size[::-1])  # type: ignore[return-value]

    def to_dict(self) -> dict:
        return {
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": list(self.direction),
            "size": list(self.size),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Geometry:
        return cls(
            spacing=tuple(float(v) for v in d["spacing"]),
            origin=tuple(float(v) for v in d["origin"]),
            direction=tuple(float(v) for v in d["direction"]),
            size=tuple(int(v) for v in d["size"]),
        )

    @classmethod
    def of(cls, image: sitk.Image) -> Geometry:
        return cls(
            spacing=tuple(image.GetSpacing()),
            origin=tuple(image.GetOrigin()),
            direction=tuple(image.GetDirection()),
            size=tuple(image.GetSize()),
        )

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def matches(self, other: Geometry, rtol: float = 1e-4, atol: float = 1e-4) -> str | None:
        """``None`` when the two describe the same grid, else what differs (one phrase)."""
        if self.size != other.size:
            return f"shape {_fmt(self.size)} != {_fmt(other.size)}"
        if not np.allclose(self.spacing, other.spacing, rtol=rtol, atol=0):
            return f"spacing {_fmt(self.spacing)} != {_fmt(other.spacing)}"
        if not np.allclose(self.origin, other.origin, rtol=rtol, atol=atol):
            return f"origin {_fmt(self.origin)} != {_fmt(other.origin)}"
        if not np.allclose(self.direction, other.direction, atol=atol):
            return "direction differs"
        return None


def _fmt(values) -> str:
    return "x".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def has_image_suffix(path: str | Path) -> bool:
    name = Path(path).name.lower()
    return any(name.endswith(s) for s in IMAGE_SUFFIXES)


def strip_image_suffix(name: str) -> str:
    lower = name.lower()
    for s in IMAGE_SUFFIXES:
        if lower.endswith(s):
            return name[: -len(s)]
    return name


def read_sitk(path: str | Path) -> sitk.Image:
    path = Path(path)
    if not path.is_file():
        raise ToolkitError("file not found", path)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()
        detail = next((line for line in reason if "ERROR" in line or "rror" in line), "")
        raise ToolkitError(
            f"unreadable image ({_short(detail) or 'SimpleITK could not read it'})", path
        ) from None


def _short(text: str) -> str:
    text = text.split(":", 1)[-1].strip() if "ERROR" in text else text.strip()
    return text[:160]


def read_image(path: str | Path) -> tuple[np.ndarray, Geometry]:
    """One single-channel image as a ``(z, y, x)`` array (2D as ``(1, y, x)``) and its geometry."""
    image = read_sitk(path)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ToolkitError(
            f"has {image.GetNumberOfComponentsPerPixel()} components per pixel; expected one channel per file",
            path,
        )
    if image.GetDimension() not in (2, 3):
        raise ToolkitError(f"is {image.GetDimension()}D; expected a 2D or 3D image", path)
    try:
        array = sitk.GetArrayFromImage(image)
    except RuntimeError:
        raise ToolkitError("unreadable image (pixel data could not be read)", path) from None
    if array.ndim == 2:
        array = array[None]
    return array, Geometry.of(image)


def read_geometry(path: str | Path) -> Geometry:
    """An image file's geometry from its header alone (the pixels are not read)."""
    path = Path(path)
    if not path.is_file():
        raise ToolkitError("file not found", path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise ToolkitError("unreadable image (SimpleITK could not read its header)", path) from None
    return Geometry(
        spacing=tuple(reader.GetSpacing()),
        origin=tuple(reader.GetOrigin()),
        direction=tuple(reader.GetDirection()),
        size=tuple(reader.GetSize()),
    )


def read_channels(paths: list[Path]) -> tuple[np.ndarray, Geometry]:
    """Channels of one case stacked as ``(c, z, y, x)`` float32, with the first channel's geometry.

    Each channel is written into the one float32 array as it is read: no list of float
    copies and no stacked copy beside it.
    """
    stacked: np.ndarray | None = None
    geometry: Geometry | None = None
    for c, p in enumerate(paths):
        array, geo = read_image(p)
        if geometry is None:
            geometry = geo
            stacked = np.empty((len(paths), *array.shape), dtype=np.float32)
        else:
            problem = geometry.matches(geo)
            if problem is not None:
                raise ToolkitError(f"does not match channel 0 of its case: {problem}", p)
        stacked[c] = array  # type: ignore[index]
        del array
    assert geometry is not None and stacked is not None, "read_channels needs at least one path"
    return stacked, geometry


def make_sitk(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    """An image from a ``(z, y, x)`` array (or ``(1, y, x)`` for 2D geometry)."""
    if geometry.dimension == 2 and array.ndim == 3:
        if array.shape[0] != 1:
            raise ValueError(f"2D geometry needs a (1, y, x) array, got {array.shape}")
        array = array[0]
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    if tuple(image.GetSize()) != tuple(geometry.size):
        raise ValueError(
            f"array of shape {array.shape} does not fit geometry of size {geometry.size}"
        )
    return geometry.apply_to(image)


def write_image(
    path: str | Path, array: np.ndarray, geometry: Geometry, compress: bool = True
) -> None:
    """Write atomically with exactly ``geometry``'s spacing, origin and direction."""
    image = make_sitk(array, geometry)
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=compress)


def label_dtype(max_label: int) -> np.dtype:
    """uint8, or uint16 when there are more than 255 labels."""
    return np.dtype(np.uint8) if max_label <= 255 else np.dtype(np.uint16)
