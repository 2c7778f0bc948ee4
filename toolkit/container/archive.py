"""Check a saved image archive the way Grand Challenge checks an upload.

The platform accepts a ``docker save`` archive (``.tar``, ``.tar.gz`` or ``.tar.xz``) whose
``manifest.json`` holds exactly one image, whose image configuration sets ``User`` to
someone other than root, and whose architecture is ``amd64``. The archive is read in one
sequential pass (no temporary extraction); only its JSON members are kept in memory.
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit.errors import ToolkitError

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz")
MANIFEST = "manifest.json"
REQUIRED_ARCHITECTURE = "amd64"
ROOT_USERS = ("root", "0")
_MAX_JSON_MEMBER = 16 * 1024 * 1024


@dataclass(frozen=True)
class ArchiveReport:
    path: Path
    size_bytes: int
    images: int
    tags: list[str] = field(default_factory=list)
    user: str = ""
    architecture: str = ""
    os: str = ""
    layers: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "size_bytes": self.size_bytes,
            "images": self.images,
            "tags": list(self.tags),
            "user": self.user,
            "architecture": self.architecture,
            "os": self.os,
            "layers": self.layers,
            "problems": list(self.problems),
            "ok": self.ok,
        }


def is_root_user(user: str) -> bool:
    """``""``, ``root``, ``0``, ``root:root``, ``0:0`` ... run as root; ``1000``, ``algorithm`` do not."""
    name = user.split(":", 1)[0].strip()
    return name == "" or name in ROOT_USERS


def check_manifest_and_config(
    manifest: Any, configs: dict[str, Any]
) -> tuple[list[str], dict[str, Any]]:
    """The platform's rules on the parsed documents (pure): problems, and facts found."""
    problems: list[str] = []
    facts: dict[str, Any] = {
        "images": 0,
        "tags": [],
        "user": "",
        "architecture": "",
        "os": "",
        "layers": 0,
    }
    if not isinstance(manifest, list):
        return [f"{MANIFEST} must be a list of images"], facts
    facts["images"] = len(manifest)
    if len(manifest) != 1:
        problems.append(
            f"{MANIFEST} holds {len(manifest)} images; the platform accepts exactly one"
        )
        if not manifest:
            return problems, facts
    entry = manifest[0]
    if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str):
        return problems + [f"{MANIFEST}'s image has no 'Config' entry"], facts
    facts["tags"] = list(entry.get("RepoTags") or [])
    facts["layers"] = len(entry.get("Layers") or [])
    config = configs.get(entry["Config"])
    if not isinstance(config, dict):
        return problems + [
            f"the image configuration {entry['Config']} is missing from the archive"
        ], facts
    runtime = config.get("config") or {}
    facts["user"] = str(runtime.get("User") or "")
    facts["architecture"] = str(config.get("architecture") or "")
    facts["os"] = str(config.get("os") or "")
    if is_root_user(facts["user"]):
        shown = facts["user"] or "not set"
        problems.append(
            f"the image's User is {shown}: the platform refuses images that run as root (set USER in the Dockerfile)"
        )
    if facts["architecture"] != REQUIRED_ARCHITECTURE:
        problems.append(
            f"architecture is {facts['architecture'] or 'not set'}; the platform runs {REQUIRED_ARCHITECTURE} only"
        )
    return problems, facts


def read_archive_documents(path: Path) -> tuple[Any, dict[str, Any]]:
    """``manifest.json`` and every other JSON member (image configurations) of an archive."""
    manifest: Any = None
    configs: dict[str, Any] = {}
    try:
        with tarfile.open(path, mode="r|*") as archive:
            for member in archive:
                if (
                    not member.isfile()
                    or not member.name.endswith(".json")
                    or member.size > _MAX_JSON_MEMBER
                ):
                    continue
                stream = archive.extractfile(member)
                if stream is None:
                    continue
                try:
                    document = json.loads(stream.read())
                except (json.JSONDecodeError, UnicodeDecodeError):
                    raise ToolkitError(
                        f"archive member {member.name} is not valid JSON", path
                    ) from None
                name = member.name.removeprefix("./")
                if name == MANIFEST:
                    manifest = document
                else:
                    configs[name] = document
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ToolkitError(
            f"not a readable image archive ({type(exc).__name__}: {exc})", path
        ) from None
    if manifest is None:
        raise ToolkitError(f"no {MANIFEST}: not a `docker save` archive", path)
    return manifest, configs


def validate_archive(path: str | Path) -> ArchiveReport:
    """Everything the platform would say about this archive (no exception for rule breaks)."""
    path = Path(path)
    if not path.is_file():
        raise ToolkitError("image archive not found", path)
    problems: list[str] = []
    if not path.name.endswith(ARCHIVE_SUFFIXES):
        problems.append(f"file name must end with {', '.join(ARCHIVE_SUFFIXES)}")
    manifest, configs = read_archive_documents(path)
    rule_problems, facts = check_manifest_and_config(manifest, configs)
    return ArchiveReport(
        path=path, size_bytes=path.stat().st_size, problems=problems + rule_problems, **facts
    )


def check_archive(path: str | Path) -> ArchiveReport:
    """:func:`validate_archive`, raising one error that lists every problem."""
    report = validate_archive(path)
    if not report.ok:
        raise ToolkitError(
            f"the platform would refuse this image: {'; '.join(report.problems)}", report.path
        )
    return report
