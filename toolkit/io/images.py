"""Reading and writing images with SimpleITK, geometry kept exactly.

Conventions used everywhere in the toolkit:

* Arrays are in SimpleITK's numpy order: ``(z, y, x)`` for 3D, and a 2D image is read as a
  3D array with one slice ``(1, y, x)`` so every stage handles one shape of data.
* :class:`Geometry` keeps SimpleITK's own physical description (``(x, y, z)`` spacing,
  origin, direction) so an output is written with exactly the input's values.
  ``Geometry.spacing_zyx`` gives the spacing in array order, which is what planning and
  preprocessing use. A 2D image's slice axis gets the spacing ``NO_SPACING`` (999), never
  resampled.
* 2D natural-image files (``.png``, ``.bmp``, ``.tif``/``.tiff`` holding one 2D image), read as
  nnU-Net v2's ``NaturalImage2DIO`` reads them: their spacing, origin and direction are
  ignored (spacing 1, 1, so ``(999, 1, 1)`` in array order) and a colour file holds several
  channels, RGB as three and RGBA as four, in that order (:func:`natural_image`,
  :func:`split_components`). A multi-page TIFF is a 3D image with SimpleITK's geometry.
* Which library reads and writes is chosen here, once (:func:`uses_simpleitk`): SimpleITK
  where it is installed (the host, the torch image), else :mod:`toolkit.io.metaimage` (the
  lean image, which installs no SimpleITK: ``.mha`` and ``.mhd`` only; any other file is one
  line naming it and saying to export with ``--runtime torch``). Both give the same arrays
  and geometry.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toolkit.errors import ToolkitError
from toolkit.io import metaimage, metaimage_writer
from toolkit.io.atomic import atomic_path

try:  # the host and the torch image; the lean image has none (see uses_simpleitk)
    import SimpleITK as sitk
except ModuleNotFoundError:
    sitk = None

NO_SPACING = 999.0
NATURAL_IMAGE_SUFFIXES = (".png", ".bmp", ".tif", ".tiff")
# values per pixel of a natural image: grey, RGB, RGBA
NATURAL_IMAGE_COMPONENTS = (1, 3, 4)
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", *NATURAL_IMAGE_SUFFIXES)


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


def is_natural_image_file(path: str | Path) -> bool:
    """A file ending of 2D natural images (PNG, BMP, TIFF)."""
    return Path(path).name.lower().endswith(NATURAL_IMAGE_SUFFIXES)


def natural_image(image: sitk.Image, path: str | Path) -> sitk.Image:
    """A 2D image of a natural-image file with nnU-Net's geometry (spacing 1, origin 0, identity).

    Other images (a multi-page TIFF is 3D) are returned unchanged. A 2D file must be grey, RGB
    or RGBA.
    """
    if image.GetDimension() != 2 or not is_natural_image_file(path):
        return image
    components = image.GetNumberOfComponentsPerPixel()
    if components not in NATURAL_IMAGE_COMPONENTS:
        raise ToolkitError(
            f"has {components} values per pixel; a 2D image file must be grey (1), RGB (3) or RGBA (4)",
            path,
        )
    image.SetSpacing((1.0, 1.0))
    image.SetOrigin((0.0, 0.0))
    image.SetDirection((1.0, 0.0, 0.0, 1.0))
    return image


def split_components(image: sitk.Image) -> list[sitk.Image]:
    """One scalar image per value of a pixel (R, G, B[, A]), each with the image's geometry."""
    if image.GetNumberOfComponentsPerPixel() == 1:
        return [image]
    return [
        sitk.VectorIndexSelectionCast(image, c)
        for c in range(image.GetNumberOfComponentsPerPixel())
    ]


def uses_simpleitk() -> bool:
    """The one choice of image I/O: SimpleITK when it is importable, else MetaImage alone."""
    return sitk is not None


def _lean_only(path: Path) -> None:
    """Without SimpleITK only MetaImage files are read and written: else one line."""
    if not metaimage.is_metaimage_file(path):
        ending = path.name[len(strip_image_suffix(path.name)) :] or path.suffix or "this kind of"
        raise ToolkitError(
            f"this image reads and writes MetaImage files (.mha, .mhd) only: it has no SimpleITK "
            f"for {ending} files; export the container with --runtime torch to read them",
            path,
        )


@dataclass(frozen=True)
class LoadedImage:
    """An image file's pixels in SimpleITK's numpy order (``(z, y, x)``, ``(y, x)`` for 2D,
    the values of a multi-component pixel last) and its geometry in all its axes."""

    array: np.ndarray
    geometry: Geometry
    components: int


