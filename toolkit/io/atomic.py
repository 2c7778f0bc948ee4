"""Atomic writes: a temporary file in the same folder, fsync, then rename.

A run killed at any moment leaves either the old file or the new one, never half a file,
and maybe a temporary ``.NAME.XXXXXXXX.tmp.EXT`` (a unique name per write: two processes
never share one), which :func:`sweep_temporaries` removes when the stage that writes the
folder runs again. A write that fails on a full disk raises ``OSError(ENOSPC)`` naming the
target, whatever the writer raised (numpy, torch and SimpleITK do not all say so), and so
does a write that leaves the disk full, since some writers ignore a failed write.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import math
import os
import re
import tempfile
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

from toolkit.errors import ToolkitError


@contextlib.contextmanager
def atomic_path(target: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success rename it onto ``target``.

    ``suffix`` defaults to the target's full suffix (``.nii.gz``) so that writers which pick
    a format from the file name (SimpleITK, numpy) write the right one.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(target.suffixes) if target.suffixes else ""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{suffix}", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
            # mkstemp makes 0600 files: give the new file the mode a plain open() would
            os.chmod(tmp_path, 0o666 & ~_umask())
            _fsync(tmp_path)
            if _disk_full(target.parent):
                # some writers ignore a failed write (ITK's NIfTI writer leaves an empty
                # file): on a full disk the file may be cut short, so it never becomes the target
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))
        except Exception as exc:
            failure = _write_failure(exc, target)
            if failure is None:
                raise
            raise failure from exc
        os.replace(tmp_path, target)
        _fsync_dir(target.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


# a file system with less than this left after a write is full: the write failed, or may have
# failed unseen (a few blocks: a write that fails leaves none)
_FULL_BELOW_BYTES = 64 * 1024


def _write_failure(exc: Exception, target: Path) -> OSError | None:
    """The ``OSError`` naming ``target`` for a write that failed: the writer's own OSError with
    the target's name added, or ENOSPC when the disk is full whatever the writer raised;
    ``None`` when neither (a programming error keeps its traceback)."""
    if isinstance(exc, ToolkitError):
        return None
    if (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or _disk_full(target.parent):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))
    if isinstance(exc, OSError) and exc.filename is None and exc.errno is not None:
        return OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(target))
    return None


def _disk_full(folder: Path) -> bool:
    try:
        stats = os.statvfs(folder)
    except OSError:
        return False
    if stats.f_blocks == 0:  # a file system that reports no sizes (some FUSE ones): unknown
        return False
    # root may write into the blocks reserved for it: its disk is full when those are gone
    free = stats.f_bfree if os.geteuid() == 0 else stats.f_bavail
    return free * stats.f_frsize < _FULL_BELOW_BYTES


# mkstemp's names, as atomic_path makes them: ".NAME." + 8 random characters + ".tmp" + suffix
_TEMPORARY_RE = re.compile(r"^\.(?P<target>.+)\.[A-Za-z0-9_]{8}\.tmp(\..*)?$")


def temporary_target(name: str) -> str | None:
    """The target's file name if ``name`` is one of :func:`atomic_path`'s temporaries."""
    match = _TEMPORARY_RE.match(name)
    return None if match is None else match.group("target")


def sweep_temporaries(
    folder: str | Path, *, recursive: bool = False, targets: Collection[str] | None = None
) -> int:
    """Remove the temporaries that writes cut short by a kill left in ``folder`` (and below it
    with ``recursive``; only those of the file names ``targets`` when given); their targets
    are intact. Only the stage that writes ``folder`` calls this, when it starts, holding the
    dataset's writer lock: no other process is writing there. Returns how many it removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for path in folder.rglob(".*.tmp*") if recursive else folder.glob(".*.tmp*"):
        target = temporary_target(path.name)
        if target is None or (targets is not None and target not in targets):
            continue
        if not path.is_dir():
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def _umask() -> int:
    """The process's umask, read without changing it (``os.umask`` sets it, racing with threads
    that create files meanwhile): from ``/proc/self/status`` on Linux, else the usual 022."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def write_bytes(target: str | Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text(target: str | Path, text: str) -> None:
    write_bytes(target, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    # numpy scalars and arrays, paths and dataclasses appear in what stages write
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "__dataclass_fields__"):
        return dataclasses.asdict(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


def _reject_nan(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _reject_nan(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_reject_nan(v) for v in obj]
    return obj


def to_jsonable(obj: Any) -> Any:
    """Plain JSON types only; NaN and inf become null (JSON has no NaN)."""
    return _reject_nan(json.loads(json.dumps(obj, default=_json_default)))


def write_json(target: str | Path, obj: Any) -> None:
    text = json.dumps(to_jsonable(obj), indent=2, allow_nan=False)
    write_text(target, text + "\n")


def write_with(target: str | Path, writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp_path)`` and move the result onto ``target`` atomically."""
    with atomic_path(target) as tmp:
        writer(tmp)


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the
    system or the file system cannot."""
    import ctypes
    import errno

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def replace_folder(new: Path, target: Path) -> None:
    """Put the folder ``new`` at ``target`` by renames only; an old ``target`` is removed after.

    Where the system can, the two folders swap places in one step, so a kill at any moment
    leaves one complete folder at ``target`` (old or new); elsewhere the old folder is renamed
    aside (``.<name>.replaced.XXXX``) and the new one renamed in. The old one is removed last.
    """
    import shutil

    new, target = Path(new), Path(target)
    if not target.exists():
        os.replace(new, target)
        _fsync_dir(target.parent)
        return
    if _exchange(new, target):
        old = new  # the swap left the old folder at the new one's name
    else:
        # a fresh name, not a folder made beforehand: an aside folder always holds a dataset
        old = target.parent / f"{_REPLACED_PREFIX}{target.name}.{os.getpid()}-{os.urandom(4).hex()}"
        os.replace(target, old)
        os.replace(new, target)
    _fsync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)


_REPLACED_PREFIX = ".replaced."


def restore_replaced(target: Path) -> Path | None:
    """Where folders cannot swap in one step, a kill between :func:`replace_folder`'s two
    renames leaves the old folder aside and nothing at ``target``: put it back (the folder
    restored, else ``None``)."""
    target = Path(target)
    if target.exists():
        return None
    prefix = f"{_REPLACED_PREFIX}{target.name}"
    aside = [
        old
        for old in target.parent.glob(f"{prefix}.*")
        if old.is_dir() and old.name.rpartition(".")[0] == prefix
    ]
    if not aside:
        return None
    os.replace(max(aside, key=lambda p: p.stat().st_mtime_ns), target)  # the latest one
    return target
