"""``fingerprint.json``: what the fingerprint stage measured and planning reads.

Written by :mod:`toolkit.fingerprint.stage`; the arrays are in SimpleITK's ``(z, y, x)`` order.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from toolkit.io.atomic import write_json
from toolkit.io.json_files import read_contract
from toolkit.workspace import DatasetPaths

FINGERPRINT_FORMAT_VERSION = 1


@dataclass
class IntensityStats:
    """Foreground intensities of one channel (label > 0), every case weighted equally."""

    mean: float
    std: float
    median: float
    min: float
    max: float
    percentile_00_5: float
    percentile_99_5: float
    num_samples: int = 0


@dataclass
class CaseFingerprint:
    case: str
    spacing: list[float]  # (z, y, x); a 2D image's slice axis is 999
    shape_before_cropping: list[int]  # (z, y, x)
    crop_bbox: list[list[int]]  # half-open [[z0, z1], [y0, y1], [x0, x1]]
    shape_after_cropping: list[int]
    label_voxels: dict[str, int] = field(default_factory=dict)  # label value -> voxels

    @property
    def relative_size_after_cropping(self) -> float:
        return float(
            np.prod(self.shape_after_cropping, dtype=np.float64)
            / np.prod(self.shape_before_cropping, dtype=np.float64)
        )


@dataclass
class Fingerprint:
    dataset_name: str
    channel_names: dict[str, str]
    labels: dict[str, int | list[int]]  # as dataset.json declares them (regions: lists)
    num_training: int
    cases: list[CaseFingerprint]
    intensity: list[IntensityStats]  # one per channel
    median_relative_size_after_cropping: float
    sampling: dict = field(default_factory=dict)  # budget and seed used for the intensities
    format_version: int = FINGERPRINT_FORMAT_VERSION
    regions_class_order: list[int] | None = None

    @property
    def spacings(self) -> list[list[float]]:
        return [c.spacing for c in self.cases]

    @property
    def shapes_after_crop(self) -> list[list[int]]:
        return [c.shape_after_cropping for c in self.cases]

    @property
    def is_2d(self) -> bool:
        return all(c.shape_before_cropping[0] == 1 for c in self.cases)

    def label_voxels(self) -> dict[str, int]:
        """Voxels per label over all cases."""
        total: dict[str, int] = {}
        for c in self.cases:
            for k, v in c.label_voxels.items():
                total[k] = total.get(k, 0) + v
        return total

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Fingerprint:
        return cls(
            dataset_name=d["dataset_name"],
            channel_names={str(k): str(v) for k, v in d["channel_names"].items()},
            labels={
                str(k): [int(x) for x in v] if isinstance(v, list) else int(v)
                for k, v in d["labels"].items()
            },
            regions_class_order=(
                None
                if d.get("regions_class_order") is None
                else [int(v) for v in d["regions_class_order"]]
            ),
            num_training=int(d["num_training"]),
            cases=[CaseFingerprint(**c) for c in d["cases"]],
            intensity=[IntensityStats(**s) for s in d["intensity"]],
            median_relative_size_after_cropping=float(d["median_relative_size_after_cropping"]),
            sampling=dict(d.get("sampling", {})),
            format_version=int(d.get("format_version", 0)),
        )

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Fingerprint:
        return read_contract(
            path,
            cls.from_dict,
            what="fingerprint",
            producer="toolkit fingerprint",
            version_key="format_version",
            version=FINGERPRINT_FORMAT_VERSION,
        )


def load_fingerprint(paths: DatasetPaths) -> Fingerprint:
    paths.require(paths.fingerprint_json, f"toolkit fingerprint {paths.name}")
    return Fingerprint.load(paths.fingerprint_json)
