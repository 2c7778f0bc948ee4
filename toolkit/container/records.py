"""What ``export-container`` and ``test-container`` record: ``export.json`` and
``container-test.json`` in the export folder."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit.container.engine import DEFAULT_MEMORY
from toolkit.container.testrun import CaseResult
from toolkit.errors import MissingStageError
from toolkit.io.atomic import write_json
from toolkit.io.json_files import read_contract

DEFAULT_TIME_LIMIT = 3600.0  # the platform's default per job


@dataclass
class ExportRecord:
    """``export.json``: what was exported and how it went."""

    dataset: str
    tag: str
    base_image: str
    model_mode: str
    device: str
    engine: str
    built: bool
    configurations: list[str]
    folds: list[int | str]
    input_slugs: list[str]
    output_slug: str
    model_bytes: int
    context_seconds: float
    interfaces: list[dict[str, Any]] = field(default_factory=list)
    interfaces_file: str | None = None  # --interfaces, as given
    channel_map: list[str] = field(default_factory=list)
    wheels: str = ""  # where the image's wheels come from
    memory: str = DEFAULT_MEMORY  # selected; the job gets 1 GiB less
    time_limit: float = DEFAULT_TIME_LIMIT
    warnings: list[str] = field(default_factory=list)
    gpu_memory: str | None = None
    runtime: str = "torch"  # what runs the networks in the image (--runtime)
    build_seconds: float | None = None
    image_id: str = ""
    image_bytes: int | None = None
    image_user: str = ""
    image_architecture: str = ""
    save_seconds: float | None = None
    archive: dict[str, Any] | None = None
    model_tarball_bytes: int | None = None
    test_run: dict[str, Any] | None = None
    test_runs: list[dict[str, Any]] = field(default_factory=list)  # one per interface

    def save(self, path: Path) -> None:
        write_json(path, dataclasses.asdict(self))

    @classmethod
    def load(cls, path: Path) -> ExportRecord:
        if not path.is_file():
            raise MissingStageError(path, f"toolkit export-container {path.parent.parent.name}")
        return read_contract(
            path,
            lambda data: cls(
                **{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data}
            ),
            what="export record",
            producer=f"toolkit export-container {path.parent.parent.name}",
        )


@dataclass
class ContainerTestReport:
    dataset: str
    tag: str
    mode: str
    engine: str
    memory_limit: str
    cases: list[CaseResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.cases) and all(c.ok for c in self.cases)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "tag": self.tag,
            "mode": self.mode,
            "engine": self.engine,
            "memory_limit": self.memory_limit,
            "ok": self.ok,
            "cases": [c.to_dict() for c in self.cases],
        }