def load_image(path: str | Path) -> LoadedImage:
    """Any image file, by SimpleITK or (without it) by :mod:`toolkit.io.metaimage`."""
    path = Path(path)
    if not path.is_file():
        raise ToolkitError("file not found", path)
    if not uses_simpleitk():
        _lean_only(path)
        image = metaimage.read_metaimage(path)
        return LoadedImage(image.array, _metaimage_geometry(image), image.channels)
    image = read_sitk(path)
    try:
        array = sitk.GetArrayFromImage(image)
    except RuntimeError:
        raise ToolkitError("unreadable image (pixel data could not be read)", path) from None
    return LoadedImage(array, Geometry.of(image), image.GetNumberOfComponentsPerPixel())


def _metaimage_geometry(header) -> Geometry:
    """The geometry of a MetaImage (its header, or the image read with it)."""
    return Geometry(
        spacing=header.spacing, origin=header.origin, direction=header.direction, size=header.size
    )


def read_sitk(path: str | Path) -> sitk.Image:
    """An image file; a 2D natural image gets nnU-Net's geometry (:func:`natural_image`)."""
    path = Path(path)
    if not path.is_file():
        raise ToolkitError("file not found", path)
    try:
        return natural_image(sitk.ReadImage(str(path)), path)
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
    return _single_channel(load_image(path), Path(path))


def _single_channel(image: LoadedImage, path: Path) -> tuple[np.ndarray, Geometry]:
    if image.components != 1:
        raise ToolkitError(
            f"has {image.components} components per pixel; expected one channel per file", path
        )
    if image.geometry.dimension not in (2, 3):
        raise ToolkitError(f"is {image.geometry.dimension}D; expected a 2D or 3D image", path)
    array = image.array
    if array.ndim == 2:
        array = array[None]
    return array, image.geometry


def read_geometry(path: str | Path) -> Geometry:
    """An image file's geometry from its header alone (the pixels are not read)."""
    path = Path(path)
    if not path.is_file():
        raise ToolkitError("file not found", path)
    if not uses_simpleitk():
        _lean_only(path)
        return _metaimage_geometry(metaimage.read_header(path))
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


def _file_channels(path: Path) -> tuple[list[np.ndarray], Geometry]:
    """The channels of one file: one, or R, G, B[, A] of a colour natural image."""
    image = load_image(path)
    if image.components == 1 or not is_natural_image_file(path):
        array, geometry = _single_channel(image, path)
        return [array], geometry
    array = image.array  # (y, x, c)
    return [array[None, ..., c] for c in range(array.shape[-1])], image.geometry


def read_channels(paths: list[Path]) -> tuple[np.ndarray, Geometry]:
    """Channels of one case stacked as ``(c, z, y, x)`` float32, with the first file's geometry.

    One channel per file, except colour natural images: R, G, B[, A] in that order. Each
    channel is written into one float32 array as it is read: no list of float copies and no
    stacked copy beside it.
    """
    stacked: np.ndarray | None = None
    geometry: Geometry | None = None
    filled = 0
    for p in paths:
        channels, geo = _file_channels(Path(p))
        if geometry is None:
            geometry = geo
            # as many channels per file as the first has (colour files are small images)
            total = len(channels) * len(paths)
            stacked = np.empty((total, *channels[0].shape), dtype=np.float32)
        else:
            problem = geometry.matches(geo)
            if problem is not None:
                raise ToolkitError(f"does not match channel 0 of its case: {problem}", p)
        for array in channels:
            if filled == stacked.shape[0]:  # type: ignore[union-attr]
                stacked = np.concatenate([stacked, array[None].astype(np.float32)])
            else:
                stacked[filled] = array  # type: ignore[index]
            filled += 1
        del channels
    assert geometry is not None and stacked is not None, "read_channels needs at least one path"
    return (stacked if filled == stacked.shape[0] else stacked[:filled]), geometry


def _metaimage_of(array: np.ndarray, geometry: Geometry) -> metaimage.MetaImage:
    """What :func:`make_sitk` makes, for the MetaImage writer: the same checks."""
    if geometry.dimension == 2 and array.ndim == 3:
        if array.shape[0] != 1:
            raise ValueError(f"2D geometry needs a (1, y, x) array, got {array.shape}")
        array = array[0]
    if tuple(array.shape[::-1]) != tuple(geometry.size):
        raise ValueError(
            f"array of shape {array.shape} does not fit geometry of size {geometry.size}"
        )
    return metaimage.MetaImage(
        array=array,
        spacing=geometry.spacing,
        origin=geometry.origin,
        direction=geometry.direction,
    )


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
    if not uses_simpleitk():
        _lean_only(Path(path))
        metaimage_writer.write_metaimage(path, _metaimage_of(array, geometry), compress=compress)
        return
    image = make_sitk(array, geometry)
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=compress)


def label_dtype(max_label: int) -> np.dtype:
    """uint8, or uint16 when there are more than 255 labels."""
    return np.dtype(np.uint8) if max_label <= 255 else np.dtype(np.uint16)
