"""Converting one case (runs in worker processes): channel files and an integer label.

Output: one ``.nii.gz`` per channel (spacing, origin and direction of the source's first three
axes, exactly) and integer labels (uint8, or uint16 beyond 255). A 4D MSD image is split along
its fourth axis; an RGB(A) natural image (PNG, BMP, TIFF) into its R, G, B[, A] channels,
with nnU-Net's geometry for such files (spacing 1, see :func:`toolkit.io.images.natural_image`);
a truncated file, NaN or inf in an image and non-whole label values are refused with one line
naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from toolkit.convert.sources import FORMAT_MSD, SourceCase
from toolkit.errors import ToolkitError
from toolkit.io.images import is_natural_image_file, label_dtype, natural_image, split_components
from toolkit.io.nifti_scan import scan
from toolkit.workspace import channel_file, label_file


@dataclass(frozen=True)
class CaseJob:
    source: SourceCase
    format: str
    num_channels: int
    images_out: Path
    labels_out: Path | None
    max_label: int


@dataclass(frozen=True)
class ConvertedCase:
    case: str
    problem: str | None  # one line naming the file, or None when converted


def _read_source(path: Path, colour: bool = False) -> sitk.Image:
    """A source image, refusing a truncated file that SimpleITK would read as zeros.

    A 2D natural image (PNG, BMP, TIFF) gets nnU-Net's geometry; ``colour`` lets it hold
    RGB(A) values, which :func:`_raw_channels` splits.
    """
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
        image = natural_image(reader.Execute(), path)
    except RuntimeError:
        raise ToolkitError("unreadable image (not a file SimpleITK can read)", path) from None
    components = image.GetNumberOfComponentsPerPixel()
    if components != 1 and not (colour and is_natural_image_file(path)):
        raise ToolkitError(
            f"has {components} values per pixel (colour or a palette); expected one value per pixel",
            path,
        )
    return image


def _raw_channels(paths: tuple[Path, ...], num_channels: int) -> list[sitk.Image]:
    """The channels of a case of the raw layout: one per file, R, G, B[, A] per colour file.

    Files are ``CASE_0000``, ``CASE_0001``, ... (as nnU-Net v2 numbers them: by file, so an RGB
    ``CASE_0000.png`` alone gives the three channels ``dataset.json`` names).
    """
    channels: list[sitk.Image] = []
    for path in paths:
        if len(channels) >= num_channels:
            if path.is_file():
                raise ToolkitError(
                    f"is more than the {num_channels} channel(s) dataset.json declares "
                    f"(the files before it hold them all)",
                    path,
                )
            break
        if channels and not path.is_file():
            raise ToolkitError(
                f"file not found; the files before it hold {len(channels)} of the {num_channels} "
                "channels dataset.json declares",
                path,
            )
        image = _read_source(path, colour=True)
        if image.GetDimension() not in (2, 3):
            raise ToolkitError(
                f"is {image.GetDimension()}D; expected 2D or 3D (one channel per file)", path
            )
        channels.extend(split_components(image))
    if len(channels) != num_channels:
        raise ToolkitError(
            f"its files hold {len(channels)} channels but dataset.json declares {num_channels}",
            paths[0],
        )
    return channels


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
    image = _read_source(path)
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


def convert_case(job: CaseJob) -> ConvertedCase:
    """Write one case's channel files (and label); a data problem is returned, not raised."""
    case = job.source.case
    try:
        if job.format == FORMAT_MSD:
            channels = _split_channels(job.source.images[0], job.num_channels)
        else:
            channels = _raw_channels(job.source.images, job.num_channels)
        if job.source.label is not None and job.labels_out is not None:
            label = convert_label(_read_source(job.source.label), job.source.label, job.max_label)
        else:
            label = None
        for c, image in enumerate(channels):
            _write(image, job.images_out / channel_file(case, c))
        if label is not None and job.labels_out is not None:
            _write(label, job.labels_out / label_file(case))
    except ToolkitError as exc:
        return ConvertedCase(case, exc.one_line())
    return ConvertedCase(case, None)
