"""What SimpleITK does not say about a NIfTI file: missing pixel data, NaN and inf.

ITK's NIfTI reader fills the missing part of a truncated ``.nii``/``.nii.gz`` with zeros and
reads NaN and inf as 0, all without a word. Reading the (decompressed) byte stream once, in
chunks, finds both: the gzip stream must end properly, the payload must be as long as the
header says, and float payloads are counted for non-finite values.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_CHUNK = 1 << 22
# NIfTI datatype codes of floating-point payloads -> numpy element type (complex as pairs)
_FLOAT_TYPES = {16: "f4", 64: "f8", 32: "f4", 1792: "f8", 1536: "f16"}
_BYTES = {
    2: 1,
    4: 2,
    8: 4,
    16: 4,
    32: 8,
    64: 8,
    128: 3,
    256: 1,
    512: 2,
    768: 4,
    1024: 8,
    1280: 8,
    1536: 16,
    1792: 16,
    2048: 32,
    2304: 4,
}


@dataclass(frozen=True)
class NiftiHeader:
    byte_order: str  # "<" or ">"
    datatype: int
    vox_offset: int
    voxels: int  # product of the dimensions

    @property
    def payload_bytes(self) -> int | None:
        per = _BYTES.get(self.datatype)
        return None if per is None else per * self.voxels


@dataclass(frozen=True)
class NiftiScan:
    problem: str | None = None  # truncated or corrupt, as a phrase
    nonfinite: int = 0  # NaN and inf values in a float payload


def is_nifti(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


def parse_header(head: bytes) -> NiftiHeader | None:
    """The fields needed from a NIfTI-1 or NIfTI-2 header (either byte order), or ``None``."""
    for order in "<>":
        if len(head) >= 348 and struct.unpack(order + "i", head[:4])[0] == 348:
            dims = struct.unpack(order + "8h", head[40:56])
            datatype = struct.unpack(order + "h", head[70:72])[0]
            vox_offset = int(struct.unpack(order + "f", head[108:112])[0])
            return NiftiHeader(order, datatype, max(vox_offset, 348), _voxels(dims))
        if len(head) >= 540 and struct.unpack(order + "i", head[:4])[0] == 540:
            dims = struct.unpack(order + "8q", head[16:80])
            datatype = struct.unpack(order + "h", head[12:14])[0]
            vox_offset = struct.unpack(order + "q", head[168:176])[0]
            return NiftiHeader(order, datatype, max(int(vox_offset), 540), _voxels(dims))
    return None


def _voxels(dims: tuple[int, ...]) -> int:
    n = max(0, min(int(dims[0]), 7))
    return int(np.prod([max(int(d), 1) for d in dims[1 : n + 1]], dtype=np.int64)) if n else 0


def _count_nonfinite(buffer: bytes, dtype: np.dtype | None) -> tuple[int, bytes]:
    """Non-finite values in the whole elements of ``buffer``, and the bytes left over."""
    if dtype is None or not buffer:
        return 0, b""
    usable = len(buffer) - len(buffer) % dtype.itemsize
    values = np.frombuffer(buffer[:usable], dtype=dtype)
    return int(values.size - np.count_nonzero(np.isfinite(values))), buffer[usable:]


def scan(path: Path) -> NiftiScan:
    """Read ``path`` to its end; ``NiftiScan()`` for a file that is not NIfTI."""
    if not is_nifti(path):
        return NiftiScan()
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            head = fh.read(544)
            header = parse_header(head)
            if header is None:
                return NiftiScan()
            element = _FLOAT_TYPES.get(header.datatype)
            dtype = np.dtype(header.byte_order + element) if element else None
            total = len(head)
            skip = max(0, header.vox_offset - len(head))
            nonfinite, pending = _count_nonfinite(head[header.vox_offset :], dtype)
            while chunk := fh.read(_CHUNK):
                total += len(chunk)
                if dtype is None:
                    continue
                if skip:
                    dropped = min(skip, len(chunk))
                    chunk, skip = chunk[dropped:], skip - dropped
                found, pending = _count_nonfinite(pending + chunk, dtype)
                nonfinite += found
    except (EOFError, OSError, zlib.error) as exc:
        return NiftiScan(problem=f"truncated or corrupt file ({exc})")
    payload = header.payload_bytes
    if payload is not None and total < header.vox_offset + payload:
        return NiftiScan(
            problem=f"truncated file: {total} bytes where the header needs {header.vox_offset + payload}"
        )
    return NiftiScan(nonfinite=nonfinite)
