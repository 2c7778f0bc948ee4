"""The terminal, one owner: progress bars, messages and printed tables.

Quietness is one rule, :func:`enabled`: progress is drawn unless the caller passes
``quiet=True`` (the commands' ``--quiet``, handed down as a parameter, also to worker
processes), the process runs with ``TOOLKIT_QUIET`` set (containers, test runs, benchmarks) or
stderr is not a terminal. Messages go to stderr (:func:`info`), tables and data to stdout
(:func:`show_table`); no other module makes a console or reads ``TOOLKIT_QUIET``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")

console = Console(stderr=True)  # messages and progress
_stdout = Console()  # tables a command prints as its result


def enabled(quiet: bool = False) -> bool:
    if quiet or os.environ.get("TOOLKIT_QUIET"):
        return False
    return sys.stderr.isatty()


def progress_bar(quiet: bool = False) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled(quiet),
        transient=False,
    )


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
