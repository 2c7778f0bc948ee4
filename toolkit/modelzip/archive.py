"""The model archive's format: member names, the manifest, checksums, reading and writing.

::

    model.zip
        manifest.json                      format, versions, configurations, folds, sha256 of
                                           every other member
        plans.json, dataset.json           the dataset's plans and the model's dataset.json
        postprocessing.json                what `toolkit select` chose (or none)
        selection.json                     the source's selection, when the export used it
        models/<config>/plans.json, dataset.json, fold_<k>/checkpoint_final.pt
                                           network weights only (no optimizer, no RNG state)
                                           or, with `--format onnx`, fold_<k>/network.onnx
                                           and network.json (toolkit.core.onnx_network)
        example/imagesTr/CASE_0000.nii.gz, example/labelsTr/CASE.nii.gz
                                           one case, so the receiver can test-run an export

Members are written in a fixed order with a fixed time stamp: the same model gives the same
bytes. Nothing in an archive is unpickled (checkpoints load with ``weights_only=True``).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from toolkit.errors import ToolkitError
from toolkit.io.atomic import write_with

ARCHIVE_FORMAT = "toolkit-model"
ARCHIVE_FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PLANS = "plans.json"
DATASET_JSON = "dataset.json"
POSTPROCESSING = "postprocessing.json"
SELECTION = "selection.json"
MODELS = "models"
EXAMPLE = "example"
# how the folds' networks are stored: torch checkpoints, or ONNX graphs (export-model --format)
NETWORK_FORMATS = ("torch", "onnx")
ZIP_TIME = (1980, 1, 1, 0, 0, 0)
# a member name: relative, forward slashes, no `..`, no hidden parts
_MEMBER_RE = re.compile(r"^(?!/)(?:[A-Za-z0-9_][A-Za-z0-9_.+-]*/)*[A-Za-z0-9_][A-Za-z0-9_.+-]*$")


@dataclass
class Manifest:
    """``manifest.json``: what the archive holds and how to check it."""

    dataset: str
    configurations: list[str]  # what predicts (an ensemble when several)
    model_configurations: list[str]  # those plus a cascade's first stages
    folds: list[int]
    toolkit_version: str
    torch_version: str
    example_case: str | None = None
    members: dict[str, str] = field(default_factory=dict)  # name -> sha256
    network_format: str = NETWORK_FORMATS[0]  # one of NETWORK_FORMATS
    format: str = ARCHIVE_FORMAT
    format_version: int = ARCHIVE_FORMAT_VERSION

    def to_json(self) -> bytes:
        return (json.dumps(asdict(self), indent=2) + "\n").encode("utf-8")

    @classmethod
    def from_json(cls, data: Any, source: Path) -> Manifest:
        if not isinstance(data, dict) or data.get("format") != ARCHIVE_FORMAT:
            raise ToolkitError(f"is not a toolkit model archive ({MANIFEST} is foreign)", source)
        if data.get("format_version") != ARCHIVE_FORMAT_VERSION:
            raise ToolkitError(
                f"model archive format {data.get('format_version')} is not supported "
                f"(expected {ARCHIVE_FORMAT_VERSION}): update the toolkit",
                source,
            )
        try:
            manifest = cls(
                dataset=str(data["dataset"]),
                configurations=[str(c) for c in data["configurations"]],
                model_configurations=[str(c) for c in data["model_configurations"]],
                folds=[int(f) for f in data["folds"]],
                toolkit_version=str(data["toolkit_version"]),
                torch_version=str(data["torch_version"]),
                example_case=None
                if data.get("example_case") is None
                else str(data["example_case"]),
                members={str(k): str(v) for k, v in data["members"].items()},
                network_format=str(data.get("network_format", NETWORK_FORMATS[0])),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ToolkitError(
                f"{MANIFEST} is incomplete ({type(exc).__name__}: {exc})", source
            ) from None
        if not manifest.configurations or not manifest.folds:
            raise ToolkitError(f"{MANIFEST} names no configuration or no fold", source)
        if manifest.network_format not in NETWORK_FORMATS:
            raise ToolkitError(
                f"{MANIFEST} names network_format {manifest.network_format!r}, not one of "
                f"{', '.join(NETWORK_FORMATS)}: update the toolkit",
                source,
            )
        return manifest


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def model_member(config: str, name: str) -> str:
    return f"{MODELS}/{config}/{name}"


def fold_member(config: str, fold: int, name: str) -> str:
    return f"{MODELS}/{config}/fold_{fold}/{name}"


def check_member_name(name: str, source: Path) -> str:
    if not _MEMBER_RE.match(name) or ".." in name.split("/"):
        raise ToolkitError(f"holds an unsafe member name {name!r}", source)
    return name


def write_archive(target: Path, members: Iterable[tuple[str, bytes]], manifest: Manifest) -> None:
    """The zip, written atomically: the manifest (with every member's sha256) first."""
    members = list(members)
    manifest.members = {name: sha256(data) for name, data in members}

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w") as archive:
            for name, data in [(MANIFEST, manifest.to_json()), *members]:
                info = zipfile.ZipInfo(name, date_time=ZIP_TIME)
                info.external_attr = 0o644 << 16
                # weights barely compress: stored, the rest deflated
                compress = name.endswith(".pt") or name.endswith(".gz")
                info.compress_type = zipfile.ZIP_STORED if compress else zipfile.ZIP_DEFLATED
                archive.writestr(info, data)

    write_with(target, write)


class ArchiveReader:
    """An open zip whose members are read with their checksums checked."""

    def __init__(self, path: Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise ToolkitError("model archive not found", self.path)
        try:
            self.zip = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise ToolkitError(f"is not a zip archive ({exc})", self.path) from None
        self.names = [n for n in self.zip.namelist() if not n.endswith("/")]

    def __enter__(self) -> ArchiveReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.zip.close()

    def read(self, name: str) -> bytes:
        try:
            return self.zip.read(name)
        except KeyError:
            raise ToolkitError(f"is incomplete: member {name} is missing", self.path) from None
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:  # CRC, truncation
            raise ToolkitError(f"member {name} is damaged ({exc})", self.path) from None

    def manifest(self) -> Manifest:
        try:
            data = json.loads(self.read(MANIFEST).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ToolkitError(f"{MANIFEST} is not valid JSON ({exc})", self.path) from None
        return Manifest.from_json(data, self.path)

    def verified(self, manifest: Manifest) -> dict[str, bytes]:
        """Every member the manifest lists, checked against its sha256; nothing else allowed."""
        extra = sorted(set(self.names) - set(manifest.members) - {MANIFEST})
        if extra:
            raise ToolkitError(f"holds members the manifest does not list: {extra[:3]}", self.path)
        contents = {}
        for name, digest in manifest.members.items():
            check_member_name(name, self.path)
            data = self.read(name)
            if sha256(data) != digest:
                raise ToolkitError(
                    f"member {name} does not match its sha256 in {MANIFEST}", self.path
                )
            contents[name] = data
        return contents


def bytes_of(writer) -> bytes:
    """What ``writer(file object)`` writes, as bytes."""
    buffer = io.BytesIO()
    writer(buffer)
    return buffer.getvalue()
