"""On-disk format of a preprocessed case, read by training through memory maps.

``preprocessed/<data_identifier>/``:

* ``CASE.npy``      float32 ``(c, z, y, x)``: cropped, normalized, resampled, transposed image
* ``CASE_seg.npy``  int8 ``(1, z, y, x)`` (int16 beyond 127 labels): labels on the same grid;
  ``-1`` marks voxels outside the non-zero mask (background the network never sees as
  foreground-adjacent context)
* ``CASE.json``     :class:`CaseProperties`: the original geometry, crop box, shapes, and a
  sample of voxel locations per foreground class for oversampling. Written last, so its
  presence marks a complete case.

Plain ``.npy`` is used because ``np.load(mmap_mode="r")`` reads a random patch without
decompressing the whole case (see ``bench/storage.py`` for the comparison).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from toolkit.errors import ToolkitError
from toolkit.io.atomic import atomic_path, write_text
from toolkit.io.images import Geometry
from toolkit.io.json_files import read_contract

DATA_SUFFIX = ".npy"
SEG_SUFFIX = "_seg.npy"
PROPS_SUFFIX = ".json"


@dataclass
class CaseProperties:
    case: str
    geometry: dict  # Geometry.to_dict() of the original image (channel 0)
    spacing: list[float]  # original spacing, (z, y, x)
    shape_before_cropping: list[int]  # (z, y, x)
    crop_bbox: list[list[int]]  # [[z0, z1], [y0, y1], [x0, x1]], half-open, original axes
    shape_after_cropping: list[int]  # (z, y, x)
    shape_after_resampling: list[int]  # transposed order, what CASE.npy holds
    # label -> list of (z, y, x) voxel indices in the preprocessed (transposed) array
    class_locations: dict[str, list[list[int]]] = field(default_factory=dict)
    # options this case was computed with (hash of the configuration), to detect stale cases
    source: dict = field(default_factory=dict)

    @property
    def original_geometry(self) -> Geometry:
        return Geometry.from_dict(self.geometry)

    @classmethod
    def from_dict(cls, d: dict) -> CaseProperties:
        return cls(**d)


def case_paths(folder: Path, case: str) -> tuple[Path, Path, Path]:
    return (
        folder / f"{case}{DATA_SUFFIX}",
        folder / f"{case}{SEG_SUFFIX}",
        folder / f"{case}{PROPS_SUFFIX}",
    )


def save_case(
    folder: Path, case: str, data: np.ndarray, seg: np.ndarray, props: CaseProperties
) -> None:
    """Write the three files atomically; the properties last, marking the case complete."""
    data_path, seg_path, props_path = case_paths(folder, case)
    if props_path.exists():
        props_path.unlink()  # the case is incomplete until the new properties land
    with atomic_path(data_path) as tmp:
        np.save(tmp, np.ascontiguousarray(data, dtype=np.float32))
    seg_dtype = np.int8 if seg.max(initial=0) <= 127 else np.int16
    with atomic_path(seg_path) as tmp:
        np.save(tmp, np.ascontiguousarray(seg, dtype=seg_dtype))
    write_text(props_path, properties_json(props))


def _plain(value):
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def properties_json(props: CaseProperties) -> str:
    """One key per line, values compact: the oversampling locations stay small and fast to write."""
    lines = [
        f"{json.dumps(f.name)}: {json.dumps(getattr(props, f.name), separators=(',', ':'), default=_plain, allow_nan=False)}"
        for f in fields(props)
    ]
    return "{\n" + ",\n".join(lines) + "\n}\n"


def load_properties(folder: Path, case: str) -> CaseProperties:
    path = case_paths(folder, case)[2]
    return read_contract(
        path, CaseProperties.from_dict, what="preprocessed case", producer="toolkit preprocess"
    )


def load_case(
    folder: Path, case: str, mmap: bool = True
) -> tuple[np.ndarray, np.ndarray, CaseProperties]:
    """Image ``(c, z, y, x)`` and labels ``(1, z, y, x)``, memory-mapped read-only by default."""
    props = load_properties(folder, case)
    data_path, seg_path, _ = case_paths(folder, case)
    mode = "r" if mmap else None
    try:
        return np.load(data_path, mmap_mode=mode), np.load(seg_path, mmap_mode=mode), props
    except (FileNotFoundError, ValueError) as exc:
        raise ToolkitError(
            f"preprocessed case is damaged ({exc}): run `toolkit preprocess` again", data_path
        ) from None


def complete_cases(folder: Path) -> list[str]:
    """Cases whose three files are all present, sorted."""
    if not folder.is_dir():
        return []
    cases = []
    for props in folder.glob(f"*{PROPS_SUFFIX}"):
        case = props.name[: -len(PROPS_SUFFIX)]
        data_path, seg_path, _ = case_paths(folder, case)
        if data_path.is_file() and seg_path.is_file():
            cases.append(case)
    return sorted(cases)
