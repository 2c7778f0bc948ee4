"""Experiment tracking: ``--logger tensorboard`` and ``--logger mlflow`` (off by default).

Besides ``log.jsonl`` and ``progress.png`` (which stay as they are), rank 0 hands each
epoch's record and, at the end, the fold's validation summary to an :class:`EpochLogger`.
The scalars are named here once (:func:`epoch_scalars`, :func:`final_scalars`); each backend
only writes ``{name: value}`` at a step, the epoch number:

- TensorBoard: event files in ``models/<config>/fold_k/tensorboard/`` (a resumed run writes
  to the same folder, dropping anything an earlier run logged from the resumed epoch on);
- MLflow: a run in the local file store ``models/<config>/fold_k/mlruns/``, or wherever
  ``MLFLOW_TRACKING_URI`` points when it is set (nothing is sent anywhere unless configured);
  the run id is kept in the fold folder and a resumed run continues the same run.

Both are optional extras; asking for one that is not installed is a one-line error before
anything runs (:func:`require_loggers`).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from toolkit.errors import ToolkitError
from toolkit.io.atomic import write_text
from toolkit.training.history import EpochRecord
from toolkit.workspace import MLFLOW_RUN, MLFLOW_STORE, TENSORBOARD_DIR

TENSORBOARD = "tensorboard"
MLFLOW = "mlflow"
LOGGER_CHOICES = (TENSORBOARD, MLFLOW)
# the module each backend needs, and the extra that installs it
_REQUIRED_MODULE = {TENSORBOARD: "tensorboard", MLFLOW: "mlflow"}
MLFLOW_URI_VARIABLE = "MLFLOW_TRACKING_URI"
MLFLOW_ALLOW_FILE_STORE = "MLFLOW_ALLOW_FILE_STORE"


class EpochLogger(Protocol):
    """What the training loop calls on rank 0: after each epoch, after the final validation."""

    def log_epoch(self, record: EpochRecord, class_names: list[str]) -> None: ...

    def log_final(self, validation_summary: dict) -> None: ...

    def close(self) -> None: ...


class ScalarWriter(Protocol):
    """One backend: named scalars at a step (the epoch)."""

    def write(self, scalars: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


def parse_loggers(values: Iterable[str]) -> tuple[str, ...]:
    """``--logger`` values (repeated and/or comma-separated) as known backend names, once each."""
    names: list[str] = []
    for value in values:
        for name in str(value).replace(" ", "").lower().split(","):
            if not name:
                continue
            if name not in LOGGER_CHOICES:
                raise ToolkitError(
                    f"--logger must be {' or '.join(LOGGER_CHOICES)} (comma-separated or repeated), not {name!r}"
                )
            if name not in names:
                names.append(name)
    return tuple(names)


def require_loggers(values: Iterable[str]) -> tuple[str, ...]:
    """The loggers asked for, checked: known, and their package installed (else the extra)."""
    names = parse_loggers(values)
    for name in names:
        module = _REQUIRED_MODULE[name]
        if sys.modules.get(module) is None and importlib.util.find_spec(module) is None:
            raise ToolkitError(f"--logger {name} needs `pip install 'toolkit[{name}]'`")
    return names


def epoch_scalars(record: EpochRecord, class_names: list[str]) -> dict[str, float]:
    """An epoch's scalars: losses, pseudo-Dice per class, its mean and EMA, lr, epoch time.
    Values not measured this epoch (no validation batches) are left out."""
    values: dict[str, float | None] = {
        "train_loss": record.train_loss,
        "val_loss": record.val_loss,
    }
    for k, dice in enumerate(record.pseudo_dice):
        name = class_names[k] if k < len(class_names) else f"class_{k + 1}"
        values[f"pseudo_dice/{name}"] = dice
    values.update(
        mean_pseudo_dice=record.mean_pseudo_dice,
        ema_pseudo_dice=record.ema_pseudo_dice,
        lr=record.lr,
        epoch_time_s=record.epoch_time_s,
    )
    return _present(values)


def final_scalars(validation_summary: Mapping, label_names: Mapping[str, str]) -> dict[str, float]:
    """The final validation's mean Dice per class (named) and over the classes."""
    values: dict[str, float | None] = {}
    for label, dice in validation_summary.get("mean_dice", {}).items():
        values[f"validation_dice/{label_names.get(str(label), f'label_{label}')}"] = dice
    values["validation_mean_dice"] = validation_summary.get("mean_foreground_dice")
    return _present(values)


def _present(values: Mapping[str, float | None]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if v is not None and not math.isnan(v)}


