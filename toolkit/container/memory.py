"""A container's peak memory: the kernel's high-water mark of its cgroup, or sampled statistics.

With the private podman service the container runs under a cgroup made for it, whose
high-water mark (``memory.max_usage_in_bytes``, cgroup v1, or ``memory.peak``, cgroup v2)
outlives the container; with another engine the SDK's statistics are sampled while it runs.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from pathlib import Path

from toolkit.errors import ToolkitError

CGROUP_ROOT = Path("/sys/fs/cgroup")


def parse_memory(text: str) -> int:
    """``"8g"`` -> bytes; also ``512m``, ``1024k`` and plain bytes."""
    units = {"k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
    value = text.strip().lower().removesuffix("b")
    try:
        if value and value[-1] in units:
            return int(float(value[:-1]) * units[value[-1]])
        return int(value)
    except ValueError:
        raise ToolkitError(f"memory limit {text!r} is not a size such as 8g or 512m") from None


# --- peak memory -----------------------------------------------------------------------


class CgroupPeak:
    """A parent cgroup for one container; its high-water mark survives the container.

    Works where we may create cgroups (root) and the engine honours ``cgroup_parent`` with
    plain paths (podman with the cgroupfs manager, as configured by the private service).
    """

    def __init__(self, root: Path = CGROUP_ROOT):
        self.name = f"toolkit-run-{uuid.uuid4().hex[:12]}"
        self.root = root
        v1 = root / "memory"
        if (v1 / "memory.max_usage_in_bytes").is_file():
            self.version, self.memory_dir, self.peak_file = (
                1,
                v1 / self.name,
                "memory.max_usage_in_bytes",
            )
        elif "memory" in _read(root / "cgroup.controllers").split():
            self.version, self.memory_dir, self.peak_file = 2, root / self.name, "memory.peak"
        else:
            raise OSError("no cgroup memory controller found")
        self.memory_dir.mkdir()

    @property
    def parent(self) -> str:
        return f"/{self.name}"

    @property
    def source(self) -> str:
        return f"cgroup v{self.version} {self.peak_file} of the container's parent cgroup"

    def peak(self) -> int | None:
        text = _read(self.memory_dir / self.peak_file).strip()
        return int(text) if text.isdigit() else None

    def remove(self) -> None:
        # the engine created the same path under every controller (v1) or below ours (v2)
        tops = (
            [p / self.name for p in self.root.iterdir() if p.is_dir()]
            if self.version == 1
            else [self.memory_dir]
        )
        for top in tops:
            if not top.is_dir():
                continue
            for folder in sorted(
                (p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
            ):
                with contextlib.suppress(OSError):
                    folder.rmdir()
            with contextlib.suppress(OSError):
                top.rmdir()


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


class StatsSampler:
    """Samples the engine's memory statistics while a container runs (a lower bound)."""

    source = "engine statistics sampled while running (a lower bound)"

    def __init__(self, container):
        self.container = container
        self.peak_bytes: int | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with contextlib.suppress(Exception):
            for stats in self.container.stats(stream=True, decode=True):
                memory = stats.get("memory_stats") or {}
                value = memory.get("max_usage") or memory.get("usage")
                if value:
                    self.peak_bytes = max(self.peak_bytes or 0, int(value))

    def stop(self) -> int | None:
        self._thread.join(timeout=5)
        return self.peak_bytes


# --- the engine ------------------------------------------------------------------------
