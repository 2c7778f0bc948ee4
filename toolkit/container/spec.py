"""The two small JSON files that tell the container's entrypoint what to do.

* ``algorithm.json`` (:class:`AlgorithmSpec`), part of the image: the platform interfaces
  (one input slug per channel, in channel order, and the output slug), the labels, the
  device the image was built for.
* ``ensemble.json`` (:class:`EnsembleSpec`), part of the model (baked into the image or in
  the separate model tarball): the configurations whose probabilities are averaged, the
  folds of each, and the postprocessing. A new model tarball can change it without a
  rebuild.

Both are plain data with checked fields; errors name the file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit.core.constants import FOLD_ALL
from toolkit.core.postprocessing import Postprocessing
from toolkit.errors import ToolkitError
from toolkit.io.atomic import write_json
from toolkit.io.json_files import read_json

SPEC_FORMAT_VERSION = 1
DEVICES = ("cpu", "cuda")
# Grand Challenge interface slugs: lower-case words joined by hyphens
_SLUG_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")


def check_slug(slug: str, option: str) -> str:
    if not _SLUG_RE.match(slug):
        raise ToolkitError(
            f"{option} {slug!r} is not an interface slug (lower-case letters, digits and single hyphens, e.g. 't2-weighted-mri')"
        )
    return slug


def slugify(text: str) -> str:
    """``"T2 FLAIR"`` -> ``"t2-flair"``."""
    return "-".join(w for w in re.split(r"[^a-z0-9]+", text.lower()) if w) or "image"


def default_input_slugs(channel_names: list[str]) -> list[str]:
    """One slug per channel from its name (``CT`` -> ``ct-image``), made unique."""
    slugs: list[str] = []
    for name in channel_names:
        slug = f"{slugify(name)}-image"
        candidate, n = slug, 2
        while candidate in slugs:
            candidate, n = f"{slug}-{n}", n + 1
        slugs.append(candidate)
    return slugs


def _read_json(path: Path, what: str) -> dict[str, Any]:
    return read_json(path, what=what, version_key="format_version", version=SPEC_FORMAT_VERSION)


def _require(
    data: dict[str, Any], key: str, kind: type | tuple[type, ...], path: Path | None
) -> Any:
    value = data.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ToolkitError(f"{key!r} is missing or of the wrong type", path)
    return value


@dataclass(frozen=True)
class AlgorithmSpec:
    dataset_name: str
    input_slugs: list[str]  # one per channel, channel order
    output_slug: str
    channel_names: list[str]
    labels: dict[str, int]  # name -> value, background included
    device: str = "cpu"
    format_version: int = SPEC_FORMAT_VERSION

    def __post_init__(self) -> None:
        if len(self.input_slugs) != len(self.channel_names):
            raise ToolkitError(
                f"{len(self.input_slugs)} input slug(s) {self.input_slugs} for {len(self.channel_names)} channel(s) "
                f"{self.channel_names}: give one --input-slug per channel, in channel order"
            )
        for slug in self.input_slugs:
            check_slug(slug, "--input-slug")
        check_slug(self.output_slug, "--output-slug")
        if len(set(self.input_slugs)) != len(self.input_slugs):
            raise ToolkitError(f"input slugs must differ from each other, not {self.input_slugs}")
        if self.output_slug in self.input_slugs:
            raise ToolkitError(f"the output slug {self.output_slug!r} is also an input slug")
        if self.device not in DEVICES:
            raise ToolkitError(f"device must be one of {', '.join(DEVICES)}, not {self.device!r}")

    @property
    def label_values(self) -> list[int]:
        return sorted(set(self.labels.values()))

    @property
    def output_relative_path(self) -> str:
        return f"images/{self.output_slug}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "dataset_name": self.dataset_name,
            "input_slugs": list(self.input_slugs),
            "output_slug": self.output_slug,
            "channel_names": list(self.channel_names),
            "labels": dict(self.labels),
            "device": self.device,
        }

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> AlgorithmSpec:
        path = Path(path)
        data = _read_json(path, "algorithm.json")
        labels = _require(data, "labels", dict, path)
        return cls(
            dataset_name=str(data.get("dataset_name", "")),
            input_slugs=[str(s) for s in _require(data, "input_slugs", list, path)],
            output_slug=str(_require(data, "output_slug", str, path)),
            channel_names=[str(s) for s in _require(data, "channel_names", list, path)],
            labels={str(k): int(v) for k, v in labels.items()},
            device=str(data.get("device", "cpu")),
        )


@dataclass(frozen=True)
class EnsembleSpec:
    """What to run: configurations (probabilities averaged), their folds, postprocessing.

    Every configuration uses the same folds (the selection's), a cascade's first stage too.
    """

    configurations: list[str]
    folds: list[
        int | str
    ]  # folds whose logits are averaged, in every configuration ("all": fold_all)
    postprocessing: Postprocessing = field(default_factory=Postprocessing)
    # configurations that run first for a cascade (their models are shipped too)
    previous_stages: dict[str, str] = field(default_factory=dict)
    use_mirroring: bool = True
    format_version: int = SPEC_FORMAT_VERSION

    def __post_init__(self) -> None:
        if not self.configurations:
            raise ToolkitError("an ensemble needs at least one configuration")
        if not self.folds:
            raise ToolkitError("an ensemble needs at least one fold")

    @property
    def model_configurations(self) -> list[str]:
        """Every configuration whose model the container needs (cascade stages first)."""
        needed: list[str] = []
        for config in self.configurations:
            chain = [config]
            while chain[-1] in self.previous_stages:
                chain.append(self.previous_stages[chain[-1]])
            for c in reversed(chain):
                if c not in needed:
                    needed.append(c)
        return needed

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "configurations": list(self.configurations),
            "folds": list(self.folds),
            "postprocessing": self.postprocessing.to_dict(),
            "previous_stages": dict(self.previous_stages),
            "use_mirroring": self.use_mirroring,
        }

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> EnsembleSpec:
        path = Path(path)
        data = _read_json(path, "ensemble.json")
        folds = _require(data, "folds", list, path)
        if not all(
            (isinstance(f, int) and not isinstance(f, bool)) or f == FOLD_ALL for f in folds
        ):
            raise ToolkitError(f"'folds' must be a list of fold numbers or {FOLD_ALL!r}", path)
        return cls(
            configurations=[str(c) for c in _require(data, "configurations", list, path)],
            folds=list(folds),
            postprocessing=Postprocessing.from_dict(data.get("postprocessing") or {}, path),
            previous_stages={
                str(k): str(v) for k, v in (data.get("previous_stages") or {}).items()
            },
            use_mirroring=bool(data.get("use_mirroring", True)),
        )
