"""Every path and file name of the workspace layout, in one place.

::

    <workspace>/<dataset>/
        raw/dataset.json, raw/imagesTr/CASE_0000.nii.gz, raw/labelsTr/CASE.nii.gz, raw/imagesTs/
        raw/.verified.json                      verify's cache (per case, keyed by file stats)
        fingerprint.json
        plans.json
        splits.json                             cross-validation split (5 folds), written once; may be edited
        preprocessed/<data_identifier>/CASE.npy, CASE_seg.npy, CASE.json
        models/<config>/plans.json, dataset.json        (self-contained model folder; <config>
                                                of a planner other than the default: 3d_fullres-resenc-l)
        models/<config>/fold_<k>/checkpoint_{latest,best,final}.pt, log.jsonl, progress.png
        models/<config>/fold_<k>/validation/CASE.nii.gz, CASE.npz, summary.json
        models/<config>/fold_all/checkpoint_*.pt, log.jsonl    (fold "all": every case, no validation)
        models/<config>/predicted_next_stage/<next config>/CASE.npy   (cascade input)
        evaluation/cases.csv, summary.json, bootstrap.json, report.md, *.png
        selection.json, postprocessing.json     written by `toolkit select` (and `toolkit import-model`)
        imported.json                           written by `toolkit import-model`
        export/
        pipeline/<stage>.json                   run-all's completion records; pipeline/run.json its options
    <workspace>/.<dataset>.lock                 the dataset's writer lock (toolkit.io.lock), beside its folder

The workspace root comes from ``--workspace``, else ``$TOOLKIT_WORKSPACE``, else
``./workspace``. Nothing else is global.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from toolkit.errors import MissingStageError, ToolkitError

WORKSPACE_ENV = "TOOLKIT_WORKSPACE"
DEFAULT_WORKSPACE = "workspace"
FILE_ENDING = ".nii.gz"
PROBABILITIES_ENDING = ".npz"
PREVIEW_ENDING = "_preview.png"  # `predict --preview`: CASE.nii.gz -> CASE_preview.png beside it
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def resolve_workspace(option: str | Path | None) -> Path:
    """``--workspace``, else ``$TOOLKIT_WORKSPACE``, else ``./workspace``."""
    if option:
        return Path(option).expanduser()
    env = os.environ.get(WORKSPACE_ENV)
    if env:
        return Path(env).expanduser()
    return Path(DEFAULT_WORKSPACE)


def check_dataset_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise ToolkitError(
            f"dataset name {name!r} must start with a letter or digit and hold only letters, digits, '_', '-' and '.'"
        )
    return name


def channel_file(case: str, channel: int, ending: str = FILE_ENDING) -> str:
    return f"{case}_{channel:04d}{ending}"


def label_file(case: str, ending: str = FILE_ENDING) -> str:
    return f"{case}{ending}"


@dataclass(frozen=True)
class RawFolder:
    """The converted (nnU-Net v2 raw) layout inside one folder: ``raw/``, or a dataset a user
    brings in that layout."""

    root: Path

    @property
    def dataset_json(self) -> Path:
        return self.root / "dataset.json"

    @property
    def images_tr(self) -> Path:
        return self.root / "imagesTr"

    @property
    def labels_tr(self) -> Path:
        return self.root / "labelsTr"

    @property
    def images_ts(self) -> Path:
        return self.root / "imagesTs"

    @property
    def verify_cache(self) -> Path:
        """``toolkit verify``'s results per case, keyed by file sizes and times."""
        return self.root / ".verified.json"


