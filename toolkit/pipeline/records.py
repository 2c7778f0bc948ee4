"""Completion records: what each stage of ``run-all`` was computed from.

A stage is *complete and valid* when ``pipeline/<stage>.json`` exists and its ``key`` equals
the key computed now from the stage's inputs (digests of the files it reads, the parts of
the plan it uses, and the options). A different key means the stage is redone; no record
means it never finished (a half-done training resumes from its checkpoint when the key of
its start record still matches).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from toolkit.errors import ToolkitError
from toolkit.io.atomic import sweep_temporaries, write_json
from toolkit.io.json_files import read_contract, read_json
from toolkit.workspace import DatasetPaths


def digest(*parts: Any) -> str:
    """A short stable hash of JSON-able parts."""
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def file_digest(path: Path) -> str:
    """Content hash of a (small) file; ``missing`` when absent."""
    if not path.is_file():
        return "missing"
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def tree_stat_digest(root: Path, pattern: str = "**/*") -> str:
    """Names, sizes and modification times of the files under ``root`` (like make)."""
    entries = []
    if root.is_dir():
        for p in sorted(root.glob(pattern)):
            if p.is_file() and not p.name.startswith("."):
                st = p.stat()
                entries.append((str(p.relative_to(root)), st.st_size, st.st_mtime_ns))
    return digest(entries)


@dataclass
class StageRecord:
    stage: str
    key: str
    completed_at: float = 0.0
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)


def record_path(paths: DatasetPaths, stage: str) -> Path:
    return paths.stage_record(stage.replace(":", "_").replace("/", "_"))


def started_path(paths: DatasetPaths, stage: str) -> Path:
    return paths.pipeline / f"{record_path(paths, stage).stem}.started.json"


def read_record(paths: DatasetPaths, stage: str) -> StageRecord | None:
    path = record_path(paths, stage)
    if not path.is_file():
        return None
    try:  # a record run-all cannot read is a stage to run again, not an error
        return read_contract(path, lambda data: StageRecord(**data), what="stage record")
    except ToolkitError:
        return None


def is_valid(paths: DatasetPaths, stage: str, key: str) -> bool:
    record = read_record(paths, stage)
    return record is not None and record.key == key


def write_record(
    paths: DatasetPaths, stage: str, key: str, started: float, details: dict | None = None
) -> StageRecord:
    record = StageRecord(stage, key, time.time(), time.time() - started, details or {})
    write_json(record_path(paths, stage), asdict(record))
    started_file = started_path(paths, stage)
    if started_file.exists():
        started_file.unlink()
    return record


def invalidate(paths: DatasetPaths, stage: str) -> None:
    path = record_path(paths, stage)
    if path.exists():
        path.unlink()


def mark_started(paths: DatasetPaths, stage: str, key: str) -> str | None:
    """Record that ``stage`` starts with ``key``; return the key of an earlier unfinished start."""
    path = started_path(paths, stage)
    previous = None
    if path.is_file():
        with contextlib.suppress(ToolkitError):
            previous = read_json(path, what="start record").get("key")
    write_json(path, {"stage": stage, "key": key, "started_at": time.time()})
    return previous


def train_stage(configuration: str, fold: int) -> str:
    return f"train:{configuration}:{fold}"


def preprocess_stage(data_identifier: str) -> str:
    return f"preprocess:{data_identifier}"


def sweep_run_temporaries(paths: DatasetPaths) -> int:
    """Remove what a run-all killed mid-write left: temporaries of its records
    (``pipeline/``) and of the dataset's own files (fingerprint, plans, splits). Called as
    run-all starts, holding the dataset's writer lock."""
    own = {p.name for p in (paths.fingerprint_json, paths.plans_json, paths.splits_json)}
    return sweep_temporaries(paths.pipeline) + sweep_temporaries(paths.root, targets=own)
