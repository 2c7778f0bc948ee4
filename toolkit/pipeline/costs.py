"""What each training of ``run-all --time-budget`` costs here: measured, and estimated from that.

- Speeds: a short calibration per configuration (:func:`toolkit.training.stage.measure_speed`),
  kept in ``pipeline/run.json`` under ``calibration`` with a key of everything that affects it
  (the configuration's plan, the device and the precision it resolves to, this CPU's flags and
  count, the machine's name, torch) and reused while that key holds.
- A fold's final validation: sliding windows of its validation cases (from their preprocessed
  shapes) x mirrors x the calibrated seconds per window, plus each case's export and metrics.
- Evaluation, selection and an export the preset includes: named estimates below.
"""

from __future__ import annotations

import os
import platform
import time

from toolkit.core.constants import STEP_SIZE
from toolkit.core.device import cpu_flags, resolve_device, resolve_precision
from toolkit.core.plans import Plans
from toolkit.core.splits import read_splits
from toolkit.inference.windows import count_windows
from toolkit.io.preprocessed import load_properties
from toolkit.pipeline import records
from toolkit.progress import info
from toolkit.training.stage import measure_speed, plans_configuration_dict

CALIBRATION_VERSION = 1
# evaluation (metrics, bootstrap, report with pictures) and selection (postprocessing), seconds
EVALUATION_BASE_S = 40.0
EVALUATION_CASE_S = 1.5  # per validation case and candidate
# per validated case: resampling back, writing the label map and probabilities, the metrics
VALIDATION_CASE_S = 2.0


def calibration_key(plans: Plans, configuration: str, device: str, precision: str) -> str:
    """What a calibration's speed depends on: the configuration's plan, the device and the
    precision it resolves to, this machine (CPU flags and count, its name) and torch."""
    import torch

    resolved = resolve_device(device)
    return records.digest(
        "calibration",
        CALIBRATION_VERSION,
        plans_configuration_dict(plans.configuration(configuration)),
        resolved.type,
        resolve_precision(precision, resolved),
        sorted(cpu_flags() or []),
        os.cpu_count(),
        platform.node(),
        torch.__version__,
    )


def calibrate(
    paths,
    plans: Plans,
    configurations: list[str],
    *,
    device: str,
    precision: str,
    previous: dict,
    quiet: bool,
) -> dict[str, dict]:
    """Each configuration's speeds: the recorded ones while their key holds, else measured."""
    speeds = {}
    for name in configurations:
        key = calibration_key(plans, name, device, precision)
        old = previous.get(name)
        if isinstance(old, dict) and old.get("key") == key:
            speeds[name] = old
            continue
        if not quiet:
            info(f"time budget: calibrating {name} (a few training iterations)")
        sample = measure_speed(paths, name, device=device, precision=precision)
        speeds[name] = {"key": key, "measured_at": time.time(), **sample.as_record()}
        if not quiet:
            info(
                f"time budget: {name} {sample.seconds_per_iteration:.3g} s/iteration, "
                f"{sample.seconds_per_window:.3g} s/window ({sample.device}, {sample.precision})"
            )
    return speeds


def window_seconds(speed: dict, batch_size: int) -> float:
    """Seconds per sliding window: the one timed, at most a training iteration's share of one
    sample (a forward pass costs less than a forward and backward pass). One window timed on a
    busy machine can be far off: on the real-anatomy task 2.1 s were timed where the final
    validation then ran at 0.15 s per window; the training iterations, timed over several,
    are steadier."""
    return min(speed["seconds_per_window"], speed["seconds_per_iteration"] / max(1, batch_size))


def fold_validation_seconds(
    paths, plans: Plans, configuration: str, fold: int, seconds_per_window: float, mirroring: bool
) -> float:
    """One fold's final validation: windows of its cases x mirrors x seconds per window."""
    cfg = plans.configuration(configuration)
    splits = read_splits(paths.splits_json)
    folder = paths.preprocessed_dir(cfg.data_identifier)
    patch = list(cfg.patch_size)
    patch3 = patch if len(patch) == 3 else [1, *patch]
    mirrors = (8 if len(patch) == 3 else 4) if mirroring else 1
    total = 0.0
    for case in splits[fold].val:
        shape = load_properties(folder, case).shape_after_resampling
        windows = count_windows(shape, patch3, STEP_SIZE)
        total += windows * mirrors * seconds_per_window + VALIDATION_CASE_S
    return total


def after_training_seconds(cases: int, configurations: int, export_reserve: float) -> float:
    """Evaluation and selection of ``cases`` validation cases per candidate, and the export."""
    candidates = configurations + configurations * (configurations - 1) // 2
    return EVALUATION_BASE_S + EVALUATION_CASE_S * cases * candidates + export_reserve


def validated_cases(paths, folds: list[int]) -> dict[int, int]:
    """How many validation cases each fold has (splits.json)."""
    splits = read_splits(paths.splits_json)
    return {f: len(splits[f].val) for f in folds if f < len(splits)}