@dataclass(frozen=True)
class DatasetPaths:
    """Paths of one dataset's folder in the workspace."""

    root: Path

    @classmethod
    def open(cls, workspace: str | Path | None, name: str) -> DatasetPaths:
        """A dataset given by name (under the workspace root) or by its folder path."""
        candidate = Path(name)
        if candidate.is_dir() and (candidate / "raw").is_dir():
            return cls(candidate)
        return cls(resolve_workspace(workspace) / check_dataset_name(name))

    @classmethod
    def holding(cls, path: str | Path) -> DatasetPaths | None:
        """The dataset whose folder holds ``path`` (the nearest folder above it, or itself,
        with ``raw/dataset.json``), or ``None``: where an output path lands for the writer lock."""
        candidate = Path(path).expanduser().resolve()
        for folder in (candidate, *candidate.parents):
            if (folder / "raw" / "dataset.json").is_file():
                return cls(folder)
        return None

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def writer_lock(self) -> Path:
        """The writer lock's file, beside the dataset's folder (``<workspace>/.<name>.lock``), so
        that a folder replaced by a rename keeps one lock."""
        folder = self.root.expanduser().resolve()
        return folder.parent / f".{folder.name}.lock"

    # raw
    @property
    def raw(self) -> Path:
        return self.root / "raw"

    @property
    def dataset_json(self) -> Path:
        return self.raw / "dataset.json"

    @property
    def images_tr(self) -> Path:
        return self.raw / "imagesTr"

    @property
    def labels_tr(self) -> Path:
        return self.raw / "labelsTr"

    @property
    def images_ts(self) -> Path:
        return self.raw / "imagesTs"

    @property
    def raw_folder(self) -> RawFolder:
        return RawFolder(self.raw)

    @property
    def verify_cache(self) -> Path:
        return self.raw_folder.verify_cache

    # planning
    @property
    def fingerprint_json(self) -> Path:
        return self.root / "fingerprint.json"

    @property
    def plans_json(self) -> Path:
        return self.root / "plans.json"

    @property
    def splits_json(self) -> Path:
        return self.root / "splits.json"

    # preprocessing
    @property
    def preprocessed(self) -> Path:
        return self.root / "preprocessed"

    def preprocessed_dir(self, data_identifier: str) -> Path:
        return self.preprocessed / data_identifier

    # training
    @property
    def models(self) -> Path:
        return self.root / "models"

    def model_dir(self, config: str) -> Path:
        return self.models / config

    def fold_dir(self, config: str, fold: int | str) -> Path:
        return self.model_dir(config) / f"fold_{fold}"

    def validation_dir(self, config: str, fold: int | str) -> Path:
        return self.fold_dir(config, fold) / "validation"

    def next_stage_dir(self, config: str, next_config: str) -> Path:
        """A first stage's out-of-fold predictions for the cascade's next stage (CASE.npy)."""
        return self.model_dir(config) / "predicted_next_stage" / next_config

    def validation_prediction(self, config: str, fold: int | str, case: str) -> Path:
        """A validation case's label map, in the original geometry."""
        return self.validation_dir(config, fold) / label_file(case)

    def validation_probabilities(self, config: str, fold: int | str, case: str) -> Path:
        """A validation case's probabilities (``probabilities``: float16 (classes, z, y, x))."""
        return self.validation_dir(config, fold) / f"{case}{PROBABILITIES_ENDING}"

    def validation_summary(self, config: str, fold: int | str) -> Path:
        """Per-case and mean Dice of a fold's validation; written last, marks it complete."""
        return self.validation_dir(config, fold) / "summary.json"

    # evaluation and beyond
    @property
    def evaluation(self) -> Path:
        return self.root / "evaluation"

    @property
    def evaluation_cases_csv(self) -> Path:
        return self.evaluation / "cases.csv"

    @property
    def evaluation_summary_json(self) -> Path:
        return self.evaluation / "summary.json"

    @property
    def bootstrap_json(self) -> Path:
        return self.evaluation / "bootstrap.json"

    @property
    def evaluation_report(self) -> Path:
        return self.evaluation / "report.md"

    def evaluation_figure(self, name: str) -> Path:
        return self.evaluation / f"{name}.png"

    @property
    def selection_json(self) -> Path:
        return self.root / "selection.json"

    @property
    def postprocessing_json(self) -> Path:
        """The chosen postprocessing on its own (also in selection.json), written by `toolkit
        select` and `toolkit import-model`, for `predict --postprocess` and `ensemble --postprocess`."""
        return self.root / "postprocessing.json"

    @property
    def import_record(self) -> Path:
        """`toolkit import-model`'s record: the archive, its kind, versions, configurations."""
        return self.root / "imported.json"

    @property
    def export(self) -> Path:
        return self.root / "export"

    @property
    def pipeline(self) -> Path:
        return self.root / "pipeline"

    @property
    def run_json(self) -> Path:
        """run-all's options of the latest run (preset, configurations, folds, budget)."""
        return self.pipeline / "run.json"

    def stage_record(self, stage: str) -> Path:
        return self.pipeline / f"{stage}.json"

    # preconditions
    def require(self, path: Path, command: str) -> Path:
        """``path`` if it exists, else an error naming the command that writes it."""
        if not path.exists():
            raise MissingStageError(path, command)
        return path

    def require_raw(self) -> Path:
        if not self.dataset_json.is_file():
            raise MissingStageError(self.dataset_json, f"toolkit convert TASK --name {self.name}")
        return self.raw


