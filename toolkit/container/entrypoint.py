"""What the algorithm container does for one job, following Grand Challenge's contract.

1. Choose the interface: ``/input/inputs.json`` lists the sockets the job got (and their
   ``relative_path``); the algorithm's interface with exactly those input sockets serves it.
   Without the file (local runs) the interface whose input folders exist does. Each image
   input socket feeds its bound channel; its folder holds exactly one image (``.mha`` or
   ``.tif`` on the platform; ``.nii.gz`` and others locally), whose name is not fixed.
2. Run the ensemble of ``ensemble.json`` (configurations' probabilities averaged, folds'
   logits averaged) with its postprocessing, through :mod:`toolkit.inference`.
3. Check the label values against every output socket's overlay segments, then write one
   single-channel uint8 image ``/output/<relative_path>/output.mha`` per image output socket
   (the input's geometry), the label volumes to every JSON output socket, and
   ``/output/results.json``.

Any failure exits non-zero with one clear line on stderr (the platform shows stderr to the
user). Scratch goes to ``/tmp`` only. The same code runs outside a container, with the
folders given as options, which is how ``toolkit test-container --dry-run`` checks an
export on a machine without a container engine.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.container.interfaces import OUTPUT_IMAGE, Socket
from toolkit.container.job_inputs import (
    Choice,
    choose,
    find_image,
)
from toolkit.container.spec import AlgorithmSpec, EnsembleSpec
from toolkit.errors import ToolkitError
from toolkit.io.atomic import write_json
from toolkit.io.images import Geometry, read_channels, write_image
from toolkit.workspace import DatasetPaths

RESULTS_JSON = "results.json"
ENSEMBLE_JSON = "ensemble.json"
# suffixes of image files the platform hands over (and local runs may use)

# defaults inside the image; the Dockerfile sets the environment variables
ENV_MODEL_DIR = "TOOLKIT_MODEL_DIR"
ENV_ALGORITHM_JSON = "TOOLKIT_ALGORITHM_JSON"
DEFAULT_INPUT = Path("/input")
DEFAULT_OUTPUT = Path("/output")
DEFAULT_MODEL_DIR = Path("/opt/ml/model")
DEFAULT_ALGORITHM_JSON = Path("/opt/algorithm/algorithm.json")

# the job's last stderr line; test runs read the time and peak memory from it
DONE_LINE = "wrote {output} in {seconds:.1f} s (peak memory {peak_mb:.0f} MB)"
GPU_SUFFIX = ", GPU peak {gpu_mb:.0f} MB"
DONE_PATTERN = re.compile(
    r"wrote .+ in (?P<seconds>[\d.]+) s \(peak memory (?P<peak_mb>\d+) MB\)(?:, GPU peak (?P<gpu_mb>\d+) MB)?"
)

EXIT_USER_ERROR = 2
EXIT_FAILURE = 1


# --- results ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelVolume:
    name: str
    value: int
    voxels: int
    volume_ml: float


def label_volumes(labels: np.ndarray, geometry: Geometry, spec: AlgorithmSpec) -> list[LabelVolume]:
    """Voxel count and volume (millilitres) of each foreground label."""
    voxel_ml = float(np.prod(geometry.spacing)) / 1000.0
    counts = np.bincount(labels.ravel().astype(np.int64), minlength=max(spec.label_values) + 1)
    names = {}
    for name, value in spec.labels.items():
        names.setdefault(value, name)
    return [
        LabelVolume(
            name=names[v],
            value=v,
            voxels=int(counts[v]),
            volume_ml=round(int(counts[v]) * voxel_ml, 6),
        )
        for v in spec.label_values
        if v != 0
    ]


def results_document(
    inputs: list[Path],
    input_dir: Path,
    labels: np.ndarray,
    geometry: Geometry,
    spec: AlgorithmSpec,
    ensemble: EnsembleSpec,
    choice: Choice,
    seconds: float,
) -> dict[str, Any]:
    return {
        "interface": choice.index + 1,
        "inputs": [str(p.relative_to(input_dir)) for p in inputs],
        "outputs": [f"{s.relative_path}/{OUTPUT_IMAGE}" for s in choice.interface.label_outputs],
        "labels": [v.__dict__ for v in label_volumes(labels, geometry, spec)],
        "configurations": list(ensemble.configurations),
        "folds": list(ensemble.folds),
        "postprocessing": ensemble.postprocessing.to_dict(),
        "seconds": round(seconds, 3),
    }


def to_output_labels(labels: np.ndarray, spec: AlgorithmSpec) -> np.ndarray:
    """uint8, values checked against the declared labels (the platform refuses others)."""
    values = np.unique(labels)
    undeclared = sorted(set(int(v) for v in values) - set(spec.label_values))
    if undeclared:
        raise ToolkitError(
            f"the prediction holds label values {undeclared} that are not declared ({spec.label_values})"
        )
    if max(spec.label_values) > 255:
        raise ToolkitError("labels above 255 do not fit the platform's uint8 segmentation")
    return labels.astype(np.uint8)


def check_segment_values(labels: np.ndarray, socket: Socket) -> None:
    """The socket's overlay segments (and 0) must cover every value written to it."""
    allowed = socket.allowed_values
    if allowed is None:
        return
    outside = sorted(set(np.unique(labels).tolist()) - allowed)
    if outside:
        raise ToolkitError(
            f"the segmentation for socket {socket.slug} holds value(s) {outside} outside its "
            f"overlay segments {sorted(allowed)}: the platform would refuse it"
        )


