"""The ``plan`` stage: fingerprint.json in, plans.json out (and the views of a plan the CLI prints)."""

from __future__ import annotations

from pathlib import Path

from toolkit.core.fingerprint import load_fingerprint
from toolkit.core.plans import Plans
from toolkit.planning.memory import Calibration
from toolkit.planning.planner import PlannerOptions, plan_experiment, preset
from toolkit.planning.show import planner_summary, plans_tables
from toolkit.planning.transfer import source_plans, source_plans_file, transfer_plans
from toolkit.workspace import DatasetPaths

__all__ = [
    "PlannerOptions",
    "plan_dataset",
    "plan_like",
    "planner_summary",
    "plans_tables",
    "preset",
    "source_plans_file",
]


def plan_dataset(paths: DatasetPaths, options: PlannerOptions | None = None) -> Plans:
    """Plan from the dataset's fingerprint and write ``plans.json`` (atomically)."""
    options = (options or PlannerOptions()).check()
    fingerprint = load_fingerprint(paths)
    calibration = Calibration.load() if options.memory_model == "calibrated" else None
    plans = plan_experiment(fingerprint, options, calibration)
    plans.dataset_name = paths.name
    plans.save(paths.plans_json)
    return plans


def plan_like(paths: DatasetPaths, source: str, workspace: Path | None = None) -> Plans:
    """``source``'s plans moved onto this dataset (see :mod:`toolkit.planning.transfer`),
    written to ``plans.json`` (atomically)."""
    fingerprint = load_fingerprint(paths)
    plans, label = source_plans(source, workspace)
    transferred = transfer_plans(plans, fingerprint, label)
    transferred.dataset_name = paths.name
    transferred.save(paths.plans_json)
    return transferred
