"""How fast a configuration trains here: a short calibration for ``run-all --time-budget``.

A few training iterations of the real loop's parts (network, loss, optimiser, the batch
maker with its augmentation, prefetched as in training) on this device and precision, after a
warm-up, then a few per-epoch validation batches and a few forward passes of one sliding
window (what the final validation costs per window and mirror). Nothing is written: the
weights are thrown away; the split file is created if no training has made it yet, as the
first training would.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from toolkit.core.device import autocast, resolve_device
from toolkit.core.plans import dataset_plans
from toolkit.core.splits import fold_split, load_or_create_splits
from toolkit.errors import MissingStageError, ToolkitError
from toolkit.io.preprocessed import complete_cases
from toolkit.training.distributed import DistContext
from toolkit.training.job import TrainingJob, TrainOptions, run_seed
from toolkit.training.loader import TRAIN, VALIDATION, BatchKey, Prefetcher
from toolkit.training.schedule import Schedule
from toolkit.training.trainer import build_parts, make, train_step, validation_step
from toolkit.workspace import DatasetPaths

WARMUP_ITERATIONS = 3  # not timed: kernels chosen, first batches made
# augmentation's cost varies from batch to batch (its spatial transform acts on a fifth of the
# samples) and the batches prefetched before timing cost nothing: on the real-anatomy task 8
# and 16 timed iterations measured 0.284 and 0.267 s against 0.283 s over the training's epochs
TIMED_ITERATIONS = 30
TIMED_VALIDATION_ITERATIONS = 3
TIMED_WINDOWS = 5  # the median of these (a loaded machine's odd slow pass left out)
WINDOW_WARMUP = 3  # oneDNN picks its kernels over the first calls


@dataclass(frozen=True, kw_only=True)
class SpeedSample:
    """Seconds per training iteration, per-epoch validation batch and sliding window."""

    seconds_per_iteration: float
    seconds_per_validation_iteration: float
    seconds_per_window: float
    precision: str
    device: str

    def as_record(self) -> dict:
        return {
            "seconds_per_iteration": self.seconds_per_iteration,
            "seconds_per_validation_iteration": self.seconds_per_validation_iteration,
            "seconds_per_window": self.seconds_per_window,
            "precision": self.precision,
            "device": self.device,
        }


def measure_speed(
    paths: DatasetPaths, configuration: str, *, device: str = "auto", precision: str = "auto"
) -> SpeedSample:
    """Time ``configuration``'s training iterations here (its first fold's cases)."""
    plans = dataset_plans(paths)
    cfg = plans.configuration(configuration)
    if cfg.is_cascade:
        raise ToolkitError(
            f"{configuration}: a cascade's speed is not calibrated (it needs its first stage's predictions)"
        )
    data_folder = paths.preprocessed_dir(cfg.data_identifier)
    cases = complete_cases(data_folder)
    if not cases:
        raise MissingStageError(
            data_folder, f"toolkit preprocess {paths.name} --configs {configuration}"
        )
    splits = load_or_create_splits(paths.splits_json, cases)
    split = fold_split(splits, 0, cases, paths.splits_json)
    schedule = Schedule(
        epochs=1,
        iterations_per_epoch=WARMUP_ITERATIONS + TIMED_ITERATIONS,
        validation_iterations=TIMED_VALIDATION_ITERATIONS,
    )
    options = TrainOptions(schedule=schedule, device=device, precision=precision, quiet=True)
    job = TrainingJob(
        paths=paths,
        plans=plans,
        configuration=cfg,
        fold=0,
        split=split,
        data_folder=data_folder,
        previous_folder=None,
        options=options,
        device=resolve_device(device),
        start_from=None,
        only_validation=False,
        pretrained=None,
        run_settings={"seed": 0, "run_seed": run_seed(0, configuration, 0)},
    )
    ctx = DistContext()
    parts = build_parts(job, ctx, job.device)
    keys = [BatchKey(0, TRAIN, i) for i in range(schedule.iterations_per_epoch)]
    keys += [BatchKey(0, VALIDATION, v) for v in range(schedule.validation_iterations)]
    parts.model.train()
    with Prefetcher(
        lambda k: make(parts, k), keys, options.prefetch, options.threads_for(job.device)
    ) as batches:
        for _ in range(WARMUP_ITERATIONS):
            train_step(parts, next(batches), schedule.grad_clip)
        started = time.perf_counter()
        for _ in range(TIMED_ITERATIONS):
            train_step(parts, next(batches), schedule.grad_clip)
        per_iteration = (time.perf_counter() - started) / TIMED_ITERATIONS
        parts.model.eval()
        started = time.perf_counter()
        for _ in range(TIMED_VALIDATION_ITERATIONS):
            validation_step(parts, next(batches))
        per_validation = (time.perf_counter() - started) / TIMED_VALIDATION_ITERATIONS
    per_window = _window_seconds(parts.network, job, parts.precision)
    return SpeedSample(
        seconds_per_iteration=per_iteration,
        seconds_per_validation_iteration=per_validation,
        seconds_per_window=per_window,
        precision=parts.precision,
        device=job.device.type,
    )


@torch.inference_mode()  # as the sliding window runs (no_grad measured up to 5x slower in bf16)
def _window_seconds(network: torch.nn.Module, job: TrainingJob, precision: str) -> float:
    """One sliding window's forward pass (batch of one patch, no deep supervision)."""
    network.eval()
    network.deep_supervision = False
    channels = job.plans.num_input_channels
    x = torch.zeros((1, channels, *job.configuration.patch_size), device=job.device)
    times = []
    with autocast(job.device, precision):
        for _ in range(WINDOW_WARMUP):
            network(x)
        for _ in range(TIMED_WINDOWS):
            started = time.perf_counter()
            network(x)
            times.append(time.perf_counter() - started)
    return statistics.median(times)
