"""Unpacking a task's ``.tar`` archive (also ``.tar.gz``/``.tgz``) for ``toolkit convert``.

The archive is unpacked next to the output, never outside its target folder: absolute names,
``..`` components, links out of it and special files are refused before anything is written.
"""

from __future__ import annotations

import errno
import os
import posixpath
import tarfile
import zlib
from pathlib import Path, PurePosixPath

from toolkit.errors import ToolkitError
from toolkit.io.confine import is_inside, path_problem
from toolkit.progress import track

TASK_ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
_FILTER_ERRORS = (tarfile.FilterError,) if hasattr(tarfile, "FilterError") else ()
# errors of writing the unpacked files, not of reading the archive: the disk's, reported as such
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(TASK_ARCHIVE_SUFFIXES)


def _member_problem(member: tarfile.TarInfo) -> str | None:
    """Why a member may not be unpacked (``None`` when it may)."""
    name = member.name
    pure = PurePosixPath(name)
    problem = None if member.isdir() and name in (".", "./") else path_problem(name)
    if problem is not None:
        return problem
    if member.issym() or member.islnk():
        target = member.linkname
        if PurePosixPath(target).is_absolute() or target.startswith("\\"):
            return f"is a link to the absolute path {target!r}"
        base = str(pure.parent) if member.issym() else ""
        resolved = posixpath.normpath(posixpath.join(base, target))
        if resolved == ".." or resolved.startswith("../") or ".." in PurePosixPath(target).parts:
            return f"is a link pointing out of the archive's folder ({target!r})"
        own = posixpath.normpath(name)
        if not target or resolved in (own, ".") or own.startswith(resolved + "/"):
            return f"is a link to itself or to a folder holding it ({target!r})"
        return None
    if not (member.isfile() or member.isdir()):
        return "is a special file (device, fifo)"
    return None


def safe_extract(archive: Path, target: Path, quiet: bool = False) -> None:
    """Unpack ``archive`` into ``target``; every member is checked before anything is written."""
    try:
        tar = tarfile.open(archive)
    except (tarfile.TarError, OSError) as exc:
        raise ToolkitError(f"not a readable tar archive ({exc})", archive) from None
    with tar:
        try:
            members = tar.getmembers()
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise ToolkitError(f"truncated or corrupt archive ({exc})", archive) from None
        files: set[str] = set()
        for member in members:
            problem = _member_problem(member)
            if problem is None and member.islnk() and member.linkname not in files:
                # a hard link's target must be a file unpacked before it (no chains, no loops)
                problem = f"is a hard link to {member.linkname!r}, not to a file before it"
            if member.isfile():
                files.add(member.name)
            if problem is not None:
                raise ToolkitError(f"refusing to unpack: member {member.name!r} {problem}", archive)
        target.mkdir(parents=True, exist_ok=True)
        root = target.resolve()
        for member in track(members, f"unpack {archive.name}", quiet=quiet):
            # links unpacked earlier could redirect a later member: check where it really lands
            destination = root / member.name
            if not is_inside(root, destination):
                raise ToolkitError(
                    f"refusing to unpack: member {member.name!r} would land outside the target",
                    archive,
                )
            try:
                if hasattr(tarfile, "data_filter"):
                    tar.extract(member, root, set_attrs=False, filter="data")
                else:
                    tar.extract(member, root, set_attrs=False)
            except _FILTER_ERRORS as exc:
                raise ToolkitError(f"refusing to unpack: {exc}", archive) from None
            except RecursionError:  # links that lead to each other
                raise ToolkitError(
                    f"refusing to unpack: member {member.name!r} is a link in a loop", archive
                ) from None
            except OSError as exc:
                if exc.errno in _WRITE_ERRNOS:  # e.g. a full disk: not the archive's fault
                    raise OSError(
                        exc.errno, exc.strerror or os.strerror(exc.errno), str(destination)
                    ) from None
                raise ToolkitError(f"truncated or corrupt archive ({exc})", archive) from None
            except (tarfile.TarError, EOFError, zlib.error) as exc:
                raise ToolkitError(f"truncated or corrupt archive ({exc})", archive) from None


def task_root(extracted: Path, archive: Path) -> Path:
    """The folder with dataset.json: the unpack folder itself or its single task folder."""
    if (extracted / "dataset.json").is_file():
        return extracted
    folders = [p for p in extracted.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if len(folders) == 1:
        inner = folders[0]
        if (inner / "dataset.json").is_file() or (inner / "raw" / "dataset.json").is_file():
            return inner
    raise ToolkitError("holds no task folder with a dataset.json", archive)
