"""What every fuzz test checks, and the generators they share.

A generated input runs in a fresh sandbox folder holding the input, a decoy folder beside
it (``outside/``, what an escaping path would reach) and the folder the reader or command may
write to. :func:`run_confined` snapshots the sandbox before and after: the call may end well
or raise :class:`~toolkit.errors.ToolkitError` (one line), any other exception is a failure
(a traceback a user would see); a path created or changed outside the allowed folder is an
escape; a path that was there before and is gone (or changed) outside it is a lost file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from toolkit.errors import ToolkitError

DEFAULT_EXAMPLES = 30
# inputs per fuzz test: `TOOLKIT_FUZZ_EXAMPLES` scales the suite (10,000 and more by hand)
EXAMPLES = int(os.environ.get("TOOLKIT_FUZZ_EXAMPLES") or DEFAULT_EXAMPLES)
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # nothing written outside the test's folders
    derandomize=False,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,  # the counter adds up over the examples
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)
Snapshot = dict[str, tuple[str, int, bytes | None]]


def snapshot(root: Path) -> Snapshot:
    """Every path under ``root``: its kind, size, and (small files) content."""
    seen: Snapshot = {}
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            path = Path(folder) / name
            relative = str(path.relative_to(root))
            if path.is_symlink():
                seen[relative] = ("link", 0, os.readlink(path).encode())
            elif path.is_dir():
                seen[relative] = ("dir", 0, None)
            else:
                size = path.stat().st_size
                seen[relative] = ("file", size, path.read_bytes() if size < 1 << 16 else None)
    return seen


def _under(relative: str, allowed: list[str]) -> bool:
    return any(relative == a or relative.startswith(a + os.sep) for a in allowed)


def check_sandbox(before: Snapshot, after: Snapshot, allowed: list[str]) -> None:
    """No path outside ``allowed`` (relative folders) created, changed or lost."""
    created = [p for p in after if p not in before and not _under(p, allowed)]
    assert not created, f"written outside the intended folder: {created[:5]}"
    lost = [p for p in before if p not in after and not _under(p, allowed)]
    assert not lost, f"lost: {lost[:5]}"
    changed = [p for p in before if p in after and after[p] != before[p] and not _under(p, allowed)]
    assert not changed, f"changed outside the intended folder: {changed[:5]}"


@contextmanager
def sandbox(parent: Path) -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="fuzz-", dir=parent))
    (root / "outside").mkdir()
    (root / "outside" / "secret.txt").write_text("not to be read or written")
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_confined(root: Path, allowed: list[str], call: Callable[[], Any]) -> Any:
    """``call()`` in the sandbox ``root``: a ToolkitError is an answer (one line), any other
    exception a failure; nothing outside ``allowed`` may change."""
    before = snapshot(root)
    result: Any = None
    try:
        result = call()
    except ToolkitError as exc:
        assert "\n" not in exc.one_line()
        result = exc
    check_sandbox(before, snapshot(root), allowed)
    return result


# --- generators ------------------------------------------------------------------------

HOSTILE_PATHS = [
    "..",
    "../outside",
    "../../outside/secret.txt",
    "images/../../outside",
    "images/x/../../..",
    "/etc",
    "/",
    "\\..\\outside",
    "..\\outside",
    "C:/outside",
    "c:\\outside",
    ".",
    "./",
    "",
    "images/a\x00b",
    "images/\n",
    "images//x",
    "images/x/",
    "~",
    "images/ok",
    "images/t2",
]
NAME_PARTS = ["..", ".", "images", "x", "", "/", "\\", "outside", "a b", "#", "ok"]

path_text = st.one_of(
    st.sampled_from(HOSTILE_PATHS),
    st.lists(st.sampled_from(NAME_PARTS), min_size=1, max_size=5).map("/".join),
    st.text(max_size=12),
)
name_text = st.one_of(
    st.sampled_from(["..", ".", "", "a/b", "a\\b", ".hidden", "3d_fullres", "2d", "x\n", "ok"]),
    st.text(max_size=10),
)
json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    path_text,
)
json_value = st.recursive(
    json_scalar,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def maybe(strategy, otherwise=json_value):
    """Mostly ``strategy``, sometimes any JSON value (a wrong type)."""
    return st.one_of(strategy, strategy, strategy, otherwise)
