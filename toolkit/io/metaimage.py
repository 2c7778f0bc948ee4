"""MetaImage (``.mha``, ``.mhd`` + raw) read with numpy alone; the owner of the format
(its writer is :mod:`toolkit.io.metaimage_writer`).

The lean image (``export-container --runtime openvino|onnxruntime``) installs no SimpleITK
(0.27 GB installed), and Grand Challenge hands its jobs ``.mha`` files. This module reads and
writes that format exactly as SimpleITK does, so both paths give the same arrays and
geometry:

* the array in SimpleITK's numpy order: ``DimSize`` reversed (``(z, y, x)``), the channels of
  ``ElementNumberOfChannels`` last (``(z, y, x, c)``), in native byte order;
* ``spacing`` (``ElementSpacing``, else ``ElementSize``), ``origin`` (``Offset``, or its
  synonyms ``Position`` and ``Origin``) and ``direction`` in SimpleITK's ``(x, y, z)`` order;
  ``direction`` is SimpleITK's row-major matrix, whose column ``k`` is axis ``k``, which
  MetaImage's ``TransformMatrix`` (synonyms ``Rotation``, ``Orientation``) stores one axis
  after the other: the transpose;
* data in the header's file (``ElementDataFile = LOCAL``) or in one file beside it, raw or
  zlib-compressed (``CompressedData``), either byte order (``BinaryDataByteOrderMSB`` or
  ``ElementByteOrderMSB``), ``HeaderSize`` bytes skipped in a separate data file (``-1``: the
  data are the file's last bytes).

Hostile files: the header is read up to :data:`MAX_HEADER_BYTES`; every field is checked
(one :class:`~toolkit.errors.ToolkitError` naming the file); raw data must be exactly as
long as ``DimSize`` x channels x element size; compressed data are inflated a chunk at a
time and refused as soon as they give more than that size, so memory grows with what the
file really holds, never with what its header claims. ASCII data, lists of slice files and
file-name patterns are refused.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toolkit.errors import ToolkitError
from toolkit.io.confine import check_inside, plain_name

METAIMAGE_SUFFIXES = (".mha", ".mhd")
# a header longer than this is not a MetaImage header (SimpleITK's are a few hundred bytes)
MAX_HEADER_BYTES = 64 * 1024
MAX_DIMENSIONS = 4
MAX_CHANNELS = 64
# compressed data are inflated this many bytes of input at a time
CHUNK_BYTES = 1 << 20
# zlib's largest possible expansion (a stream of one repeated byte) is about 1032:1
MAX_ZLIB_RATIO = 1032

# MetaImage element types <-> numpy dtypes (little-endian; the byte order is applied apart)
ELEMENT_TYPES: dict[str, np.dtype] = {
    "MET_CHAR": np.dtype("i1"),
    "MET_UCHAR": np.dtype("u1"),
    "MET_SHORT": np.dtype("<i2"),
    "MET_USHORT": np.dtype("<u2"),
    "MET_INT": np.dtype("<i4"),
    "MET_UINT": np.dtype("<u4"),
    "MET_LONG": np.dtype("<i4"),
    "MET_ULONG": np.dtype("<u4"),
    "MET_LONG_LONG": np.dtype("<i8"),
    "MET_ULONG_LONG": np.dtype("<u8"),
    "MET_FLOAT": np.dtype("<f4"),
    "MET_DOUBLE": np.dtype("<f8"),
}
_SYNONYMS = {
    "position": "offset",
    "origin": "offset",
    "rotation": "transformmatrix",
    "orientation": "transformmatrix",
    "elementbyteordermsb": "binarydatabyteordermsb",
}


@dataclass(frozen=True, kw_only=True)
class MetaImage:
    """A MetaImage's pixels in SimpleITK's numpy order and its geometry in (x, y, z) order."""

    array: np.ndarray
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]  # row-major, column k = axis k (SimpleITK's GetDirection)
    channels: int = 1

    @property
    def size(self) -> tuple[int, ...]:
        """Voxels per axis in (x, y, z) order (SimpleITK's ``GetSize``)."""
        spatial = self.array.shape[:-1] if self.channels > 1 else self.array.shape
        return tuple(int(s) for s in spatial[::-1])


@dataclass(frozen=True, kw_only=True)
class Header:
    """A MetaImage header, checked: what :func:`read_header` found."""

    size: tuple[int, ...]  # (x, y, z)
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    channels: int
    dtype: np.dtype  # with the file's byte order
    compressed: bool
    compressed_size: int | None
    data_file: Path  # the header's own file for LOCAL
    data_offset: int  # where the data start in data_file; -1: the file's last bytes

    @property
    def data_bytes(self) -> int:
        return math.prod(self.size) * self.channels * self.dtype.itemsize

    @property
    def shape(self) -> tuple[int, ...]:
        """The array's shape in numpy order."""
        return (*self.size[::-1], *((self.channels,) if self.channels > 1 else ()))


def is_metaimage_file(path: str | Path) -> bool:
    return Path(path).name.lower().endswith(METAIMAGE_SUFFIXES)


# --- reading ---------------------------------------------------------------------------


def _fields(path: Path) -> tuple[dict[str, str], int]:
    """The header's ``key = value`` fields (keys lower-cased, synonyms merged) and the
    offset of the first byte after the ``ElementDataFile`` line."""
    with open(path, "rb") as f:
        head = f.read(MAX_HEADER_BYTES)
    fields: dict[str, str] = {}
    start = 0
    while True:
        end = head.find(b"\n", start)
        if end < 0:
            raise ToolkitError(
                "is not a MetaImage file (no ElementDataFile line within the first "
                f"{MAX_HEADER_BYTES // 1024} KiB)",
                path,
            )
        raw = head[start:end]
        start = end + 1
        try:
            line = raw.decode("ascii").strip()
        except UnicodeDecodeError:
            raise ToolkitError(
                "is not a MetaImage file (its header holds bytes that are not text)", path
            ) from None
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ToolkitError(f"malformed MetaImage header line {line[:60]!r}", path)
        name = key.strip().lower()
        name = _SYNONYMS.get(name, name)
        fields[name] = value.strip()
        if name == "elementdatafile":
            return fields, start


def _ints(fields: dict[str, str], key: str, label: str, path: Path) -> list[int]:
    try:
        return [int(v) for v in fields[key].split()]
    except ValueError:
        raise ToolkitError(
            f"MetaImage {label} must be whole numbers, not {fields[key]!r}", path
        ) from None


def _floats(
    fields: dict[str, str], key: str, label: str, count: int, default: list[float], path: Path
) -> tuple[float, ...]:
    if key not in fields:
        return tuple(default)
    try:
        values = [float(v) for v in fields[key].split()]
    except ValueError:
        raise ToolkitError(
            f"MetaImage {label} must be numbers, not {fields[key][:60]!r}", path
        ) from None
    if len(values) != count:
        raise ToolkitError(f"MetaImage {label} needs {count} numbers, found {len(values)}", path)
    if not all(math.isfinite(v) for v in values):
        raise ToolkitError(f"MetaImage {label} holds a value that is not finite", path)
    return tuple(values)


def _flag(fields: dict[str, str], key: str, label: str, path: Path) -> bool:
    value = fields.get(key, "False").strip().lower()
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    raise ToolkitError(f"MetaImage {label} must be True or False, not {value[:20]!r}", path)


def read_header(path: str | Path) -> Header:
    """The checked header of a ``.mha`` or ``.mhd`` file; the pixels are not read."""
    path = Path(path)
    if not path.is_file():
        raise ToolkitError("file not found", path)
    fields, header_end = _fields(path)
    object_type = fields.get("objecttype", "Image")
    if object_type.lower() != "image":
        raise ToolkitError(f"is a MetaImage {object_type[:30]!r}, not an Image", path)
    if "ndims" not in fields or "dimsize" not in fields or "elementtype" not in fields:
        missing = [k for k in ("NDims", "DimSize", "ElementType") if k.lower() not in fields]
        raise ToolkitError(f"MetaImage header lacks {', '.join(missing)}", path)
    ndims = _ints(fields, "ndims", "NDims", path)
    if len(ndims) != 1 or not 1 <= ndims[0] <= MAX_DIMENSIONS:
        raise ToolkitError(
            f"MetaImage NDims must be one number from 1 to {MAX_DIMENSIONS}, not {fields['ndims']!r}",
            path,
        )
    dim = ndims[0]
    size = _ints(fields, "dimsize", "DimSize", path)
    if len(size) != dim or any(s < 1 for s in size):
        raise ToolkitError(
            f"MetaImage DimSize needs {dim} positive numbers, not {fields['dimsize']!r}", path
        )
    channels_list = (
        _ints(fields, "elementnumberofchannels", "ElementNumberOfChannels", path)
        if ("elementnumberofchannels" in fields)
        else [1]
    )
    if len(channels_list) != 1 or not 1 <= channels_list[0] <= MAX_CHANNELS:
        raise ToolkitError(
            f"MetaImage ElementNumberOfChannels must be one number from 1 to {MAX_CHANNELS}", path
        )
    element_type = fields["elementtype"].strip().upper()
    if element_type not in ELEMENT_TYPES:
        raise ToolkitError(
            f"MetaImage ElementType {element_type[:30]!r} is not one this reader knows "
            f"({', '.join(ELEMENT_TYPES)})",
            path,
        )
    msb = _flag(fields, "binarydatabyteordermsb", "BinaryDataByteOrderMSB", path)
    dtype = ELEMENT_TYPES[element_type]
    if dtype.itemsize > 1:
        dtype = dtype.newbyteorder(">" if msb else "<")
    if not _flag(fields, "binarydata", "BinaryData", path) and "binarydata" in fields:
        raise ToolkitError("MetaImage with ASCII data (BinaryData = False) is not supported", path)
    spacing_key = "elementspacing" if "elementspacing" in fields else "elementsize"
    spacing = _floats(fields, spacing_key, "ElementSpacing", dim, [1.0] * dim, path)
    if any(s <= 0 for s in spacing):
        raise ToolkitError("MetaImage ElementSpacing must be positive", path)
    origin = _floats(fields, "offset", "Offset", dim, [0.0] * dim, path)
    identity = np.eye(dim).ravel().tolist()
    matrix = _floats(fields, "transformmatrix", "TransformMatrix", dim * dim, identity, path)
    # TransformMatrix lists axis after axis; SimpleITK's direction has axis k as column k
    direction = tuple(float(v) for v in np.asarray(matrix).reshape(dim, dim).T.ravel())
    if abs(np.linalg.det(np.asarray(matrix).reshape(dim, dim))) < 1e-6:
        raise ToolkitError("MetaImage TransformMatrix is singular: not a direction", path)
    compressed = _flag(fields, "compresseddata", "CompressedData", path)
    compressed_size = None
    if "compresseddatasize" in fields:
        values = _ints(fields, "compresseddatasize", "CompressedDataSize", path)
        if len(values) != 1 or values[0] < 0:
            raise ToolkitError("MetaImage CompressedDataSize must be one number of bytes", path)
        compressed_size = values[0]
    data_file, data_offset = _data_location(fields, path, header_end)
    return Header(
        size=tuple(size),
        spacing=spacing,
        origin=origin,
        direction=direction,
        channels=channels_list[0],
        dtype=dtype,
        compressed=compressed,
        compressed_size=compressed_size,
        data_file=data_file,
        data_offset=data_offset,
    )


def _data_location(fields: dict[str, str], path: Path, header_end: int) -> tuple[Path, int]:
    name = fields["elementdatafile"]
    if name.upper() == "LOCAL":
        return path, header_end
    if name.upper() == "LIST" or len(name.split()) > 1 or "%" in name:
        raise ToolkitError(
            f"MetaImage ElementDataFile {name[:60]!r}: lists and patterns of slice files are not supported",
            path,
        )
    # the data file lies beside the header: one plain name, and no link leading elsewhere
    plain_name(name, what="MetaImage ElementDataFile (a file beside the header)", source=path)
    data_file = check_inside(
        path.parent, path.parent / name, what="MetaImage ElementDataFile", shown=name, source=path
    )
    if not data_file.is_file():
        raise ToolkitError(f"the data file {name!r} its header names is missing", path)
    offset = 0
    if "headersize" in fields:
        values = _ints(fields, "headersize", "HeaderSize", path)
        if len(values) != 1 or values[0] < -1:
            raise ToolkitError("MetaImage HeaderSize must be one number of bytes, or -1", path)
        offset = values[0]
    return data_file, offset


def _raw(header: Header, path: Path) -> bytearray:
    expected = header.data_bytes
    available = header.data_file.stat().st_size
    offset = header.data_offset if header.data_offset >= 0 else available - expected
    if offset < 0 or available - offset != expected:
        raise ToolkitError(
            f"MetaImage data hold {max(available - max(offset, 0), 0)} bytes but DimSize "
            f"{'x'.join(map(str, header.size))} x {header.channels} channel(s) of "
            f"{header.dtype.itemsize} byte(s) need {expected}",
            path,
        )
    buffer = bytearray(expected)  # bounded by the file's size, checked above
    with open(header.data_file, "rb") as f:
        f.seek(offset)
        if f.readinto(buffer) != expected:
            raise ToolkitError("MetaImage data ended before their size (the file changed)", path)
    return buffer


def _compressed_chunks(header: Header, path: Path) -> Iterator[bytes]:
    offset = max(header.data_offset, 0)
    available = header.data_file.stat().st_size - offset
    if header.compressed_size is not None:
        if header.compressed_size > available:
            raise ToolkitError(
                f"MetaImage CompressedDataSize {header.compressed_size} is more than the "
                f"{available} bytes the file holds",
                path,
            )
        available = header.compressed_size
    if header.data_bytes > max(available, 1) * MAX_ZLIB_RATIO:
        raise ToolkitError(
            f"MetaImage DimSize claims {header.data_bytes} bytes, more than {available} "
            "compressed bytes can hold",
            path,
        )
    with open(header.data_file, "rb") as f:
        f.seek(offset)
        left = available
        while left > 0:
            chunk = f.read(min(CHUNK_BYTES, left))
            if not chunk:
                break
            left -= len(chunk)
            yield chunk


def _inflate(header: Header, path: Path) -> bytearray:
    """The compressed data inflated a chunk at a time, refused once past the expected size."""
    expected = header.data_bytes
    out = bytearray()
    inflater = zlib.decompressobj()
    try:
        for chunk in _compressed_chunks(header, path):
            while chunk:
                out += inflater.decompress(chunk, expected - len(out) + 1)
                if len(out) > expected:
                    raise ToolkitError(
                        f"MetaImage compressed data inflate to more than the {expected} bytes "
                        "DimSize and ElementType say",
                        path,
                    )
                chunk = inflater.unconsumed_tail
            if inflater.eof:
                break
        out += inflater.flush()
    except zlib.error as exc:
        raise ToolkitError(f"MetaImage compressed data are damaged ({exc})", path) from None
    if len(out) != expected:
        raise ToolkitError(
            f"MetaImage compressed data inflate to {len(out)} bytes but DimSize and "
            f"ElementType need {expected}",
            path,
        )
    return out


def read_metaimage(path: str | Path) -> MetaImage:
    """A ``.mha`` or ``.mhd`` file's pixels and geometry, as SimpleITK reads them."""
    path = Path(path)
    header = read_header(path)
    buffer = _inflate(header, path) if header.compressed else _raw(header, path)
    array = np.frombuffer(buffer, dtype=header.dtype).reshape(header.shape)
    if not array.dtype.isnative:
        array = array.byteswap().view(array.dtype.newbyteorder("="))
    return MetaImage(
        array=array,
        spacing=header.spacing,
        origin=header.origin,
        direction=header.direction,
        channels=header.channels,
    )
