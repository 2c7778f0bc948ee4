"""One writer per dataset: an OS file lock beside the dataset's folder.

Every command that writes into a dataset's folder holds this lock while it runs; readers
(``status``, ``predict`` into another folder) never take it. The lock is ``flock`` on
``<workspace>/.<dataset>.lock`` (``DatasetPaths.writer_lock``): the kernel releases it when
the holding process ends, however it ends, so a killed run never leaves a stale lock. The
file lies beside the dataset, not inside it, so that a dataset folder replaced by a rename
(``import-model --force``, ``convert --force``) keeps one lock.

The holder writes who it is into the file (command line, pid, host, start time), so that a
second writer stops at once with one line naming it, or waits for it (``--wait``). The file
itself is never replaced (a rename would give a second writer another inode to lock); the
holder overwrites it in place, and removes the file when it lets go (while it still holds
it: a waiter that then gets the old file's lock sees it is gone and takes the new one), so
a finished command leaves nothing behind; a killed one leaves the file, which the next writer
takes over.

Worker processes (per-case workers, Ray tasks, distributed training ranks) never take the
lock: the command that started them holds it for them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import socket
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from toolkit.errors import ToolkitError
from toolkit.workspace import DatasetPaths

# the kernel's table of file locks (Linux): who holds one, seen without taking it
_PROC_LOCKS = Path("/proc/locks")
# a holder writes its record right after it gets the lock: how long a refused writer keeps
# reading an empty or half-written record before it names "another process" instead
_RECORD_READ_TRIES = 20
_RECORD_READ_PAUSE_S = 0.05
_UNKNOWN = "?"


@dataclass(frozen=True, kw_only=True)
class LockHolder:
    """Who holds a dataset's writer lock."""

    command: str
    pid: int
    host: str
    started: str  # UTC, ISO 8601 to the second

    def describe(self) -> str:
        if self.command == _UNKNOWN:  # seen in the kernel's table, without a record
            return f"process {self.pid}"
        return f"`{self.command}` (pid {self.pid} on {self.host}, since {self.started})"


class DatasetBusyError(ToolkitError):
    """Another process holds the dataset's writer lock."""

    def __init__(self, dataset: Path, holder: LockHolder | None):
        who = holder.describe() if holder is not None else "another process"
        super().__init__(
            f"another toolkit command is writing this dataset: {who}; wait for it to end, or "
            "give --wait to start when it does",
            dataset,
        )
        self.holder = holder

    def __reduce__(self):
        return (DatasetBusyError, (self.path, self.holder))


def command_line(argv: list[str] | None = None) -> str:
    """This process's command line as a user would type it (``toolkit run-all X ...``)."""
    argv = list(sys.argv if argv is None else argv)
    program = Path(argv[0]).name if argv else "python"
    if program == "__main__.py":  # python -m toolkit
        program = "toolkit"
    return shlex.join([program, *argv[1:]])


def this_process(command: str | None = None) -> LockHolder:
    return LockHolder(
        command=command if command is not None else command_line(),
        pid=os.getpid(),
        host=socket.gethostname(),
        started=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
    )


def parse_holder(text: str) -> LockHolder | None:
    """The record a holder wrote; ``None`` for an empty, partial or foreign file."""
    try:
        data = json.loads(text)
        return LockHolder(
            command=str(data["command"]),
            pid=int(data["pid"]),
            host=str(data["host"]),
            started=str(data["started"]),
        )
    except (ValueError, KeyError, TypeError):
        return None


def _read_holder(fd: int) -> LockHolder | None:
    for attempt in range(_RECORD_READ_TRIES):
        holder = parse_holder(os.pread(fd, 64 * 1024, 0).decode("utf-8", "replace"))
        if holder is not None:
            return holder
        if attempt + 1 < _RECORD_READ_TRIES:
            time.sleep(_RECORD_READ_PAUSE_S)
    return None


