"""Path confinement: a path that came from a file stays inside the folder it names a place in.

Every path or name read from a file a user or another machine wrote (``inputs.json``'s
``relative_path``, an interfaces file's sockets, ``dataset.json``'s file lists, a model
archive's member and folder names, a task archive's members, the case names of
``splits.json``, configuration names of a selection or an ensemble) goes through this module
before it is joined to a folder:

* :func:`plain_name`: one name (a case, a configuration, a folder): no separator, not ``.``
  or ``..``, not hidden, no control character;
* :func:`relative_parts`: a relative path's parts, refusing an absolute path, a drive, a
  ``..`` part and control characters (``\\`` counts as a separator, as Windows writes it);
* :func:`confined_path`: ``folder / relative``, proven to stay inside ``folder`` once links
  are resolved.

A refusal is one :class:`~toolkit.errors.ToolkitError` line naming the file the path came from
and the offending path. The functions are pure apart from :func:`confined_path`'s and
:func:`check_inside`'s look at links on disk.
"""

from __future__ import annotations

import os
from pathlib import Path

from toolkit.errors import ToolkitError

SEPARATORS = ("/", "\\")


def _control_character(text: str) -> bool:
    return any(ord(c) < 0x20 or ord(c) == 0x7F for c in text)


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot be one file or folder name inside a folder (``None``: it can)."""
    if not isinstance(name, str) or not name:
        return "is not a non-empty name"
    if any(s in name for s in SEPARATORS):
        return "holds a path separator"
    if name in (".", ".."):
        return "is not a name inside the folder"
    if name.startswith("."):
        return "is hidden (starts with '.')"
    if _control_character(name):
        return "holds a control character"
    return None


def plain_name(name: object, *, what: str, source: str | Path | None = None) -> str:
    """``name`` when it is one plain name (no separator, not ``..``, not hidden), else a
    one-line error naming ``source`` (the file it came from) and the name."""
    problem = name_problem(name)
    if problem is not None:
        raise ToolkitError(f"{what} {name!r} {problem}", source)
    return name  # type: ignore[return-value]


def path_problem(relative: object) -> str | None:
    """Why ``relative`` cannot be a path inside a folder (``None``: it can)."""
    if not isinstance(relative, str) or not relative.strip("/\\."):
        return "is not a path inside the folder"
    if relative.startswith(SEPARATORS) or (len(relative) > 1 and relative[1] == ":"):
        return "is an absolute path"
    if _control_character(relative):
        return "holds a control character"
    if ".." in relative.replace("\\", "/").split("/"):
        return "has a '..' component"
    return None


def relative_parts(relative: object, *, what: str, source: str | Path | None = None) -> list[str]:
    """The parts of a relative path from a file (``.`` and empty parts dropped)."""
    problem = path_problem(relative)
    if problem is not None:
        raise ToolkitError(f"{what} {relative!r} {problem}", source)
    parts = str(relative).replace("\\", "/").split("/")
    return [p for p in parts if p not in ("", ".")]


def is_inside(folder: Path, path: Path) -> bool:
    """Whether ``path`` is ``folder`` or below it once both are resolved (links followed)."""
    root = Path(os.path.realpath(folder))
    target = Path(os.path.realpath(path))
    return target == root or root in target.parents


def check_inside(
    folder: Path, path: Path, *, what: str, shown: object, source: str | Path | None = None
) -> Path:
    """``path`` when it stays inside ``folder`` once links are resolved, else a one-line
    error naming ``source`` and ``shown`` (the path as the file gave it)."""
    if not is_inside(folder, path):
        raise ToolkitError(f"{what} {shown!r} leads outside {folder}", source)
    return path


def confined_path(
    folder: Path,
    relative: object,
    *,
    what: str,
    source: str | Path | None = None,
    follow_links: bool = True,
) -> Path:
    """``folder / relative`` for a path read from ``source``, proven to stay inside
    ``folder``: not absolute, no ``..``, and (``follow_links``) no link on the way that leads
    out. ``follow_links=False`` is for a folder of the user's own whose links they made (a
    task folder whose ``imagesTr`` links to a data disk)."""
    path = Path(folder).joinpath(*relative_parts(relative, what=what, source=source))
    if not follow_links:
        return path
    return check_inside(Path(folder), path, what=what, shown=relative, source=source)
