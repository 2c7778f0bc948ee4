"""What ``toolkit predict`` and ``toolkit ensemble`` do, apart from parsing options.

``predict`` takes its model from ``--model DIR`` (a model folder, ours or nnU-Net v2's), or
from a dataset in the workspace: ``--config`` names one configuration or several (an
ensemble, comma-separated); without it the dataset's ``selection.json`` decides
(configurations, folds and postprocessing chosen by ``toolkit select``), and without a
selection ``3d_fullres`` (else ``2d``) is used. ``--preview`` draws a picture beside each
label map (:func:`toolkit.inference.preview.preview_path`).
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from toolkit.core.postprocessing import Postprocessing
from toolkit.core.selection import Selection
from toolkit.errors import MissingStageError, ToolkitError
from toolkit.inference.case_predictor import CasePredictor
from toolkit.inference.ensemble import ensemble_folders
from toolkit.inference.export import Prediction
from toolkit.inference.files import (
    CaseReport,
    WrittenHook,
    log_prediction_summary,
    predict_paths,
    probabilities_path,
)
from toolkit.inference.options import ModelOptions
from toolkit.inference.preview import preview_path, write_overlay
from toolkit.inference.runtime import load_predictor
from toolkit.io import nifti_scan
from toolkit.io.images import read_image, strip_image_suffix
from toolkit.progress import info
from toolkit.workspace import FILE_ENDING, MODEL_PLANS, DatasetPaths

__all__ = ["PredictOptions", "run_ensemble", "run_predict"]

DEFAULT_CONFIGURATIONS = ("3d_fullres", "2d")


@dataclass(frozen=True, kw_only=True)
class PredictOptions(ModelOptions):
    """``toolkit predict``'s options: how the model is loaded and run, and what is written."""

    save_probabilities: bool = False
    preview: bool = False  # CASE_preview.png beside each CASE label map
    continue_prediction: bool = False  # skip cases whose outputs are all there (--continue)
    quiet: bool = False


@dataclass(frozen=True)
class ModelChoice:
    model_dirs: list[Path]
    folds: Sequence[int | str] | None
    postprocessing: Postprocessing | None
    origin: str  # said to the user: where the choice came from


def choose_models(
    paths: DatasetPaths, configurations: list[str] | None, folds: Sequence[int | str] | None
) -> ModelChoice:
    """The model folders of a dataset to predict with (see the module's docstring)."""
    if configurations:
        dirs = [paths.model_dir(c) for c in configurations]
        origin = f"configuration{'s' if len(dirs) > 1 else ''} {', '.join(configurations)}"
        postprocessing = None
    elif paths.selection_json.is_file():
        selection = Selection.load(paths.selection_json)
        dirs = [paths.model_dir(c) for c in selection.configurations]
        folds = folds if folds is not None else list(selection.folds)
        postprocessing = selection.postprocessing
        origin = f"selection.json ({selection.candidate})"
    else:
        trained = [
            c for c in DEFAULT_CONFIGURATIONS if (paths.model_dir(c) / MODEL_PLANS).is_file()
        ]
        if not trained:
            raise MissingStageError(
                paths.model_dir(DEFAULT_CONFIGURATIONS[0]),
                f"toolkit train {paths.name} 3d_fullres FOLD",
            )
        dirs = [paths.model_dir(trained[0])]
        postprocessing = None
        origin = f"configuration {trained[0]} (no selection.json)"
    for d in dirs:
        if not (d / MODEL_PLANS).is_file():
            raise MissingStageError(d, f"toolkit train {paths.name} {d.name} FOLD")
    return ModelChoice(dirs, folds, postprocessing, origin)


def load_predictors(model_dirs: list[Path], options: ModelOptions) -> list[CasePredictor]:
    """One predictor per model folder, run by ``options.backend`` (torch, or a runtime of
    ONNX files: :func:`toolkit.inference.runtime.load_predictor`)."""
    return [load_predictor(d, options) for d in model_dirs]