# --- prediction ------------------------------------------------------------------------


def choose_device(requested: str) -> str:
    """The image's device; a CUDA image without a GPU falls back to the CPU, saying so."""
    if requested != "cuda":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    print(
        "warning: this image was built for CUDA but no GPU is visible; predicting on the CPU (slower)",
        file=sys.stderr,
    )
    return "cpu"


def predict_labels(
    model_root: Path,
    ensemble: EnsembleSpec,
    image: np.ndarray,
    geometry: Geometry,
    device: str,
    runtime: str = "torch",
) -> np.ndarray:
    """The ensemble's postprocessed label map, ``(z, y, x)`` in the input's geometry.

    ``model_root`` holds ``models/<config>/`` as a dataset's workspace folder does, so the
    same call predicts from the workspace (the reference ``test-container`` compares with)
    and from the exported model. One configuration is predicted exactly as ``toolkit
    predict --backend RUNTIME`` does; several are averaged by :func:`predict_with_ensemble`.
    ``runtime``: torch, or openvino / onnxruntime for a lean image (ONNX networks, no torch).
    """
    from toolkit.inference.files import predict_with_ensemble
    from toolkit.inference.options import ModelOptions
    from toolkit.inference.runtime import load_predictor

    options = ModelOptions(
        folds=ensemble.folds,
        device=device,
        use_mirroring=ensemble.use_mirroring,
        backend=runtime,
    )
    predictors = [
        load_predictor(DatasetPaths(model_root).model_dir(config), options)
        for config in ensemble.configurations
    ]
    if len(predictors) == 1:
        prediction = predictors[0].predict_case(image, geometry, with_probabilities=False)
    else:
        prediction = predict_with_ensemble(predictors, image, geometry, with_probabilities=False)
    return prediction.postprocessed(ensemble.postprocessing).labels


# --- the job ---------------------------------------------------------------------------


@dataclass(frozen=True)
class JobPaths:
    input_dir: Path
    output_dir: Path
    model_dir: Path
    algorithm_json: Path

    def output_file(self, socket: Socket) -> Path:
        return self.output_dir / socket.relative_path / OUTPUT_IMAGE

    @property
    def results_json(self) -> Path:
        return self.output_dir / RESULTS_JSON


