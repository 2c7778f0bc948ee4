"""The platform's resource limits, as small rules the export and the test runs apply.

Facts from Grand Challenge's source (2025): of the memory an algorithm selects (4 to 32 GB,
default 8), 1 GiB is reserved for the system, so the job itself gets the rest; an uploaded
image may be at most 10 GiB; a phase limits each job's time (default 3600 s); the GPU an
algorithm can select is an NVIDIA T4 with 16 GB unless the challenge allows others.
"""

from __future__ import annotations

import shutil
import subprocess

from toolkit.container.memory import parse_memory
from toolkit.errors import ToolkitError

GIB = 1024**3
SYSTEM_RESERVED_BYTES = 1 * GIB  # of the selected memory, kept for the platform's own processes
MAXIMUM_IMAGE_BYTES = 10 * GIB  # an upload larger than this is refused
LARGE_IMAGE_BYTES = 4 * GIB  # above this, every job waits longer for the image: warn
T4_GPU_BYTES = 16 * GIB  # the platform's default GPU


def job_memory_bytes(selected: str) -> int:
    """What the job gets of ``--memory``: the selection minus the system's reservation."""
    total = parse_memory(selected)
    if total <= SYSTEM_RESERVED_BYTES:
        raise ToolkitError(
            f"--memory {selected} leaves nothing for the job: the platform reserves 1 GiB of the selected memory for the system"
        )
    return total - SYSTEM_RESERVED_BYTES


def describe_job_memory(selected: str) -> str:
    return f"{job_memory_bytes(selected) / GIB:.1f} GiB ({selected} selected minus the platform's 1 GiB reservation)"


def check_image_size(size_bytes: int, what: str) -> str | None:
    """Refuse (one line) what the platform would refuse; a warning above a few GB."""
    if size_bytes > MAXIMUM_IMAGE_BYTES:
        raise ToolkitError(
            f"{what} is {size_bytes / GIB:.2f} GiB; the platform refuses images over {MAXIMUM_IMAGE_BYTES / GIB:.0f} GiB "
            "(use --device cpu for a smaller torch, or --model-mode tarball to keep the weights out of the image)"
        )
    if size_bytes > LARGE_IMAGE_BYTES:
        return (
            f"{what} is {size_bytes / GIB:.2f} GiB: the platform accepts up to {MAXIMUM_IMAGE_BYTES / GIB:.0f} GiB, "
            "but every job loads the image first; --model-mode tarball or --device cpu make it smaller"
        )
    return None


def time_problem(seconds: float, limit: float) -> str | None:
    if seconds > limit:
        return f"took {seconds:.1f} s, over the time limit of {limit:.0f} s (--time-limit, the phase's limit per job)"
    return None


def memory_problem(peak_mb: float | None, selected: str) -> str | None:
    """A peak over what the job gets fails on the platform (killed, exit 137)."""
    if peak_mb is None:
        return None
    available = job_memory_bytes(selected) / 1024**2
    if peak_mb > available:
        return f"peak memory {peak_mb:.0f} MB is over the {available:.0f} MB a job gets ({describe_job_memory(selected)})"
    return None


def gpu_memory_report(
    cases: list[tuple[str, int, float | None]], gpu_bytes: int = T4_GPU_BYTES
) -> str | None:
    """``cases``: (case, input voxels, GPU peak MB). The line for the largest case, or
    ``None`` when no case ran on a GPU."""
    measured = [c for c in cases if c[2] is not None]
    if not measured:
        return None
    case, voxels, peak = max(measured, key=lambda c: c[1])
    gpu_mb = gpu_bytes / 1024**2
    share = f"{peak:.0f} MB of the T4's {gpu_mb:.0f} MB ({100 * peak / gpu_mb:.0f}%)"
    verdict = (
        "fits"
        if peak <= gpu_mb
        else "does NOT fit: ask the challenge for a larger GPU or predict on the CPU"
    )
    return f"GPU memory at the largest test case ({case}, {voxels} voxels): {share}, {verdict}"


def host_has_gpu() -> bool:
    """An NVIDIA GPU the engine can hand to a container (``nvidia-smi -L`` lists one)."""
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return False
    try:
        result = subprocess.run([tool, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0 and "GPU" in result.stdout
