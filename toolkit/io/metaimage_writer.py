"""MetaImage (``.mha``, ``.mhd`` + raw) written with numpy alone, as SimpleITK writes it.

The writer of :mod:`toolkit.io.metaimage` (which owns the format and reads it): the lean
image writes its label maps here. The header holds the fields SimpleITK writes, in its order;
``direction`` (SimpleITK's, column ``k`` = axis ``k``) goes to ``TransformMatrix`` transposed;
the data are little-endian, zlib-compressed at SimpleITK's level unless ``compress=False``.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np

from toolkit.io.atomic import atomic_path
from toolkit.io.metaimage import MAX_DIMENSIONS, MetaImage

# SimpleITK's own compression level for MetaImage (zlib's default)
COMPRESSION_LEVEL = 6

# what the writer names each dtype (as SimpleITK does: 64-bit integers are LONG_LONG)
_TYPE_NAMES = {
    np.dtype("i1"): "MET_CHAR",
    np.dtype("u1"): "MET_UCHAR",
    np.dtype("i2"): "MET_SHORT",
    np.dtype("u2"): "MET_USHORT",
    np.dtype("i4"): "MET_INT",
    np.dtype("u4"): "MET_UINT",
    np.dtype("i8"): "MET_LONG_LONG",
    np.dtype("u8"): "MET_ULONG_LONG",
    np.dtype("f4"): "MET_FLOAT",
    np.dtype("f8"): "MET_DOUBLE",
}


def _numbers(values) -> str:
    """Each value as Python's shortest exact text (read back, it is the same double)."""
    return " ".join(repr(float(v)) for v in values)


def header_text(
    *,
    image: MetaImage,
    compressed_size: int | None,
    data_file: str = "LOCAL",
) -> str:
    """The header SimpleITK would write for ``image`` (pure function)."""
    dim = len(image.size)
    dtype = image.array.dtype
    if dtype.newbyteorder("=") not in _TYPE_NAMES:
        raise ValueError(f"MetaImage cannot hold {dtype} pixels")
    # SimpleITK's direction has axis k as column k; TransformMatrix lists axis after axis
    matrix = np.asarray(image.direction, dtype=np.float64).reshape(dim, dim).T.ravel()
    lines = [
        "ObjectType = Image",
        f"NDims = {dim}",
        "BinaryData = True",
        "BinaryDataByteOrderMSB = False",
        f"CompressedData = {compressed_size is not None}",
    ]
    if compressed_size is not None:
        lines.append(f"CompressedDataSize = {compressed_size}")
    lines += [
        f"TransformMatrix = {_numbers(matrix)}",
        f"Offset = {_numbers(image.origin)}",
        f"CenterOfRotation = {' '.join(['0'] * dim)}",
        f"ElementSpacing = {_numbers(image.spacing)}",
        f"DimSize = {' '.join(str(s) for s in image.size)}",
    ]
    if image.channels > 1:
        lines.append(f"ElementNumberOfChannels = {image.channels}")
    lines += [
        f"ElementType = {_TYPE_NAMES[dtype.newbyteorder('=')]}",
        f"ElementDataFile = {data_file}",
    ]
    return "\n".join(lines) + "\n"


def _payload(array: np.ndarray, compress: bool) -> bytes:
    data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    return zlib.compress(data, COMPRESSION_LEVEL) if compress else data


def write_metaimage(path: str | Path, image: MetaImage, *, compress: bool = True) -> None:
    """Write ``image`` atomically: ``.mha`` in one file, ``.mhd`` with its data beside it
    (``NAME.raw``, or ``NAME.zraw`` compressed, as SimpleITK names them)."""
    path = Path(path)
    dim = len(image.size)
    if not 1 <= dim <= MAX_DIMENSIONS or len(image.spacing) != dim or len(image.origin) != dim:
        raise ValueError(f"geometry of {len(image.spacing)} axes does not fit an array of {dim}")
    if len(image.direction) != dim * dim:
        raise ValueError(f"direction needs {dim * dim} numbers, got {len(image.direction)}")
    payload = _payload(image.array, compress)
    size = len(payload) if compress else None
    if path.name.lower().endswith(".mhd"):
        stem = path.name[: -len(".mhd")]
        data_name = f"{stem}.{'zraw' if compress else 'raw'}"
        with atomic_path(path.with_name(data_name)) as tmp:
            tmp.write_bytes(payload)
        text = header_text(image=image, compressed_size=size, data_file=data_name)
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="ascii")
        return
    text = header_text(image=image, compressed_size=size)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(text.encode("ascii"))
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
