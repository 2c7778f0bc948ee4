"""Per-case work in worker processes, with a progress bar and no worker left behind.

The number of local workers is capped by memory: a stage that knows what one case may need
at its peak (``peak_bytes``) runs no more workers than fit in the memory available now
(``MemAvailable``, lowered by a cgroup limit), less a reserve for the main process, and says
so when the cap applies. :func:`workers_for_memory` is the rule, pure.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol, TypeVar

from toolkit.progress import info, progress_bar

T = TypeVar("T")
R = TypeVar("R")


class CaseBackend(Protocol):
    """Somewhere else to run per-case work (a Ray cluster): ``map`` keeps the order of items."""

    def map(
        self, fn: Callable[[T], R], items: Sequence[T], description: str, quiet: bool
    ) -> list[R]: ...


GIB = 1 << 30
# kept free beside the workers: the main process (results, the progress bar) and the system
MEMORY_RESERVE_BYTES = 1 * GIB
# a worker process before its first case (Python, numpy, SciPy, SimpleITK), added to a
# stage's estimate of one case
WORKER_BYTES = 256 << 20
# a cgroup v1 "limit" at or above this means no limit
_UNLIMITED = 1 << 60


# memory ------------------------------------------------------------------------------------


def workers_for_memory(
    *,
    requested: int,
    available_bytes: int | None,
    peak_bytes: int | None,
    reserve_bytes: int = MEMORY_RESERVE_BYTES,
) -> int:
    """How many workers to start: ``requested``, fewer when their peaks would not fit.

    ``peak_bytes``: what one case may need at most; ``available_bytes``: the memory free
    now (``None``: unknown, no cap). Never below one: a single worker runs whatever fits.
    """
    requested = max(1, requested)
    if available_bytes is None or not peak_bytes or peak_bytes <= 0:
        return requested
    fit = (available_bytes - reserve_bytes) // peak_bytes
    return int(max(1, min(requested, fit)))


def meminfo_available(text: str) -> int | None:
    """``MemAvailable`` of ``/proc/meminfo``'s text, in bytes (``None`` when absent)."""
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            parts = line.split()
            scale = 1024 if len(parts) > 2 and parts[2].lower() == "kb" else 1
            return int(parts[1]) * scale
    return None


def cgroup_headroom(limit: str, usage: str, inactive_file: int = 0) -> int | None:
    """Bytes left under a cgroup's memory limit (``None`` when unlimited).

    ``limit``/``usage``: the texts of ``memory.max``/``memory.current`` (v2) or
    ``memory.limit_in_bytes``/``memory.usage_in_bytes`` (v1); page cache the kernel can drop
    (``inactive_file``) counts as free.
    """
    limit, usage = limit.strip(), usage.strip()
    if not limit or limit == "max" or not limit.isdigit() or not usage.isdigit():
        return None
    if int(limit) >= _UNLIMITED:
        return None
    return max(0, int(limit) - int(usage) + inactive_file)


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _inactive_file(stat_text: str) -> int:
    for line in stat_text.splitlines():
        key, _, value = line.partition(" ")
        if key in ("inactive_file", "total_inactive_file") and value.strip().isdigit():
            return int(value)
    return 0


def _cgroup_dirs() -> list[str]:
    """This process's cgroup v2 folder (then the root), and the v1 memory controller's."""
    dirs = []
    for line in _read("/proc/self/cgroup").splitlines():
        if line.startswith("0::"):
            dirs.append("/sys/fs/cgroup" + line[3:].rstrip("/"))
    return list(dict.fromkeys([*dirs, "/sys/fs/cgroup", "/sys/fs/cgroup/memory"]))


def memory_available() -> int | None:
    """Bytes this process may still use: ``MemAvailable``, lowered by a cgroup limit if any."""
    found = [meminfo_available(_read("/proc/meminfo"))]
    for folder in _cgroup_dirs():
        for limit, usage in (
            ("memory.max", "memory.current"),
            ("memory.limit_in_bytes", "memory.usage_in_bytes"),
        ):
            if os.path.exists(os.path.join(folder, limit)):
                headroom = cgroup_headroom(
                    _read(os.path.join(folder, limit)),
                    _read(os.path.join(folder, usage)),
                    _inactive_file(_read(os.path.join(folder, "memory.stat"))),
                )
                found.append(headroom)
    known = [v for v in found if v is not None]
    return min(known) if known else None


def capped_workers(workers: int, peak_bytes: int | None, description: str) -> int:
    """``workers`` capped by :func:`workers_for_memory` now; a line says so when it applies.

    ``peak_bytes``: one case's own data at its peak; a worker's base is added here.
    """
    peak_bytes = peak_bytes + WORKER_BYTES if peak_bytes else None
    available = memory_available()
    n = workers_for_memory(requested=workers, available_bytes=available, peak_bytes=peak_bytes)
    if available is None or not peak_bytes:
        return n
    gb = f"{peak_bytes / GIB:.1f} GB per case, {available / GIB:.1f} GB available"
    if n < max(1, workers):
        info(f"{description}: {n} worker{'s' if n > 1 else ''} instead of {workers} ({gb})")
    elif peak_bytes + MEMORY_RESERVE_BYTES > available:
        info(f"{description}: memory is short ({gb}); the largest cases may not fit")
    return n


# per thread / context: another thread calling map_cases meanwhile keeps its local processes
_backend: ContextVar[CaseBackend | None] = ContextVar("toolkit_case_backend", default=None)


@contextmanager
def case_backend(backend: CaseBackend | None) -> Iterator[None]:
    """Within the block, :func:`map_cases` hands its work to ``backend`` (None: local processes)."""
    token = _backend.set(backend)
    try:
        yield
    finally:
        _backend.reset(token)


def map_cases(
    fn: Callable[[T], R],
    items: Sequence[T],
    workers: int,
    description: str,
    quiet: bool = False,
    peak_bytes: int | None = None,
) -> list[R]:
    """``[fn(x) for x in items]`` over ``workers`` processes (in this process when 1).

    The first exception stops the work and is raised here (a ToolkitError keeps its one-line
    message). Results keep the order of ``items``. Workers are started with ``spawn`` so a
    parent that has already started torch's thread pools is safe. Inside
    :func:`case_backend` the items go to that backend instead (``workers`` is then the
    backend's business). ``peak_bytes``: what one item may need at most; local workers are
    then capped by the memory available (:func:`capped_workers`).
    """
    backend = _backend.get()
    if backend is not None and len(items) > 1:
        return backend.map(fn, items, description, quiet)
    if peak_bytes is not None and len(items) > 0:
        workers = capped_workers(min(workers, len(items)), peak_bytes, description)
    results: list[R] = []
    with progress_bar(quiet) as bar:
        task = bar.add_task(description, total=len(items))
        if workers <= 1 or len(items) <= 1:
            for item in items:
                results.append(fn(item))
                bar.advance(task)
            return results
        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(items)), mp_context=ctx) as pool:
            futures = [pool.submit(fn, item) for item in items]
            pending = set(futures)
            try:
                while pending:
                    done, pending = wait(pending, return_when=FIRST_EXCEPTION, timeout=0.5)
                    for f in done:
                        if f.exception() is not None:
                            raise f.exception()  # type: ignore[misc]
                        bar.advance(task)
            except BaseException:
                for f in pending:
                    f.cancel()
                pool.shutdown(wait=True, cancel_futures=True)
                raise
            return [f.result() for f in futures]