@dataclass
class Tracking:
    """The :class:`EpochLogger` of a run: every chosen backend (none: it does nothing)."""

    writers: list[ScalarWriter] = field(default_factory=list)
    label_names: dict[str, str] = field(default_factory=dict)  # "1" -> "hippocampus"
    final_step: int = 0  # the final validation is logged at the epoch count

    def log_epoch(self, record: EpochRecord, class_names: list[str]) -> None:
        if self.writers:
            scalars = epoch_scalars(record, class_names)
            for writer in self.writers:
                writer.write(scalars, record.epoch)

    def log_final(self, validation_summary: dict) -> None:
        if self.writers:
            scalars = final_scalars(validation_summary, self.label_names)
            for writer in self.writers:
                writer.write(scalars, self.final_step)

    def close(self) -> None:
        for writer in self.writers:
            writer.close()
        self.writers = []


def open_tracking(
    loggers: Iterable[str],
    fold_dir: Path,
    *,
    label_names: Mapping[int, str],
    start_epoch: int,
    epochs: int,
    tags: Mapping[str, str],
) -> Tracking:
    """The chosen backends, opened for a run that starts (or resumes) at ``start_epoch``."""
    writers: list[ScalarWriter] = []
    for name in require_loggers(loggers):
        if name == TENSORBOARD:
            writers.append(TensorBoardWriter(fold_dir / TENSORBOARD_DIR, start_epoch))
        else:
            writers.append(MlflowWriter(fold_dir, tags))
    names = {str(k): name for k, name in label_names.items() if int(k) != 0}
    return Tracking(writers, names, epochs)


def open_run_tracking(job, start_epoch: int) -> Tracking:
    """:func:`open_tracking` for a :class:`~toolkit.training.job.TrainingJob` (not imported:
    the job module checks the loggers with this one)."""
    return open_tracking(
        job.options.loggers,
        job.fold_dir,
        label_names=job.plans.label_model().names,  # foreground classes or regions
        start_epoch=start_epoch,
        epochs=job.options.schedule.epochs,
        tags={
            "dataset": job.paths.name,
            "configuration": job.configuration.name,
            "fold": str(job.fold),
        },
    )


class TensorBoardWriter:
    """Event files in one folder per fold; a resume purges steps from its first epoch on."""

    def __init__(self, log_dir: Path, start_epoch: int):
        from torch.utils.tensorboard import SummaryWriter

        log_dir.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(
            log_dir=str(log_dir), purge_step=start_epoch if start_epoch > 0 else None
        )

    def write(self, scalars: dict[str, float], step: int) -> None:
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()  # a killed run keeps every epoch it logged

    def close(self) -> None:
        self.writer.close()


def mlflow_tracking_uri(fold_dir: Path) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else a file store in the fold folder.

    MLflow 3.7 and later refuse a file store unless ``MLFLOW_ALLOW_FILE_STORE`` is true (the
    backend is kept, in maintenance mode; a database store needs the full ``mlflow`` with
    SQLAlchemy): the default local store opts in, unless the user set that variable."""
    configured = os.environ.get(MLFLOW_URI_VARIABLE)
    if configured:
        return configured
    os.environ.setdefault(MLFLOW_ALLOW_FILE_STORE, "true")
    return (fold_dir / MLFLOW_STORE).resolve().as_uri()


class MlflowWriter:
    """One MLflow run per fold, through ``MlflowClient`` (no process-wide active run): the
    experiment is named after the dataset and configuration, the run after the fold, and its
    id is kept in the fold folder so that a resumed training logs to the same run."""

    def __init__(self, fold_dir: Path, tags: Mapping[str, str]):
        mlflow = importlib.import_module("mlflow")
        self.uri = mlflow_tracking_uri(fold_dir)
        self.client = mlflow.MlflowClient(tracking_uri=self.uri)
        self.record = fold_dir / MLFLOW_RUN
        self.run_id = self._stored_run_id() or self._new_run(dict(tags))

    def _stored_run_id(self) -> str | None:
        if not self.record.is_file():
            return None
        try:
            stored = json.loads(self.record.read_text())
        except json.JSONDecodeError:
            return None
        return stored.get("run_id") if stored.get("tracking_uri") == self.uri else None

    def _new_run(self, tags: dict[str, str]) -> str:
        name = f"{tags.get('dataset', 'toolkit')}/{tags.get('configuration', '')}"
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else self.client.create_experiment(name)
        )
        run = self.client.create_run(
            experiment_id, tags=tags, run_name=f"fold_{tags.get('fold', '')}"
        )
        run_id = run.info.run_id
        write_text(self.record, json.dumps({"tracking_uri": self.uri, "run_id": run_id}) + "\n")
        return run_id

    def write(self, scalars: dict[str, float], step: int) -> None:
        for name, value in scalars.items():
            self.client.log_metric(self.run_id, name, value, step=step)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)
