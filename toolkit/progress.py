"""Progress bars (rich) for every loop a person waits for; silent when not a TTY or quiet."""

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

console = Console(stderr=True)


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


def default_workers(requested: int | None) -> int:
    if requested is not None:
        return max(1, requested)
    return max(1, min(8, os.cpu_count() or 1))
