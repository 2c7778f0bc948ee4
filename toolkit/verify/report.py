"""What ``toolkit verify`` reports: problems (case, file, message, severity) and the summary."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any


class Severity(str, Enum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset: which case, which file, what."""

    case: str  # "" for the dataset as a whole
    file: Path | None
    message: str
    severity: Severity = Severity.ERROR

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR

    def line(self) -> str:
        parts = [self.severity.value]
        if self.case:
            parts.append(f"case {self.case}")
        if self.file is not None:
            parts.append(str(self.file))
        return ": ".join(parts) + f": {self.message}"

    def to_json(self, root: Path) -> dict[str, Any]:
        file = None
        if self.file is not None:
            file = (
                str(self.file.relative_to(root))
                if self.file.is_relative_to(root)
                else str(self.file)
            )
        return {
            "case": self.case,
            "file": file,
            "message": self.message,
            "severity": self.severity.value,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], root: Path) -> Problem:
        file = data.get("file")
        return cls(
            case=data["case"],
            file=None if file is None else root / file,
            message=data["message"],
            severity=Severity(data["severity"]),
        )


@dataclass
class Report:
    """The outcome of verifying one dataset."""

    folder: Path
    problems: list[Problem] = field(default_factory=list)
    training_cases: int = 0
    test_cases: int = 0
    cases_read: int = 0  # cases whose files were read this time (the rest came from the cache)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.is_error]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if not p.is_error]

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def broken_cases(self) -> list[str]:
        return sorted({p.case for p in self.errors if p.case})

    def summary(self) -> str:
        cached = self.training_cases + self.test_cases - self.cases_read
        note = f" ({cached} unchanged since the last check)" if cached else ""
        return (
            f"{self.training_cases} training and {self.test_cases} test cases{note}: "
            f"{count_phrase(len(self.errors), 'error')}, {count_phrase(len(self.warnings), 'warning')}"
        )


def count_phrase(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")
