"""Device and precision: one rule for training, validation, prediction, the cascade and the container.

``auto`` picks CUDA when torch sees a GPU, else the CPU; on CUDA the network runs under fp16
autocast (training adds gradient scaling), on the CPU in float32. bf16 autocast is the
user's choice on either device; fp16 needs CUDA. Whether a CPU computes bf16 natively is a
pure function of its flags (:func:`native_bf16`), so it is testable with fake flags.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch

from toolkit.errors import ToolkitError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16", "fp16")  # what a network runs under
PRECISION_CHOICES = ("auto", *PRECISIONS)  # what a user may ask for
# CPU flags (as in /proc/cpuinfo) of native bf16 arithmetic; without one torch emulates it
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` -> CUDA when available, else the CPU; ``cuda`` without a GPU is an error."""
    if isinstance(device, torch.device):
        return device
    name = device.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ToolkitError(
                "--device cuda: no CUDA device is available (use --device cpu or auto)"
            )
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise ToolkitError(f"--device must be one of {', '.join(DEVICES)}, not {device!r}")


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> fp16 autocast on CUDA, float32 on the CPU; fp16 on the CPU is an error."""
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if precision not in PRECISIONS:
        raise ToolkitError(
            f"--precision must be one of {', '.join(PRECISION_CHOICES)}, not {precision!r}"
        )
    if precision == "fp16" and device.type != "cuda":
        raise ToolkitError("--precision fp16 needs a CUDA device (use bf16 or fp32 on the CPU)")
    return precision


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context a network runs under (none for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def native_bf16(flags: Iterable[str]) -> bool:
    """Whether a CPU with these flags computes bf16 natively (AVX-512 BF16 or AMX-BF16)."""
    flags = set(flags)
    return any(flag in flags for flag in NATIVE_BF16_FLAGS)


def cpu_flags() -> list[str] | None:
    """This CPU's flags from ``/proc/cpuinfo``; None where they cannot be read (not Linux)."""
    try:
        with open("/proc/cpuinfo") as fh:
            return next((line for line in fh if line.startswith("flags")), "").split()
    except OSError:
        return None


def cpu_has_native_bf16() -> bool:
    """Without AVX-512 BF16 or AMX, torch emulates bf16 and autocast is many times slower."""
    flags = cpu_flags()
    return True if flags is None else native_bf16(flags)  # unknown: trust the user's choice
