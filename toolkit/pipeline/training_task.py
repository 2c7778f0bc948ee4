"""One training of run-all as a task: what a worker needs, and the function every executor runs.

The local and the Ray executor both run :func:`run_training_task` on the same
:class:`TrainTask`, so a result does not depend on where it ran.
"""

from __future__ import annotations

import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from toolkit.pipeline import records
from toolkit.pipeline.records import train_stage
from toolkit.training.stage import Schedule, TrainOptions, train_fold
from toolkit.workspace import CHECKPOINT_FINAL, CHECKPOINT_LATEST, DatasetPaths


@dataclass(frozen=True)
class TrainTask:
    """One (configuration, fold) training, with everything a worker needs to run it."""

    dataset_root: str
    configuration: str
    fold: int
    key: str
    epochs: int
    iters_per_epoch: int
    val_iters: int
    seed: int
    device: str
    quiet: bool
    validation_mirroring: bool = True
    after: tuple[str, ...] = ()  # stages that must finish first (the cascade's low-res fold)
    precision: str = "auto"  # not part of the key: a run may resume under another precision
    loggers: tuple[str, ...] = ()  # --logger: not in the key (logging does not change the model)
    pretrained: str | None = None  # weights a new training starts from (their digest is in the key)

    @property
    def stage(self) -> str:
        return train_stage(self.configuration, self.fold)


def run_training_task(task: TrainTask, ran_on: dict | None = None) -> str:
    """Train one fold (resuming it when it was started with the same key); record completion.

    The stage record's ``details["ran_on"]`` says where it ran: this machine's host name, and
    what the executor adds (Ray's node id).
    """
    paths = DatasetPaths(Path(task.dataset_root))
    if records.is_valid(paths, task.stage, task.key):
        return task.stage
    fold_dir = paths.fold_dir(task.configuration, task.fold)
    finished_before = records.read_record(paths, task.stage)
    previous_key = records.mark_started(paths, task.stage, task.key)
    if finished_before is not None:
        previous_key = finished_before.key
        records.invalidate(paths, task.stage)
    has_checkpoint = (fold_dir / CHECKPOINT_LATEST).is_file() or (
        fold_dir / CHECKPOINT_FINAL
    ).is_file()
    if has_checkpoint and previous_key is not None and previous_key != task.key:
        # this pipeline trained the fold from other inputs (a changed plan): start again
        shutil.rmtree(fold_dir)
        has_checkpoint = False
    started = time.time()
    options = TrainOptions(
        schedule=Schedule(
            epochs=task.epochs,
            iterations_per_epoch=task.iters_per_epoch,
            validation_iterations=task.val_iters,
        ),
        device=task.device,
        precision=task.precision,
        resume=has_checkpoint,
        seed=task.seed,
        quiet=task.quiet,
        validation_mirroring=task.validation_mirroring,
        loggers=task.loggers,
        pretrained=task.pretrained,
    )
    train_fold(paths, task.configuration, task.fold, options)
    where = {"host": socket.gethostname(), **(ran_on or {})}
    records.write_record(paths, task.stage, task.key, started, {"ran_on": where})
    return task.stage