# Files inside a model folder (models/<config>/ and copies of it, e.g. in a container)
MODEL_PLANS = "plans.json"
MODEL_DATASET_JSON = "dataset.json"
CHECKPOINT_LATEST = "checkpoint_latest.pt"
CHECKPOINT_BEST = "checkpoint_best.pt"
CHECKPOINT_FINAL = "checkpoint_final.pt"
# a fold exported for the torch-free runtimes (`export-model --format onnx`): the inference
# graph, and what it needs beside it (configuration, mirror axes, input and output names)
NETWORK_ONNX = "network.onnx"
NETWORK_JSON = "network.json"
TRAINING_LOG = "log.jsonl"
PROGRESS_PLOT = "progress.png"
TENSORBOARD_DIR = "tensorboard"  # --logger tensorboard: the fold's event files
MLFLOW_STORE = "mlruns"  # --logger mlflow: the fold's local file store (no MLFLOW_TRACKING_URI)
MLFLOW_RUN = "mlflow_run.json"  # --logger mlflow: the run a resumed training continues


@dataclass(frozen=True)
class ExportPaths:
    """An export folder (``<dataset>/export/`` or ``export-container --out``).

    ::

        context/                 the image's build context
            Dockerfile, .dockerignore, requirements.txt (third-party, pinned),
            wheels/*.whl (with a wheelhouse), toolkit-wheel/toolkit-*.whl,
            entrypoint.py, algorithm.json
            model/ensemble.json, model/<config>/plans.json, dataset.json,
                  fold_<k>/checkpoint_final.pt
        image.tar.gz             `docker save` archive for upload
        model.tar.gz             the model for the platform's /opt/ml/model (--model-mode tarball)
        build.log                the build's streamed log
        export.json              what was exported, sizes and times
        README.md                the model card (toolkit.container.card)
        container-test.json      test-container's per-case results
        runs/<case>/input, output   platform-style folders of the test runs
        runs/<case>/reference/   `toolkit predict` of the same case, for comparison
        model-extracted/         model.tar.gz as the platform extracts it (test runs)
    """

    root: Path

    @property
    def context(self) -> Path:
        return self.root / "context"

    @property
    def dockerfile(self) -> Path:
        return self.context / "Dockerfile"

    @property
    def dockerignore(self) -> Path:
        return self.context / ".dockerignore"

    @property
    def requirements(self) -> Path:
        return self.context / "requirements.txt"

    @property
    def wheels(self) -> Path:
        return self.context / "wheels"

    @property
    def toolkit_wheel(self) -> Path:
        return self.context / "toolkit-wheel"

    @property
    def entrypoint(self) -> Path:
        return self.context / "entrypoint.py"

    @property
    def algorithm_json(self) -> Path:
        return self.context / "algorithm.json"

    @property
    def model(self) -> Path:
        return self.context / "model"

    @property
    def ensemble_json(self) -> Path:
        return self.model / "ensemble.json"

    @property
    def image_archive(self) -> Path:
        return self.root / "image.tar.gz"

    @property
    def model_tarball(self) -> Path:
        return self.root / "model.tar.gz"

    @property
    def build_log(self) -> Path:
        return self.root / "build.log"

    @property
    def model_card(self) -> Path:
        return self.root / "README.md"

    @property
    def record(self) -> Path:
        return self.root / "export.json"

    @property
    def test_report(self) -> Path:
        return self.root / "container-test.json"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    def run_dir(self, case: str) -> Path:
        return self.runs / case

    def reference_dir(self, case: str) -> Path:
        """`toolkit predict`'s output for a test case, what the job's output must equal."""
        return self.run_dir(case) / "reference"

    @property
    def extracted_model(self) -> Path:
        """model.tar.gz extracted, as the platform's /opt/ml/model (test runs, tarball mode)."""
        return self.root / "model-extracted"
