"""What the fault tests share: mounting a small disk (a tmpfs) and filling it, the command
line run in this process, and the checks of a user's error."""

from __future__ import annotations

import gc
import os
import subprocess
from pathlib import Path

import pytest

from toolkit.cli import main

BALLAST = ".ballast"


def mount_tmpfs(folder: Path, size: str, *, read_only: bool = False) -> None:
    """Mount a tmpfs of ``size`` on ``folder``; skip the test where mounting is not allowed."""
    folder.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")


def unmount(folder: Path) -> None:
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def free_bytes(folder: Path) -> int:
    stats = os.statvfs(folder)
    return stats.f_bfree * stats.f_frsize


def fill(disk: Path, leave: int) -> None:
    """Take the disk's space but ``leave`` bytes (rounded to its blocks) with a ballast file."""
    gc.collect()  # files deleted but still open in this process give their space back first
    ballast = disk / BALLAST
    ballast.unlink(missing_ok=True)
    size = free_bytes(disk) - leave
    if size > 0:
        with open(ballast, "wb") as fh:
            os.posix_fallocate(fh.fileno(), 0, size)


def free(disk: Path) -> None:
    (disk / BALLAST).unlink(missing_ok=True)


def run(capsys, *args) -> tuple[int, str, str]:
    """``toolkit ARGS`` in this process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as done:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return done.value.code or 0, out.out, out.err


def assert_one_line(err: str, *phrases: str) -> None:
    """A user's error: one last line ``error: ...`` (after any progress lines), no traceback,
    each phrase in it."""
    lines = err.splitlines()
    assert lines and lines[-1].startswith("error: "), err
    assert sum(line.startswith("error: ") for line in lines) == 1, err
    assert "Traceback" not in err, err
    for phrase in phrases:
        assert phrase in lines[-1], (phrase, err)


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*.tmp*")]
