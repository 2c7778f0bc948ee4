"""The fuzz suite's settings, its sandbox checks and its count of generated inputs.

``TOOLKIT_FUZZ_EXAMPLES`` sets how many inputs each fuzz test generates (default
:data:`DEFAULT_EXAMPLES`, which keeps the suite within seconds in ``make test``). Each test
records how many it tried; the run ends with one line giving the total.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fuzz_helpers import EXAMPLES

TESTS = Path(__file__).resolve().parents[1]
for folder in ("container", "inference"):
    if str(TESTS / folder) not in sys.path:
        sys.path.insert(0, str(TESTS / folder))

COUNT_KEY = "fuzz_inputs"


class Counter:
    def __init__(self) -> None:
        self.tried = 0

    def __call__(self) -> None:
        self.tried += 1


@pytest.fixture
def tried(request) -> Iterator[Counter]:
    """Call it once per generated input; the count goes into the test's report."""
    counter = Counter()
    yield counter
    request.node.user_properties.append((COUNT_KEY, counter.tried))


_START = time.monotonic()


def pytest_terminal_summary(terminalreporter) -> None:
    total, tests = 0, 0
    for reports in terminalreporter.stats.values():
        for report in reports:
            for key, value in getattr(report, "user_properties", ()):
                if key == COUNT_KEY and getattr(report, "when", "") == "teardown":
                    total, tests = total + value, tests + 1
    if tests:
        terminalreporter.write_line(
            f"fuzz: {total} generated inputs tried by {tests} fuzz tests "
            f"({EXAMPLES} per test; TOOLKIT_FUZZ_EXAMPLES scales it), "
            f"{time.monotonic() - _START:.0f} s since the session started"
        )
