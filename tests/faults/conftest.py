"""The fault tests' small disk: a tmpfs of its own (where this machine lets the tests mount
one) that a test fills up."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fault_helpers import mount_tmpfs, unmount


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    """A 64 MB file system of its own, empty; unmounted after the test."""
    disk = tmp_path / "disk"
    mount_tmpfs(disk, "64m")
    try:
        yield disk
    finally:
        unmount(disk)