def gpu_peak_mb(device: str) -> float | None:
    """The GPU memory PyTorch's allocator reserved at its peak, for the test run's report."""
    if device != "cuda":
        return None
    import torch

    return torch.cuda.max_memory_reserved() / 1024**2


def run_job(paths: JobPaths) -> dict[str, Any]:
    """One case from the input folder to the output folder; returns results.json's content."""
    start = time.perf_counter()
    spec = AlgorithmSpec.load(paths.algorithm_json)
    ensemble = EnsembleSpec.load(paths.model_dir / ENSEMBLE_JSON)
    choice = choose(paths.input_dir, spec)
    inputs = [find_image(folder) for folder in choice.folders]
    image, geometry = read_channels(inputs)
    device = choose_device(spec.device)
    labels = to_output_labels(
        predict_labels(paths.model_dir, ensemble, image, geometry, device, spec.runtime), spec
    )
    if labels.shape != geometry.shape_zyx:
        raise RuntimeError(
            f"prediction of shape {labels.shape} does not match the input's {geometry.shape_zyx}"
        )
    for socket in choice.interface.label_outputs:  # all checked before anything is written
        check_segment_values(labels, socket)
    results = results_document(
        inputs,
        paths.input_dir,
        labels,
        geometry,
        spec,
        ensemble,
        choice,
        time.perf_counter() - start,
    )
    for socket in choice.interface.label_outputs:
        write_image(paths.output_file(socket), labels, geometry)
    for socket in choice.interface.json_outputs:
        write_json(paths.output_dir / socket.relative_path, results)
    if RESULTS_JSON not in [s.relative_path for s in choice.interface.json_outputs]:
        write_json(paths.results_json, results)
    gpu = gpu_peak_mb(device)
    if gpu is not None:
        results["gpu_peak_mb"] = round(gpu, 1)
    return results


def parse_args(argv: list[str] | None) -> JobPaths:
    parser = argparse.ArgumentParser(
        prog="entrypoint.py",
        description="Grand Challenge algorithm: segment the case in --input, write --output.",
    )
    parser.add_argument(
        "--input", type=Path, default=DEFAULT_INPUT, help="input folder (default /input)"
    )
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT, help="output folder (default /output)"
    )
    parser.add_argument(
        "--model",
        type=Path,
        default=Path(os.environ.get(ENV_MODEL_DIR) or DEFAULT_MODEL_DIR),
        help=f"model folder with {ENSEMBLE_JSON} (default ${ENV_MODEL_DIR}, else {DEFAULT_MODEL_DIR})",
    )
    parser.add_argument(
        "--algorithm",
        type=Path,
        default=Path(os.environ.get(ENV_ALGORITHM_JSON) or DEFAULT_ALGORITHM_JSON),
        help=f"algorithm.json (default ${ENV_ALGORITHM_JSON}, else {DEFAULT_ALGORITHM_JSON})",
    )
    args = parser.parse_args(argv)
    return JobPaths(args.input, args.output, args.model, args.algorithm)


def peak_rss_mb() -> float:
    """This process's peak resident memory (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(argv: list[str] | None = None) -> int:
    paths = parse_args(argv)
    try:
        results = run_job(paths)
    except ToolkitError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return EXIT_USER_ERROR
    except MemoryError:
        print(
            "error: out of memory while predicting; give the algorithm more memory", file=sys.stderr
        )
        return EXIT_FAILURE
    except Exception as exc:  # the platform shows stderr: the traceback, then one line
        traceback.print_exc()
        print(f"error: prediction failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    done = DONE_LINE.format(
        output=", ".join(results["outputs"]), seconds=results["seconds"], peak_mb=peak_rss_mb()
    )
    if "gpu_peak_mb" in results:
        done += GPU_SUFFIX.format(gpu_mb=results["gpu_peak_mb"])
    print(done, file=sys.stderr)
    return 0
