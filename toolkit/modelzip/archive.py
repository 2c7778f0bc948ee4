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

Members stream: written from files and read to files :data:`CHUNK_BYTES` at a time, their
sha256 computed on the way, so that no member is ever wholly in memory (JSON members, at most
:data:`MAX_JSON_BYTES`, are read whole). Before anything is read, the archive's members are
checked against :data:`MAX_TOTAL_BYTES` (all members uncompressed) and
:data:`MAX_COMPRESSION_RATIO` (one member of more than :data:`RATIO_FREE_BYTES`): a small zip
that would unpack into gigabytes is refused in one line. Member names follow one rule
(:func:`check_member_name`) for the writer and the reader, so ``export-model`` never writes
what ``import-model`` refuses.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from toolkit.errors import ToolkitError
from toolkit.io.atomic import atomic_path, write_with
from toolkit.io.confine import name_problem, plain_name
from toolkit.workspace import (
    CHECKPOINT_FINAL,
    MODEL_DATASET_JSON,
    MODEL_PLANS,
    NETWORK_JSON,
    NETWORK_ONNX,
)

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
# streaming and the limits of what an archive may unpack into
CHUNK_BYTES = 1 << 20  # what is in memory of a member at once
MAX_TOTAL_BYTES = 32 << 30  # every member uncompressed, together (a multi-fold ResEnc XL fits)
MAX_COMPRESSION_RATIO = 200  # uncompressed / compressed of one member (weights barely compress)
RATIO_FREE_BYTES = 1 << 20  # a member this small is never refused for its ratio
MAX_JSON_BYTES = 64 << 20  # a JSON member, read whole
_SHA256_HEX = frozenset("0123456789abcdef")


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
                folds=[_fold_number(f) for f in data["folds"]],
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
        check_manifest(manifest, source)
        return manifest


def _fold_number(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"a fold is a number 0, 1, ..., not {value!r}")
    return value


def check_manifest(manifest: Manifest, source: Path) -> None:
    """The manifest names what an install needs, in names that stay inside their folders:
    plans, dataset.json and postprocessing; per model configuration its plans, dataset.json
    and every fold's weights; predicting configurations among the model configurations."""
    what = f"{MANIFEST}'s configuration"
    for config in [*manifest.configurations, *manifest.model_configurations]:
        plain_name(config, what=what, source=source)
    outside = [c for c in manifest.configurations if c not in manifest.model_configurations]
    if outside:
        raise ToolkitError(
            f"{MANIFEST} names configuration(s) {outside} without their model", source
        )
    if manifest.example_case is not None:
        plain_name(manifest.example_case, what=f"{MANIFEST}'s example case", source=source)
    for name, digest in manifest.members.items():
        check_member_name(name, source)
        if len(digest) != 64 or not set(digest) <= _SHA256_HEX:
            raise ToolkitError(f"{MANIFEST} gives member {name} no sha256 digest", source)
    missing = [m for m in required_members(manifest) if m not in manifest.members]
    if missing:
        shown = ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else "")
        raise ToolkitError(
            f"{MANIFEST} lacks what an install needs: {shown} ({len(missing)} member(s))", source
        )


def required_members(manifest: Manifest) -> list[str]:
    """The members without which an installed model cannot predict or export."""
    needed = [PLANS, DATASET_JSON, POSTPROCESSING]
    for config in manifest.model_configurations:
        needed += [model_member(config, MODEL_PLANS), model_member(config, MODEL_DATASET_JSON)]
        for fold in manifest.folds:
            if manifest.network_format == "onnx":
                needed += [
                    fold_member(config, fold, NETWORK_ONNX),
                    fold_member(config, fold, NETWORK_JSON),
                ]
            else:
                needed.append(fold_member(config, fold, CHECKPOINT_FINAL))
    return needed


def model_member(config: str, name: str) -> str:
    return f"{MODELS}/{config}/{name}"


def fold_member(config: str, fold: int, name: str) -> str:
    return f"{MODELS}/{config}/fold_{fold}/{name}"


def member_name_problem(name: object) -> str | None:
    """Why ``name`` may not name a member (``None``: it may): relative, forward slashes, each
    part a plain name (no ``..``, not hidden, no control character, no backslash)."""
    if not isinstance(name, str) or not name:
        return "is empty"
    for part in name.split("/"):
        problem = name_problem(part)
        if problem is not None:
            return f"has a part {part!r} that {problem}"
    return None


def check_member_name(name: str, source: Path) -> str:
    """The one rule for member names, of the writer and of the reader."""
    problem = member_name_problem(name)
    if problem is not None:
        raise ToolkitError(f"holds an unsafe member name {name!r} ({problem})", source)
    return name


@dataclass(frozen=True)
class Member:
    """One member to write: its name and its content (a file streamed, or a few bytes)."""

    name: str
    source: Path | bytes


def _open_source(source: Path | bytes) -> BinaryIO:
    return io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")  # noqa: SIM115


Sink = Callable[[bytes], Any]  # a file's write, a hash's update


def _copy(reader: BinaryIO, sinks: Sequence[Sink], limit: int | None = None) -> int:
    """Copy ``reader`` into every sink a chunk at a time; the bytes copied. With ``limit``:
    stops with ``OverflowError`` past that many bytes."""
    total = 0
    while chunk := reader.read(CHUNK_BYTES):
        total += len(chunk)
        if limit is not None and total > limit:
            raise OverflowError(total)
        for sink in sinks:
            sink(chunk)
    return total


def source_digest(source: Path | bytes) -> tuple[str, int]:
    """sha256 and size of a member's content, read a chunk at a time."""
    digest = hashlib.sha256()
    with _open_source(source) as reader:
        size = _copy(reader, [digest.update])
    return digest.hexdigest(), size


