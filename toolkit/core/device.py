"""Device and precision: one rule for training, validation, prediction, the cascade and the container.

``auto`` picks CUDA when torch sees a GPU, else the CPU; on CUDA the network runs under fp16
autocast (training adds gradient scaling); on the CPU under bf16 autocast when the CPU
computes bf16 natively (AVX-512 BF16 or AMX-BF16: about 2x faster than float32 there), else
in float32 (torch emulates bf16 elsewhere, many times slower). ``fp32``/``bf16``/``fp16``
override it; fp16 needs CUDA. The pick is a pure function of the device and the CPU's flags
(:func:`auto_precision`), so it is testable with fake flags; losses and Dice are computed in
float32 whatever the network runs under.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable

import torch

from toolkit.errors import ToolkitError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16", "fp16")  # what a network runs under
PRECISION_CHOICES = ("auto", *PRECISIONS)  # what a user may ask for
# CPU flags (as in /proc/cpuinfo) of native bf16 arithmetic; without one torch emulates it
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
CPU_FLAGS_ENV = "TOOLKIT_CPU_FLAGS"  # replaces /proc/cpuinfo's flags (tests)


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


def auto_precision(device_type: str, flags: Iterable[str] | None) -> str:
    """``auto``'s pick: fp16 on CUDA; on the CPU bf16 when ``flags`` (None: unknown) show
    native bf16, else fp32."""
    if device_type == "cuda":
        return "fp16"
    return "bf16" if flags is not None and native_bf16(flags) else "fp32"


def resolve_precision(
    precision: str, device: torch.device, flags: Iterable[str] | None = None
) -> str:
    """``auto`` -> :func:`auto_precision` with ``flags`` (default: this CPU's); fp16 on the CPU
    is an error."""
    if precision == "auto":
        return auto_precision(device.type, cpu_flags() if flags is None else flags)
    if precision not in PRECISIONS:
        raise ToolkitError(
            f"--precision must be one of {', '.join(PRECISION_CHOICES)}, not {precision!r}"
        )
    if precision == "fp16" and device.type != "cuda":
        raise ToolkitError("--precision fp16 needs a CUDA device (use bf16 or fp32 on the CPU)")
    return precision


def describe_precision(requested: str, resolved: str, device: torch.device) -> str:
    """What runs and why, for the logs: ``bf16 (auto: this CPU computes bf16 natively)``."""
    if requested != "auto":
        return resolved
    if device.type == "cuda":
        return f"{resolved} (auto: CUDA)"
    if resolved == "bf16":
        return "bf16 (auto: this CPU computes bf16 natively)"
    return "fp32 (auto: no native bf16 on this CPU; --precision bf16 would be emulated)"


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
    """This CPU's flags from ``/proc/cpuinfo``; None where they cannot be read (not Linux).

    ``TOOLKIT_CPU_FLAGS`` (comma- or space-separated) replaces them: the test suite pins an
    AVX2 CPU with it, so that ``auto`` means fp32 in every test on every machine.
    """
    pinned = os.environ.get(CPU_FLAGS_ENV)
    if pinned is not None:
        return pinned.replace(",", " ").split()
    try:
        with open("/proc/cpuinfo") as fh:
            return next((line for line in fh if line.startswith("flags")), "").split()
    except OSError:
        return None


def cpu_has_native_bf16() -> bool:
    """Without AVX-512 BF16 or AMX, torch emulates bf16 and autocast is many times slower."""
    flags = cpu_flags()
    return True if flags is None else native_bf16(flags)  # unknown: trust the user's choice
