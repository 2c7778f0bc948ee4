"""The ``plan`` stage: fingerprint.json in, plans.json out."""

from __future__ import annotations

from toolkit.core.plans import Plans
from toolkit.fingerprint.stage import load_fingerprint
from toolkit.planning.memory import Calibration
from toolkit.planning.planner import PlannerOptions, plan_experiment
from toolkit.workspace import DatasetPaths


def plan_dataset(paths: DatasetPaths, options: PlannerOptions | None = None) -> Plans:
    """Plan from the dataset's fingerprint and write ``plans.json`` (atomically)."""
    options = (options or PlannerOptions()).check()
    fingerprint = load_fingerprint(paths)
    calibration = Calibration.load() if options.memory_model == "calibrated" else None
    plans = plan_experiment(fingerprint, options, calibration)
    plans.dataset_name = paths.name
    plans.save(paths.plans_json)
    return plans


def load_plans(paths: DatasetPaths) -> Plans:
    paths.require(paths.plans_json, f"toolkit plan {paths.name}")
    return Plans.load(paths.plans_json)
