"""The one exception type a user can cause.

Anything wrong with the user's data, paths or options raises :class:`ToolkitError`. The CLI
prints it as a single line (``error: <path>: <problem>``) and exits with code 2; programming
errors keep their traceback.
"""

from __future__ import annotations

from pathlib import Path


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
