"""The one exception type a user can cause.

Anything wrong with the user's data, paths or options raises :class:`ToolkitError`. The CLI
prints it as a single line (``error: <path>: <problem>``) and exits with code 2; programming
errors keep their traceback. An ``OSError`` (no space left, permission denied, not a
directory, a read-only file system) is the machine's, not the program's: the CLI prints it
as one line too (:func:`os_error_line`).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

# what a user can do about the operating system's errors that a run meets most
_OS_ERROR_HINTS = {
    errno.ENOSPC: "free some space and run the command again: it resumes where it stopped",
    errno.EDQUOT: "free some space within your quota and run the command again",
    errno.EROFS: "the file system is read-only: choose a folder you can write",
    errno.EACCES: "choose a folder you may write, or change its permissions",
    errno.EPERM: "choose a folder you may write, or change its permissions",
    errno.ENOTDIR: "a part of the path is a file where a folder is needed",
    errno.EEXIST: "a file is in the way: remove it or choose another path",
}


class ToolkitError(Exception):
    """A problem the user can fix: bad input data, a missing stage, a wrong option."""

    exit_code = 2

    def __init__(self, message: str, path: str | Path | None = None):
        self.message = message
        self.path = Path(path) if path is not None else None
        super().__init__(self.one_line())

    def __reduce__(self):
        # rebuilt as a plain ToolkitError with the same text (crosses process boundaries)
        return (ToolkitError, (self.message, self.path))

    def one_line(self) -> str:
        text = " ".join(self.message.split())
        return f"{self.path}: {text}" if self.path is not None else text


class MissingStageError(ToolkitError):
    """A stage's input is absent: names the file and the command that writes it."""

    def __init__(self, path: str | Path, command: str):
        super().__init__(f"not found: run `{command}` first", path)
        self.command = command


def os_error_line(exc: OSError) -> str:
    """One line for an operating-system error: the path(s), the problem, what to do."""
    problem = exc.strerror or (os.strerror(exc.errno) if exc.errno else str(exc))
    where = ""
    if exc.filename is not None:
        where = f"{os.fsdecode(exc.filename)}: "
        if exc.filename2 is not None:
            where = f"{os.fsdecode(exc.filename)} -> {os.fsdecode(exc.filename2)}: "
    hint = _OS_ERROR_HINTS.get(exc.errno) if exc.errno is not None else None
    line = f"{where}{problem[:1].lower()}{problem[1:]}"
    return " ".join((f"{line} ({hint})" if hint else line).split())
