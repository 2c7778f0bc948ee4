"""Staging folders: filled first, then moved into place, and swept when their maker died.

An import fills ``.<dataset>.importing.<owner>.XXXXXXXX`` beside the workspace's datasets and
an export fills ``export/.partial.<owner>.XXXXXXXX`` before either moves into place; a kill
(SIGKILL, a lost machine) leaves the half-filled folder behind, which can hold a model's
weights. The owner in the name is ``<host>-<pid>`` of the process that made it, so the next
import or export removes the folders of processes of this host that no longer run, and
never one that a live process, or a process on another host sharing the workspace, is still
filling (a folder named without an owner, from an earlier version, is left alone).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path


def this_host() -> str:
    """The short host name, reduced to letters, digits and ``-`` (it sits inside a file name)."""
    return re.sub(r"[^A-Za-z0-9-]", "", socket.gethostname().split(".")[0]) or "host"


def staging_folder(parent: Path, prefix: str) -> Path:
    """A new, empty folder ``parent/<prefix><host>-<pid>.XXXXXXXX`` (a unique name)."""
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{this_host()}-{os.getpid()}.", dir=parent))


def staging_owner(name: str, prefix: str) -> tuple[str, int] | None:
    """``(host, pid)`` of a folder name :func:`staging_folder` made with ``prefix``, else
    ``None``."""
    if not name.startswith(prefix):
        return None
    owner, dot, unique = name[len(prefix) :].partition(".")
    host, dash, pid = owner.rpartition("-")
    if not (dot and unique and dash and host and pid.isdigit()):
        return None
    return host, int(pid)


def process_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this host (one of another user counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(
    name: str, prefix: str, host: str, alive: Callable[[int], bool] = process_alive
) -> bool:
    """Whether ``name`` is a staging folder of ``prefix`` left by a process of ``host`` that no
    longer runs (``alive``: the check, given a pid; never called for this process)."""
    owner = staging_owner(name, prefix)
    if owner is None or owner[0] != host:
        return False
    return owner[1] != os.getpid() and not alive(owner[1])


def sweep_staging(parent: Path, prefix: str) -> int:
    """Remove the staging folders of ``prefix`` in ``parent`` whose maker died; how many."""
    if not parent.is_dir():
        return 0
    host = this_host()
    removed = 0
    for entry in parent.iterdir():
        if entry.is_dir() and not entry.is_symlink() and is_stale(entry.name, prefix, host):
            shutil.rmtree(entry, ignore_errors=True)
            removed += 1
    return removed
