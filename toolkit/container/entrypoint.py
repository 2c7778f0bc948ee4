"""What the algorithm container does for one job, following Grand Challenge's contract.

1. Find the inputs: ``/input/inputs.json`` (when present) names each interface's
   ``relative_path``; without it (local runs) an image interface ``S`` is the folder
   ``/input/images/S/``. One interface per channel, in channel order; each folder holds
   exactly one image (``.mha``, ``.tif``, ``.nii.gz``, ...), whose name is not fixed.
2. Run the ensemble of ``ensemble.json`` (configurations' probabilities averaged, folds'
   logits averaged) with its postprocessing, through :mod:`toolkit.inference`.
3. Write exactly one single-channel uint8 image ``/output/images/<output-slug>/output.mha``
   with the input's geometry, and ``/output/results.json`` with the label volumes.

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

from toolkit.container.spec import AlgorithmSpec, EnsembleSpec
from toolkit.errors import ToolkitError
from toolkit.io.atomic import write_json
from toolkit.io.images import Geometry, read_channels, write_image
from toolkit.io.json_files import read_json
from toolkit.workspace import DatasetPaths

INPUTS_JSON = "inputs.json"
RESULTS_JSON = "results.json"
OUTPUT_IMAGE = "output.mha"
ENSEMBLE_JSON = "ensemble.json"
# suffixes of image files the platform hands over (and local runs may use)
INPUT_SUFFIXES = (".mha", ".tif", ".tiff", ".nii.gz", ".nii", ".nrrd")

# defaults inside the image; the Dockerfile sets the environment variables
ENV_MODEL_DIR = "TOOLKIT_MODEL_DIR"
ENV_ALGORITHM_JSON = "TOOLKIT_ALGORITHM_JSON"
DEFAULT_INPUT = Path("/input")
DEFAULT_OUTPUT = Path("/output")
DEFAULT_MODEL_DIR = Path("/opt/ml/model")
DEFAULT_ALGORITHM_JSON = Path("/opt/algorithm/algorithm.json")

# the job's last stderr line; test runs read the time and peak memory from it
DONE_LINE = "wrote {output} in {seconds:.1f} s (peak memory {peak_mb:.0f} MB)"
DONE_PATTERN = re.compile(r"wrote \S+ in (?P<seconds>[\d.]+) s \(peak memory (?P<peak_mb>\d+) MB\)")

EXIT_USER_ERROR = 2
EXIT_FAILURE = 1


# --- finding the inputs (pure functions of the folder's content) -----------------------


def read_inputs_json(path: Path) -> dict[str, str]:
    """``inputs.json`` -> {interface slug: relative path}."""
    data = read_json(
        path, what="inputs.json (a list of inputs, each with an 'interface')", kind=list
    )
    folders: dict[str, str] = {}
    for k, entry in enumerate(data):
        interface = entry.get("interface") if isinstance(entry, dict) else None
        if not isinstance(interface, dict) or not isinstance(interface.get("slug"), str):
            raise ToolkitError(f"input {k} has no interface slug", path)
        relative = interface.get("relative_path")
        if isinstance(relative, str) and relative:
            folders[interface["slug"]] = relative
    return folders


def input_folders(input_dir: Path, slugs: list[str]) -> list[Path]:
    """The folder of each input interface, in channel order."""
    inputs_json = input_dir / INPUTS_JSON
    if inputs_json.is_file():
        declared = read_inputs_json(inputs_json)
        missing = [s for s in slugs if s not in declared]
        if missing:
            raise ToolkitError(
                f"has no input for interface(s) {missing}; it declares {sorted(declared) or 'none'} "
                f"(this algorithm reads {slugs}, one per channel)",
                inputs_json,
            )
        return [input_dir / declared[s] for s in slugs]
    folders = [input_dir / "images" / s for s in slugs]
    missing = [f for f in folders if not f.is_dir()]
    if missing:
        images = input_dir / "images"
        present = sorted(p.name for p in images.iterdir() if p.is_dir()) if images.is_dir() else []
        raise ToolkitError(
            f"no input folder images/{missing[0].name}/ (found {present or 'no folders'} under images/; "
            f"this algorithm reads {slugs}, one per channel)",
            input_dir,
        )
    return folders


def is_input_image(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and not name.startswith(".") and name.endswith(INPUT_SUFFIXES)


def find_image(folder: Path) -> Path:
    """The one image in an interface folder (its file name is not fixed)."""
    if not folder.is_dir():
        raise ToolkitError("input folder not found", folder)
    images = sorted(p for p in folder.iterdir() if is_input_image(p))
    if not images:
        raise ToolkitError(f"holds no image ({', '.join(INPUT_SUFFIXES)})", folder)
    if len(images) > 1:
        raise ToolkitError(
            f"holds {len(images)} images ({', '.join(p.name for p in images)}); the platform gives one per interface",
            folder,
        )
    return images[0]


def find_inputs(input_dir: Path, spec: AlgorithmSpec) -> list[Path]:
    return [find_image(folder) for folder in input_folders(input_dir, spec.input_slugs)]


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
    seconds: float,
) -> dict[str, Any]:
    return {
        "inputs": [str(p.relative_to(input_dir)) for p in inputs],
        "output": f"{spec.output_relative_path}/{OUTPUT_IMAGE}",
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
    model_root: Path, ensemble: EnsembleSpec, image: np.ndarray, geometry: Geometry, device: str
) -> np.ndarray:
    """The ensemble's postprocessed label map, ``(z, y, x)`` in the input's geometry.

    ``model_root`` holds ``models/<config>/`` as a dataset's workspace folder does, so the
    same call predicts from the workspace (the reference ``test-container`` compares with)
    and from the exported model. One configuration is predicted exactly as ``toolkit
    predict`` does; several are averaged by :func:`predict_with_ensemble`.
    """
    from toolkit.inference.files import predict_with_ensemble
    from toolkit.inference.options import ModelOptions
    from toolkit.inference.predictor import Predictor

    predictors = [
        Predictor.from_model_dir(
            DatasetPaths(model_root).model_dir(config),
            ModelOptions(folds=ensemble.folds, device=device, use_mirroring=ensemble.use_mirroring),
        )
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

    def output_file(self, spec: AlgorithmSpec) -> Path:
        return self.output_dir / spec.output_relative_path / OUTPUT_IMAGE

    @property
    def results_json(self) -> Path:
        return self.output_dir / RESULTS_JSON


def run_job(paths: JobPaths) -> dict[str, Any]:
    """One case from the input folder to the output folder; returns results.json's content."""
    start = time.perf_counter()
    spec = AlgorithmSpec.load(paths.algorithm_json)
    ensemble = EnsembleSpec.load(paths.model_dir / ENSEMBLE_JSON)
    inputs = find_inputs(paths.input_dir, spec)
    image, geometry = read_channels(inputs)
    device = choose_device(spec.device)
    labels = to_output_labels(
        predict_labels(paths.model_dir, ensemble, image, geometry, device), spec
    )
    if labels.shape != geometry.shape_zyx:
        raise RuntimeError(
            f"prediction of shape {labels.shape} does not match the input's {geometry.shape_zyx}"
        )
    output = paths.output_file(spec)
    write_image(output, labels, geometry)
    results = results_document(
        inputs, paths.input_dir, labels, geometry, spec, ensemble, time.perf_counter() - start
    )
    write_json(paths.results_json, results)
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
        output=results["output"], seconds=results["seconds"], peak_mb=peak_rss_mb()
    )
    print(done, file=sys.stderr)
    return 0
