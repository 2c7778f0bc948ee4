"""Postprocessing as plain data (``postprocessing.json``), never pickled functions.

The method's only postprocessing: keep the largest connected component, of the whole
foreground and/or of given classes. The choice is made on cross-validation by
``toolkit select`` and applied by ``toolkit predict --postprocess`` and the container.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from toolkit.errors import ToolkitError
from toolkit.io.atomic import write_json
from toolkit.io.json_files import float_or_nan, read_json


@dataclass
class Postprocessing:
    largest_component_foreground: bool = False
    largest_component_classes: list[int] = field(default_factory=list)
    # regions (their label values), for models trained on regions; applied after the classes
    largest_component_regions: list[list[int]] = field(default_factory=list)

    @property
    def is_identity(self) -> bool:
        return (
            not self.largest_component_foreground
            and not self.largest_component_classes
            and not self.largest_component_regions
        )

    def to_dict(self) -> dict:
        data = asdict(self)
        if not self.largest_component_regions:  # a class model's file stays as it always was
            del data["largest_component_regions"]
        return data

    @classmethod
    def from_dict(cls, data: dict, source: str | Path | None = None) -> Postprocessing:
        known = {
            "largest_component_foreground",
            "largest_component_classes",
            "largest_component_regions",
        }
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
        regions = data.get("largest_component_regions", [])
        if not isinstance(regions, list) or not all(
            isinstance(r, list) and r and all(isinstance(v, int) and v > 0 for v in r)
            for r in regions
        ):
            raise ToolkitError(
                "largest_component_regions must be a list of regions, each a list of positive label values",
                source,
            )
        return cls(
            bool(data.get("largest_component_foreground", False)),
            sorted(classes),
            [list(r) for r in regions],
        )

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Postprocessing:
        data = read_json(path, what="postprocessing file")
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
    for region in pp.largest_component_regions:
        mask = np.isin(seg, region)
        if mask.any():
            seg[mask & ~largest_component_mask(mask)] = 0
    return seg


@dataclass
class PostprocessingStep:
    """One tried step and the cross-validation Dice before and after it."""

    description: str
    label: int | None  # None: the whole foreground
    accepted: bool
    mean_dice_before: float
    mean_dice_after: float
    class_dice_before: dict[int, float] = field(default_factory=dict)
    class_dice_after: dict[int, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "description": self.description,
            "label": self.label,
            "accepted": self.accepted,
            "mean_dice_before": self.mean_dice_before,
            "mean_dice_after": self.mean_dice_after,
            "class_dice_before": {str(k): v for k, v in self.class_dice_before.items()},
            "class_dice_after": {str(k): v for k, v in self.class_dice_after.items()},
        }

    @classmethod
    def from_dict(cls, data: dict) -> PostprocessingStep:
        return cls(
            description=str(data["description"]),
            label=None if data["label"] is None else int(data["label"]),
            accepted=bool(data["accepted"]),
            mean_dice_before=float_or_nan(data["mean_dice_before"]),
            mean_dice_after=float_or_nan(data["mean_dice_after"]),
            class_dice_before={
                int(k): float_or_nan(v) for k, v in data["class_dice_before"].items()
            },
            class_dice_after={int(k): float_or_nan(v) for k, v in data["class_dice_after"].items()},
        )