def write_archive(target: Path, members: Sequence[Member], manifest: Manifest) -> None:
    """The zip, written atomically: the manifest (with every member's sha256) first, then
    every member streamed from its source."""
    for member in members:  # the reader's rule: never write what an import refuses
        problem = member_name_problem(member.name)
        if problem is not None:
            raise ToolkitError(
                f"cannot be written: unsafe member name {member.name!r} ({problem})", target
            )
    names = [m.name for m in members]
    if len(set(names)) != len(names) or MANIFEST in names:
        raise ToolkitError(f"two members would share a name ({sorted(names)})", target)
    sizes = {}
    manifest.members = {}
    for member in members:
        manifest.members[member.name], sizes[member.name] = source_digest(member.source)
    check_manifest(manifest, target)
    manifest_member = Member(MANIFEST, manifest.to_json())
    sizes[MANIFEST] = len(manifest_member.source)  # type: ignore[arg-type]

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w") as archive:
            for member in [manifest_member, *members]:
                info = zipfile.ZipInfo(member.name, date_time=ZIP_TIME)
                info.external_attr = 0o644 << 16
                # weights barely compress: stored, the rest deflated
                stored = member.name.endswith(".pt") or member.name.endswith(".gz")
                info.compress_type = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
                info.file_size = sizes[member.name]  # as writestr sets it: the same bytes
                with _open_source(member.source) as reader, archive.open(info, "w") as out:
                    _copy(reader, [out.write])

    write_with(target, write)


class ArchiveReader:
    """An open zip whose members are checked (names, sizes, checksums) as they are read."""

    def __init__(self, path: Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise ToolkitError("model archive not found", self.path)
        try:
            self.zip = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise ToolkitError(f"is not a zip archive ({exc})", self.path) from None
        self.infos = {i.filename: i for i in self.zip.infolist() if not i.is_dir()}
        self.names = list(self.infos)
        try:
            self._check_sizes()
        except ToolkitError:
            self.zip.close()
            raise

    def _check_sizes(self) -> None:
        listed = [i.filename for i in self.zip.infolist() if not i.is_dir()]
        if len(listed) != len(self.infos):
            twice = sorted({n for n in listed if listed.count(n) > 1})
            raise ToolkitError(f"holds member(s) {twice[:3]} more than once", self.path)
        total = sum(i.file_size for i in self.infos.values())
        if total > MAX_TOTAL_BYTES:
            raise ToolkitError(
                f"would unpack into {total / 2**30:.1f} GiB, more than the "
                f"{MAX_TOTAL_BYTES / 2**30:.0f} GiB a model archive may hold",
                self.path,
            )
        for info in self.infos.values():
            ratio = info.file_size / max(info.compress_size, 1)
            if info.file_size > RATIO_FREE_BYTES and ratio > MAX_COMPRESSION_RATIO:
                raise ToolkitError(
                    f"member {info.filename} would unpack {ratio:.0f} times its compressed size "
                    f"(at most {MAX_COMPRESSION_RATIO}): refused as a zip bomb",
                    self.path,
                )

    def __enter__(self) -> ArchiveReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.zip.close()

    def _info(self, name: str) -> zipfile.ZipInfo:
        info = self.infos.get(name)
        if info is None:
            raise ToolkitError(f"is incomplete: member {name} is missing", self.path)
        return info

    def _stream(self, name: str, sinks: Sequence[Sink], digest: str | None) -> None:
        """Member ``name`` into ``sinks``, its sha256 checked against ``digest``."""
        info = self._info(name)
        sha = hashlib.sha256()
        try:
            with self.zip.open(info) as reader:
                _copy(reader, [*sinks, sha.update], limit=info.file_size)
        except OverflowError:
            raise ToolkitError(f"member {name} is longer than it says", self.path) from None
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError) as exc:
            # CRC, truncation, encryption, unsupported compression
            raise ToolkitError(f"member {name} is damaged ({exc})", self.path) from None
        if digest is not None and sha.hexdigest() != digest:
            raise ToolkitError(f"member {name} does not match its sha256 in {MANIFEST}", self.path)

    def read(self, name: str, digest: str | None = None) -> bytes:
        """A small member (JSON) whole, at most :data:`MAX_JSON_BYTES`."""
        if self._info(name).file_size > MAX_JSON_BYTES:
            raise ToolkitError(
                f"member {name} is {self._info(name).file_size} bytes, more than the "
                f"{MAX_JSON_BYTES} a JSON member may have",
                self.path,
            )
        buffer = bytearray()
        self._stream(name, [buffer.extend], digest)
        return bytes(buffer)

    def copy(self, name: str, target: Path, digest: str | None = None) -> None:
        """Member ``name`` written to ``target`` (atomically, a chunk at a time); a member
        whose sha256 is not ``digest`` leaves nothing at ``target``."""
        with atomic_path(target) as tmp, open(tmp, "wb") as out:
            self._stream(name, [out.write], digest)

    def manifest(self) -> Manifest:
        try:
            data = json.loads(self.read(MANIFEST).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ToolkitError(f"{MANIFEST} is not valid JSON ({exc})", self.path) from None
        return Manifest.from_json(data, self.path)

    def check_listing(self, manifest: Manifest) -> None:
        """The zip holds every member the manifest lists, and nothing else."""
        extra = sorted(set(self.names) - set(manifest.members) - {MANIFEST})
        if extra:
            raise ToolkitError(f"holds members the manifest does not list: {extra[:3]}", self.path)
        for name in manifest.members:
            self._info(name)
