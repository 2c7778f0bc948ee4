"""Per-case work in worker processes, with a progress bar and no worker left behind."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol, TypeVar

from toolkit.progress import progress_bar

T = TypeVar("T")
R = TypeVar("R")


class CaseBackend(Protocol):
    """Somewhere else to run per-case work (a Ray cluster): ``map`` keeps the order of items."""

    def map(
        self, fn: Callable[[T], R], items: Sequence[T], description: str, quiet: bool
    ) -> list[R]: ...


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
) -> list[R]:
    """``[fn(x) for x in items]`` over ``workers`` processes (in this process when 1).

    The first exception stops the work and is raised here (a ToolkitError keeps its one-line
    message). Results keep the order of ``items``. Workers are started with ``spawn`` so a
    parent that has already started torch's thread pools is safe. Inside
    :func:`case_backend` the items go to that backend instead (``workers`` is then the
    backend's business).
    """
    backend = _backend.get()
    if backend is not None and len(items) > 1:
        return backend.map(fn, items, description, quiet)
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
