"""The cache of ``toolkit verify``: results of cases without errors, in ``raw/.verified.json``.

Entries are keyed by each file's size and modification time and by ``dataset.json``'s, so
verifying unchanged data again only reads the directory listing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit.io.atomic import write_json
from toolkit.io.dataset_json import CaseFiles
from toolkit.workspace import RawFolder

CACHE_VERSION = 1


def file_stat(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def case_key(split: str, case: str) -> str:
    return f"{split}/{case}"


def case_stats(files: CaseFiles, root: Path) -> dict[str, list[int] | None]:
    paths = list(files.images) + ([files.label] if files.label is not None else [])
    return {str(p.relative_to(root)): file_stat(p) for p in paths}


@dataclass
class VerifyCache:
    """What `raw/.verified.json` holds: `dataset.json`'s stat and the cached cases."""

    dataset_json: list[int] | None
    cases: dict[str, dict[str, Any]]

    @classmethod
    def load(cls, folder: RawFolder) -> VerifyCache:
        stat = file_stat(folder.dataset_json)
        try:
            data = json.loads(folder.verify_cache.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return cls(stat, {})
        if (
            not isinstance(data, dict)
            or data.get("version") != CACHE_VERSION
            or data.get("dataset_json") != stat
        ):
            return cls(stat, {})
        cases = data.get("cases")
        return cls(stat, cases if isinstance(cases, dict) else {})

    def lookup(self, key: str, stats: dict[str, list[int] | None]) -> dict[str, Any] | None:
        entry = self.cases.get(key)
        if entry is None or entry.get("files") != stats or None in stats.values():
            return None
        return entry

    def save(self, folder: RawFolder) -> None:
        try:
            write_json(
                folder.verify_cache,
                {"version": CACHE_VERSION, "dataset_json": self.dataset_json, "cases": self.cases},
            )
        except OSError:
            pass  # a read-only dataset is verified every time, which is correct, only slower
