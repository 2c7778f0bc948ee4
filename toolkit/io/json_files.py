"""One reader for every JSON file a stage hands to another (plans, splits, selection, ...).

Each contract's ``load`` calls :func:`read_json`, so a missing, truncated, hand-broken or
too-new file gives the same kind of one-line error naming the file, and where a command
writes the file, which one to run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from toolkit.errors import MissingStageError, ToolkitError

_KINDS = {dict: "a JSON object", list: "a JSON list"}
T = TypeVar("T")


def read_json(
    path: str | Path,
    *,
    what: str = "file",
    producer: str | None = None,
    kind: type = dict,
    version_key: str | None = None,
    version: int | None = None,
) -> Any:
    """The JSON document in ``path``, checked to be of ``kind`` (and of ``version``).

    ``what`` names the contract in messages ("plans", "selection"); ``producer`` is the
    command that writes the file, named when it is missing or broken.
    """
    path = Path(path)
    again = f": run `{producer}` again" if producer else ""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if producer:
            raise MissingStageError(path, producer) from None
        raise ToolkitError(f"{what} not found", path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ToolkitError(f"cannot be read ({type(exc).__name__}: {exc})", path) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ToolkitError(
            f"is not valid JSON ({exc.msg} at line {exc.lineno}){again}", path
        ) from None
    if not isinstance(data, kind):
        raise ToolkitError(f"{what} must hold {_KINDS.get(kind, kind.__name__)}{again}", path)
    if version_key is not None:
        found = data.get(version_key)
        if found != version:
            raise ToolkitError(
                f"{what} format version {found} is not supported (expected {version}){again}",
                path,
            )
    return data


def float_or_nan(value: Any) -> float:
    """A number of a JSON file: ``null`` stands for NaN (JSON has none; writers store NaN so)."""
    return math.nan if value is None else float(value)


def read_contract(path: str | Path, build: Callable[[Any], T], **reading: Any) -> T:
    """:func:`read_json`, then ``build`` the contract's object from it; a document that does
    not fit (a missing key, a wrong type) is a one-line error naming the file."""
    data = read_json(path, **reading)
    try:
        return build(data)
    except (KeyError, TypeError, ValueError) as exc:
        what = reading.get("what", "file")
        producer = reading.get("producer")
        again = f": run `{producer}` again" if producer else ""
        raise ToolkitError(f"malformed {what} ({exc}){again}", path) from None
