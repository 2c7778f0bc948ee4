"""The two small JSON files that tell the container's entrypoint what to do.

* ``algorithm.json`` (:class:`AlgorithmSpec`), part of the image: the platform interfaces
  it serves (:mod:`~toolkit.container.interfaces`, each image input bound to a channel), the
  channels, the labels, the device the image was built for and the runtime that runs its
  networks (torch, or openvino / onnxruntime in a lean image without torch).
* ``ensemble.json`` (:class:`EnsembleSpec`), part of the model (baked into the image or in
  the separate model tarball): the configurations whose probabilities are averaged, the
  folds of each, and the postprocessing. A new model tarball can change it without a
  rebuild.

Both are plain data with checked fields; errors name the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit.container.interfaces import (
    Interface,
    check_slug,
    default_input_slugs,
    parse_interfaces,
    slugify,
)
from toolkit.core.constants import FOLD_ALL
from toolkit.core.postprocessing import Postprocessing
from toolkit.errors import ToolkitError
from toolkit.io.atomic import write_json
from toolkit.io.confine import plain_name
from toolkit.io.json_files import read_json

SPEC_FORMAT_VERSION = 1  # ensemble.json (also inside model tarballs)
ALGORITHM_FORMAT_VERSION = 2  # algorithm.json: 2 holds the platform's interfaces
DEVICES = ("cpu", "cuda")
# what runs the networks in the image (toolkit.inference.runtimes.BACKENDS)
RUNTIMES = ("torch", "openvino", "onnxruntime")
# the runtime of a CPU image when --runtime is not given (default_runtime)
DEFAULT_CPU_RUNTIME = "openvino"


__all__ = [
    "AlgorithmSpec",
    "EnsembleSpec",
    "check_slug",
    "default_input_slugs",
    "default_runtime",
    "slugify",
]


def default_runtime(device: str) -> str:
    """The image's runtime when none is asked for: the lean OpenVINO image on the CPU (equal
    labels, faster per case and a third of the torch image's size:
    ``bench/results/predict_backends.md``); torch for a CUDA image, which the lean runtimes
    do not serve."""
    return "torch" if device == "cuda" else DEFAULT_CPU_RUNTIME


def _read_json(path: Path, what: str, version: int = SPEC_FORMAT_VERSION) -> dict[str, Any]:
    return read_json(path, what=what, version_key="format_version", version=version)


def _require(
    data: dict[str, Any], key: str, kind: type | tuple[type, ...], path: Path | None
) -> Any:
    value = data.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ToolkitError(f"{key!r} is missing or of the wrong type", path)
    return value


@dataclass(frozen=True)
class AlgorithmSpec:
    """The image's ``algorithm.json``: the model's channels and labels, the device, and the
    interfaces it serves (bound: every image input names its channel)."""

    dataset_name: str
    channel_names: list[str]
    labels: dict[str, int]  # name -> value, background included
    interfaces: list[Interface]
    device: str = "cpu"
    runtime: str = RUNTIMES[0]
    format_version: int = ALGORITHM_FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ToolkitError(f"device must be one of {', '.join(DEVICES)}, not {self.device!r}")
        if self.runtime not in RUNTIMES:
            raise ToolkitError(
                f"runtime must be one of {', '.join(RUNTIMES)}, not {self.runtime!r}"
            )
        if self.runtime != "torch" and self.device != "cpu":
            raise ToolkitError(f"the {self.runtime} runtime runs on the CPU: use --device cpu")
        if not self.interfaces:
            raise ToolkitError("an algorithm needs at least one interface")

    @property
    def label_values(self) -> list[int]:
        return sorted(set(self.labels.values()))

    @property
    def input_slugs(self) -> list[str]:
        """The first interface's image inputs, in channel order."""
        return [s.slug for s in self.interfaces[0].channel_inputs]

    @property
    def output_slug(self) -> str:
        return self.interfaces[0].label_outputs[0].slug

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "dataset_name": self.dataset_name,
            "channel_names": list(self.channel_names),
            "labels": dict(self.labels),
            "device": self.device,
            "runtime": self.runtime,
            "interfaces": [i.to_dict() for i in self.interfaces],
        }

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> AlgorithmSpec:
        path = Path(path)
        data = _read_json(path, "algorithm.json", ALGORITHM_FORMAT_VERSION)
        labels = _require(data, "labels", dict, path)
        interfaces = parse_interfaces(_require(data, "interfaces", list, path), path)
        for k, interface in enumerate(interfaces):
            if not interface.channel_inputs:
                raise ToolkitError(f"interface {k + 1} maps no input socket to a channel", path)
        return cls(
            dataset_name=str(data.get("dataset_name", "")),
            channel_names=[str(s) for s in _require(data, "channel_names", list, path)],
            labels={str(k): int(v) for k, v in labels.items()},
            interfaces=interfaces,
            device=str(data.get("device", "cpu")),
            runtime=str(data.get("runtime", RUNTIMES[0])),
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
        configurations = [str(c) for c in _require(data, "configurations", list, path)]
        previous_stages = {str(k): str(v) for k, v in (data.get("previous_stages") or {}).items()}
        for config in [*configurations, *previous_stages.values()]:  # folders models/<config>
            plain_name(config, what="configuration", source=path)
        return cls(
            configurations=configurations,
            folds=list(folds),
            postprocessing=Postprocessing.from_dict(data.get("postprocessing") or {}, path),
            previous_stages=previous_stages,
            use_mirroring=bool(data.get("use_mirroring", True)),
        )