def preview_writer(predictor: CasePredictor) -> WrittenHook:
    """Draws ``CASE_preview.png`` beside each label map: the image's first channel and the
    prediction, on the slice with the most foreground, the legend naming the model's classes."""
    names = predictor.plans.label_model().value_names

    def write(image: np.ndarray, prediction: Prediction, target: Path) -> None:
        write_overlay(
            preview_path(target),
            image,
            prediction.labels,
            spacing_zyx=prediction.geometry.spacing_zyx,
            class_names=names,
            title=strip_image_suffix(target.name),
        )

    return write


def complete_check(options: PredictOptions) -> Callable[[Path], bool]:
    """``--continue``: a case is complete when every file this run would write is there and
    whole. The toolkit writes each atomically, but a folder may hold files cut off by other
    means (a full disk, a copy): the label map is read to its end, the probabilities' zip is
    tested, the picture must end with its closing chunk."""

    def complete(target: Path) -> bool:
        if not _whole_image(target):
            return False
        if options.save_probabilities and not _whole_zip(probabilities_path(target)):
            return False
        return not options.preview or _whole_png(preview_path(target))

    return complete


def _whole_image(path: Path) -> bool:
    if not path.is_file():
        return False
    if nifti_scan.is_nifti(path):  # ITK reads a cut-off NIfTI without a word
        return nifti_scan.scan(path).problem is None
    try:
        read_image(path)
    except (ToolkitError, RuntimeError, OSError):
        return False
    return True


def _whole_zip(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (zipfile.BadZipFile, OSError):
        return False


def _whole_png(path: Path) -> bool:
    try:
        data = path.read_bytes()
    except OSError:
        return False
    return (
        data.startswith(b"\x89PNG")
        and data[-12:-8] == b"\x00\x00\x00\x00"
        and data.endswith(b"IEND\xaeB`\x82")
    )


def run_predict(
    input_path: Path,
    output: Path,
    options: PredictOptions,
    model: Path | None = None,
    dataset: str | None = None,
    workspace: Path | None = None,
    configurations: list[str] | None = None,
    postprocess: Path | None = None,
) -> list[CaseReport]:
    if (model is None) == (dataset is None):
        raise ToolkitError("give either --model DIR or --dataset NAME")
    if model is not None and configurations:
        raise ToolkitError("--config goes with --dataset; a --model folder holds one configuration")
    if model is not None:
        predictors = load_predictors([model], options)
        postprocessing = None
        origin = str(model)
    else:
        assert dataset is not None
        choice = choose_models(DatasetPaths.open(workspace, dataset), configurations, options.folds)
        predictors = load_predictors(choice.model_dirs, replace(options, folds=choice.folds))
        postprocessing = choice.postprocessing
        origin = choice.origin
    if postprocess is not None:
        postprocessing = Postprocessing.load(postprocess)
    if not options.quiet:
        for p in predictors:
            info(f"model: {origin}: {p.describe()}")
        if postprocessing is not None and not postprocessing.is_identity:
            info(f"postprocessing: {postprocessing.to_dict()}")
    reports = predict_paths(
        predictors,
        input_path,
        output,
        options.save_probabilities,
        postprocessing,
        options.quiet,
        preview_writer(predictors[0]) if options.preview else None,
        complete_check(options) if options.continue_prediction else None,
    )
    if not options.quiet:
        log_prediction_summary(reports)
    return reports


def run_ensemble(
    inputs: list[Path],
    output: Path,
    postprocess: Path | None = None,
    save_probabilities: bool = False,
    file_ending: str = FILE_ENDING,
    quiet: bool = False,
) -> list[Path]:
    postprocessing = Postprocessing.load(postprocess) if postprocess is not None else None
    if not file_ending.startswith("."):
        raise ToolkitError(
            f"--file-ending must start with a dot, like .nii.gz, not {file_ending!r}"
        )
    written = ensemble_folders(
        inputs, output, file_ending, postprocessing, save_probabilities, quiet
    )
    if not quiet:
        info(f"ensembled {len(written)} case(s) from {len(inputs)} folders into {output}")
    return written
