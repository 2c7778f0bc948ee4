"""The terminal, one owner: progress bars, messages and printed tables.

Quietness is one rule, :func:`enabled`: progress is drawn unless the caller passes
``quiet=True`` (the commands' ``--quiet``, handed down as a parameter, also to worker
processes), the process runs with ``TOOLKIT_QUIET`` set (containers, test runs, benchmarks) or
stderr is not a terminal. Messages go to stderr (:func:`info`), tables and data to stdout
(:func:`show_table`); no other module makes a console or reads ``TOOLKIT_QUIET``.

A caller can add a note to every progress bar made inside a block (:func:`progress_note`):
run-all's training stage shows the time left of the whole stage beside each epoch's bar.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

T = TypeVar("T")

console = Console(stderr=True)  # messages and progress
_stdout = Console()  # tables a command prints as its result
# what bars made now show after their own columns (captured when a bar is made: the bar is
# drawn by its own thread, which does not see this context)
_note: ContextVar[Callable[[], str] | None] = ContextVar("progress_note", default=None)


def enabled(quiet: bool = False) -> bool:
    if quiet or os.environ.get("TOOLKIT_QUIET"):
        return False
    return sys.stderr.isatty()


def progress_bar(quiet: bool = False) -> Progress:
    columns: list[ProgressColumn] = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    ]
    note = _note.get()
    if note is not None:
        columns.append(_NoteColumn(note))
    return Progress(*columns, console=console, disable=not enabled(quiet), transient=False)


@contextlib.contextmanager
def progress_note(note: Callable[[], str]) -> Iterator[None]:
    """Every progress bar made inside the block shows ``note()`` after its own columns.

    ``note`` is called each time a bar is drawn (several times a second, from the bar's
    thread): it should be cheap, or remember its text for a while.
    """
    token = _note.set(note)
    try:
        yield
    finally:
        _note.reset(token)


class _NoteColumn(ProgressColumn):
    def __init__(self, note: Callable[[], str]):
        super().__init__()
        self.note = note

    def render(self, task: Task) -> Text:
        return Text(self.note(), style="cyan", no_wrap=True, overflow="ellipsis")


def track(
    items: Iterable[T], description: str, total: int | None = None, quiet: bool = False
) -> Iterator[T]:
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress_bar(quiet) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)


def info(message: str) -> None:
    """A line for the person at the terminal (stderr, so stdout stays for data)."""
    console.print(message, highlight=False, soft_wrap=True)  # never break a path across lines


def show_table(renderable: object) -> None:
    """A table (or other rich renderable) on stdout, as a command's result."""
    _stdout.print(renderable)


def default_workers(requested: int | None) -> int:
    if requested is not None:
        return max(1, requested)
    return max(1, min(8, os.cpu_count() or 1))
