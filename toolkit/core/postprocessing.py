"""Postprocessing as plain data (``postprocessing.json``), never pickled functions.

The method's only postprocessing: keep the largest connected component, of the whole
foreground and/or of given classes. The choice is made on cross-validation by
``toolkit select`` and applied by ``toolkit predict --postprocess`` and the container.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from toolkit.errors import ToolkitError
from toolkit.io.atomic import write_json


@dataclass
class Postprocessing:
    largest_component_foreground: bool = False
    largest_component_classes: list[int] = field(default_factory=list)

    @property
    def is_identity(self) -> bool:
        return not self.largest_component_foreground and not self.largest_component_classes

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str | Path | None = None) -> Postprocessing:
        known = {"largest_component_foreground", "largest_component_classes"}
        unknown = set(data) - known
        if unknown:
            raise ToolkitError(
                f"unknown postprocessing keys {sorted(unknown)} (known: {sorted(known)})", source
            )
        classes = data.get("largest_component_classes", [])
        if not isinstance(classes, list) or not all(isinstance(c, int) and c > 0 for c in classes):
            raise ToolkitError(
                "largest_component_classes must be a list of positive label values", source
            )
        return cls(bool(data.get("largest_component_foreground", False)), sorted(classes))

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Postprocessing:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ToolkitError("postprocessing file not found", path) from None
        except json.JSONDecodeError as exc:
            raise ToolkitError(f"is not valid JSON ({exc.msg})", path) from None
        if not isinstance(data, dict):
            raise ToolkitError("postprocessing must be a JSON object", path)
        return cls.from_dict(data, path)


def largest_component_mask(mask: np.ndarray) -> np.ndarray:
    """The largest connected component (full connectivity) of a boolean mask."""
    labelled, n = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
    if n <= 1:
        return mask.copy()
    sizes = np.bincount(labelled.ravel())
    sizes[0] = 0
    return labelled == int(np.argmax(sizes))


def apply_postprocessing(segmentation: np.ndarray, pp: Postprocessing) -> np.ndarray:
    """Remove every voxel outside the kept components (set to background); a new array."""
    seg = segmentation.copy()
    if pp.largest_component_foreground:
        foreground = seg > 0
        seg[foreground & ~largest_component_mask(foreground)] = 0
    for c in pp.largest_component_classes:
        mask = seg == c
        if mask.any():
            seg[mask & ~largest_component_mask(mask)] = 0
    return seg
