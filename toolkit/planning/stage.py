"""The ``plan`` stage: fingerprint.json in, plans.json out (and the views of a plan the CLI prints)."""

from __future__ import annotations

from toolkit.core.fingerprint import load_fingerprint
from toolkit.core.plans import Plans
from toolkit.planning.memory import Calibration
from toolkit.planning.planner import PlannerOptions, plan_experiment, preset
from toolkit.planning.show import planner_summary, plans_tables
from toolkit.workspace import DatasetPaths

__all__ = ["PlannerOptions", "plan_dataset", "planner_summary", "plans_tables", "preset"]


def plan_dataset(paths: DatasetPaths, options: PlannerOptions | None = None) -> Plans:
    """Plan from the dataset's fingerprint and write ``plans.json`` (atomically)."""
    options = (options or PlannerOptions()).check()
    fingerprint = load_fingerprint(paths)
    calibration = Calibration.load() if options.memory_model == "calibrated" else None
    plans = plan_experiment(fingerprint, options, calibration)
    plans.dataset_name = paths.name
    plans.save(paths.plans_json)
    return plans