def _write_holder(fd: int, holder: LockHolder | None) -> None:
    """Record the holder (``None``: empty the record). The lock is what keeps other writers
    out; a record that cannot be written (a lock file of another user's, opened read-only; a
    full disk, which the command's own first write reports with its path) is left out."""
    data = b"" if holder is None else (json.dumps(asdict(holder)) + "\n").encode("utf-8")
    try:
        os.ftruncate(fd, 0)
        if data:
            os.pwrite(fd, data, 0)
    except OSError:
        pass


def _open_lock_file(lock_file: Path) -> int:
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    try:
        return os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except PermissionError:
        # another user's lock file in a shared workspace: flock needs no write access
        return os.open(lock_file, os.O_RDONLY | os.O_CLOEXEC)


def is_secondary_rank(environ: Mapping[str, str]) -> bool:
    """A rank other than 0 of a job that torchrun started (``RANK``, ``WORLD_SIZE``): its rank 0
    holds the dataset's lock for the whole job, so it takes none."""
    try:
        return int(environ.get("WORLD_SIZE", "1")) > 1 and int(environ.get("RANK", "0")) != 0
    except ValueError:
        return False


@contextlib.contextmanager
def dataset_writer_lock(
    paths: DatasetPaths,
    *,
    wait: bool = False,
    command: str | None = None,
    notify: Callable[[str], None] | None = None,
) -> Iterator[LockHolder]:
    """Hold ``paths``'s writer lock for the ``with`` block.

    Held by another process: raise :class:`DatasetBusyError` naming it, or with ``wait``
    call ``notify`` with one line and block until it is free. ``command`` is what the lock
    records (default: this process's command line).
    """
    if is_secondary_rank(os.environ):
        # torchrun's other ranks train under the lock their rank 0 holds
        yield this_process(command)
        return
    lock_file = paths.writer_lock
    fd = _acquire(paths, lock_file, wait, notify)
    try:
        me = this_process(command)
        _write_holder(fd, me)
        yield me
    finally:
        # removed while still held: a waiter that gets this file's lock next finds it gone and
        # takes a new one, so two writers never hold two files of one dataset
        try:
            os.unlink(lock_file)
        except OSError:
            _write_holder(fd, None)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _acquire(
    paths: DatasetPaths, lock_file: Path, wait: bool, notify: Callable[[str], None] | None
) -> int:
    """A descriptor of the lock file, locked; the file may be replaced while we wait for it
    (its holder removes it when done), so the lock counts only on the file still in place."""
    told = False
    while True:
        fd = _open_lock_file(lock_file)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                if not wait:
                    raise DatasetBusyError(paths.root, holder) from None
                if notify is not None and not told:
                    who = holder.describe() if holder is not None else "another process"
                    notify(f"waiting for {who} to finish writing {paths.root}")
                    told = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            if _is_in_place(fd, lock_file):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # locked a file its holder had removed: take the one in place now


def _is_in_place(fd: int, lock_file: Path) -> bool:
    try:
        here = os.stat(lock_file)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (here.st_dev, here.st_ino)


def current_holder(paths: DatasetPaths) -> LockHolder | None:
    """Who writes the dataset now, for readers (``toolkit status``), seen in the kernel's
    table of locks without touching the lock (probing it would refuse a writer arriving at
    that moment); ``None`` when nobody holds it, or where the table cannot be read."""
    try:
        stat = os.stat(paths.writer_lock)
        table = _PROC_LOCKS.read_text()
    except OSError:
        return None
    inode = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}"
    for line in table.splitlines():
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 4242 fe:00:16039978 0 EOF" (a blocked waiter: "1: -> FLOCK")
        if len(fields) >= 6 and fields[1:4] == ["FLOCK", "ADVISORY", "WRITE"]:
            if fields[5] == inode:
                record = parse_holder(paths.writer_lock.read_text(errors="replace"))
                unknown = LockHolder(
                    command=_UNKNOWN, pid=int(fields[4]), host=_UNKNOWN, started=_UNKNOWN
                )
                return record if record is not None else unknown
    return None
