"""The training stage: ``toolkit train DATASET CONFIG FOLD`` and the pipeline's training tasks.

:func:`train_fold` resolves and checks the job (:mod:`toolkit.training.job`), returns early
when the fold is already trained and validated, writes the model folder's copies of the
plans and ``dataset.json``, and starts the processes: this one, ``--devices N`` spawned
ones, or the ones ``torchrun`` started (:mod:`toolkit.training.distributed`). Each process
runs the training loop, :func:`toolkit.training.trainer.run`.

What callers pass and get back is the stage's interface too: the options
(:class:`TrainOptions` with its :class:`Schedule`), the :class:`FoldResult`, and the
configuration as the checkpoint stores it (:func:`plans_configuration_dict`, which the
pipeline keys a trained fold on), a fold named on the command line (:func:`parse_fold`: a
number or ``all``), and the checkpoint file a ``--pretrained`` source names
(:func:`pretrained_file`, whose digest the pipeline keys a training on).
"""

from __future__ import annotations

from toolkit.core.splits import Fold, parse_fold
from toolkit.progress import info
from toolkit.training import distributed
from toolkit.training.calibration import SpeedSample, measure_speed
from toolkit.training.checkpoint import plans_configuration_dict
from toolkit.training.distributed import DistContext, rank_device
from toolkit.training.job import TrainingJob, TrainOptions, prepare, write_model_folder
from toolkit.training.pretrained import pretrained_file
from toolkit.training.schedule import Schedule
from toolkit.training.tracking import require_loggers
from toolkit.training.trainer import FoldResult, run
from toolkit.training.validation import validation_complete
from toolkit.workspace import CHECKPOINT_FINAL, DatasetPaths

__all__ = [
    "FoldResult",
    "Schedule",
    "SpeedSample",
    "TrainOptions",
    "parse_fold",
    "measure_speed",
    "plans_configuration_dict",
    "pretrained_file",
    "require_loggers",
    "train_fold",
]


def train_fold(
    paths: DatasetPaths, configuration: str, fold: Fold, options: TrainOptions
) -> FoldResult:
    """Train ``fold`` of ``configuration`` (a fold number, or ``"all"``: every case, no final
    validation)."""
    job = prepare(paths, configuration, fold, options)
    if job.only_validation and (not job.final_validation or validation_complete(job)):
        info(
            f"{configuration} fold {fold} is already trained ({job.fold_dir / CHECKPOINT_FINAL}): nothing to do"
        )
        return FoldResult(job.fold_dir, job.options.schedule.epochs, True, None)
    write_model_folder(job)
    if distributed.launched_by_torchrun():
        device = rank_device(job.device, distributed.torchrun_local_rank())
        ctx = distributed.context_from_torchrun(device)
        try:
            return run(job, ctx)
        finally:
            distributed.shutdown()
    if options.devices > 1:
        distributed.spawn(options.devices, _spawned, (job,))
        return FoldResult(job.fold_dir, options.schedule.epochs, False, None)
    return run(job, DistContext())


def _spawned(rank: int, world_size: int, job: TrainingJob) -> None:
    """One of the ``--devices N`` processes (``distributed.spawn`` calls it by name)."""
    device = rank_device(job.device, rank)
    ctx = distributed.init_process(rank, world_size, rank, device)
    try:
        run(job, ctx)
    finally:
        distributed.shutdown()
