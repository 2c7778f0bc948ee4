"""The network runtimes that need no torch: ONNX Runtime and OpenVINO, each turning one ONNX
file into "logits of this batch of patches" (a :data:`~toolkit.inference.windows.Forward` on
numpy arrays).

Which backend runs a model (``predict --backend``): ``torch`` for a model of checkpoints; for a
model of ONNX files the first of :data:`RUNTIMES` that is installed, unless one is named.
Precision: OpenVINO's CPU plugin picks bf16 by itself on CPUs that compute it natively (AMX,
AVX-512 BF16) unless ``fp32`` is asked (``INFERENCE_PRECISION_HINT``); ONNX Runtime's CPU
provider runs the file as it is, in float32.

The runtimes' packages are imported when a session is made, never at import time, so that
``toolkit --help`` and the torch image need neither.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toolkit.errors import ToolkitError
from toolkit.inference.windows import Forward

TORCH = "torch"
ONNXRUNTIME = "onnxruntime"
OPENVINO = "openvino"
# the order in which an ONNX model's backend is picked when none is named
RUNTIMES = (OPENVINO, ONNXRUNTIME)
BACKENDS = (TORCH, *RUNTIMES)
# the Python module of each runtime
_MODULES = {ONNXRUNTIME: "onnxruntime", OPENVINO: "openvino", TORCH: "torch"}
# precisions a runtime accepts (ModelOptions.precision); auto: the runtime's own choice
RUNTIME_PRECISIONS = {OPENVINO: ("auto", "fp32", "bf16", "fp16"), ONNXRUNTIME: ("auto", "fp32")}
_OPENVINO_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}


def is_installed(backend: str) -> bool:
    return importlib.util.find_spec(_MODULES[backend]) is not None


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ToolkitError(f"--backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    return backend


def choose_backend(requested: str | None, *, onnx_model: bool, installed=is_installed) -> str:
    """The backend that runs a model: ``requested``, else torch for a model of checkpoints and
    the first installed runtime for a model of ONNX files (pure given ``installed``)."""
    if requested is not None:
        backend = check_backend(requested)
    elif not onnx_model:
        backend = TORCH
    else:
        available = [r for r in RUNTIMES if installed(r)]
        if not available:
            raise ToolkitError(
                "the model holds ONNX networks but neither openvino nor onnxruntime is "
                "installed (both are dependencies of the toolkit): pip install openvino "
                "(or onnxruntime)"
            )
        backend = available[0]
    if not installed(backend):
        raise ToolkitError(
            f"--backend {backend}: the {_MODULES[backend]} package is not installed "
            f"(a dependency of the toolkit): pip install {_MODULES[backend]}"
        )
    return backend


def check_runtime_precision(backend: str, precision: str) -> str:
    allowed = RUNTIME_PRECISIONS[backend]
    if precision not in allowed:
        raise ToolkitError(
            f"--precision {precision} is not available with --backend {backend} "
            f"(one of {', '.join(allowed)})"
        )
    return precision


def cpu_threads() -> int:
    """The cores this process may use (its affinity, which a container's cpuset limits)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class NetworkIO:
    """An ONNX network's input and output names and their float32 layouts."""

    input_name: str
    output_name: str


def onnxruntime_forward(path: Path, io: NetworkIO, *, threads: int | None = None) -> Forward:
    """An ``onnxruntime.InferenceSession`` on the CPU as a forward: ``(b, c, ...)`` float32 ->
    logits ``(b, k, ...)`` float32."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or cpu_threads()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        session = onnxruntime.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # the runtime's own error types; a damaged file is the user's
        raise ToolkitError(f"onnxruntime cannot load it ({_first_line(exc)})", path) from None

    def forward(x: np.ndarray) -> np.ndarray:
        return session.run([io.output_name], {io.input_name: np.ascontiguousarray(x)})[0]

    return forward


def openvino_forward(
    path: Path, io: NetworkIO, *, precision: str = "auto", threads: int | None = None
) -> Forward:
    """An OpenVINO model compiled for the CPU as a forward; ``precision`` auto leaves the
    choice to OpenVINO (bf16 on CPUs with AMX or AVX-512 BF16), else sets its inference
    precision hint."""
    import openvino

    config: dict[str, str] = {"INFERENCE_NUM_THREADS": str(threads or cpu_threads())}
    if precision != "auto":
        config["INFERENCE_PRECISION_HINT"] = _OPENVINO_HINTS[precision]
    try:
        core = openvino.Core()
        compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
    except Exception as exc:  # the runtime's own error types; a damaged file is the user's
        raise ToolkitError(f"openvino cannot load it ({_first_line(exc)})", path) from None
    request = compiled.create_infer_request()
    output = compiled.output(io.output_name)

    def forward(x: np.ndarray) -> np.ndarray:
        result = request.infer({io.input_name: np.ascontiguousarray(x)})
        return np.asarray(result[output], dtype=np.float32)

    return forward


def runtime_forward(backend: str, path: Path, io: NetworkIO, *, precision: str = "auto") -> Forward:
    check_runtime_precision(backend, precision)
    if backend == ONNXRUNTIME:
        return onnxruntime_forward(path, io)
    if backend == OPENVINO:
        return openvino_forward(path, io, precision=precision)
    raise ValueError(f"{backend!r} is not a runtime of ONNX files (one of {RUNTIMES})")


def runtime_version(backend: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(_MODULES[backend])
    except PackageNotFoundError:
        return "?"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def describe_backends(backends: Sequence[str]) -> str:
    return ", ".join(f"{b} {runtime_version(b)}" for b in backends)
