"""`run-all --like SOURCE`: the plan stage moves the source's plans onto the dataset."""

from __future__ import annotations

import json

from toolkit.convert.stage import convert_task
from toolkit.fingerprint.stage import extract_fingerprint
from toolkit.pipeline import records
from toolkit.pipeline.runner import RunOptions, Stages
from toolkit.planning.stage import plan_dataset, preset
from toolkit.synthetic.msd import generate_task
from toolkit.workspace import DatasetPaths


def network_of(paths: DatasetPaths) -> dict:
    plans = json.loads(paths.plans_json.read_text())
    return {n: (c["patch_size"], c["architecture"]) for n, c in plans["configurations"].items()}


def test_run_all_plans_like_another_dataset_and_follows_its_changes(tmp_path):
    datasets = {}
    for name, seed, shape in (("Source", 1, (16, 40, 40)), ("Target", 2, (16, 32, 32))):
        task = generate_task("mr", tmp_path / name, n_cases=5, seed=seed, shape=shape, n_test=0)
        paths = DatasetPaths(tmp_path / "ws" / name)
        convert_task(task, paths, workers=1, quiet=True)
        extract_fingerprint(paths, 1, quiet=True)
        datasets[name] = paths
    source, target = datasets["Source"], datasets["Target"]
    plan_dataset(source, preset("cpu"))

    like = Stages(target, RunOptions(preset="smoke", like="Source", quiet=True))
    like.plan()
    assert network_of(target) == network_of(source)  # not the planner's own for this data
    assert "plan" in like.summary.ran
    again = Stages(target, RunOptions(preset="smoke", like="Source", quiet=True))
    again.plan()
    assert "plan" in again.summary.skipped  # nothing changed

    plan_dataset(source, preset("default"))  # the source is planned anew: so is the target
    changed = Stages(target, RunOptions(preset="smoke", like="Source", quiet=True))
    changed.plan()
    assert "plan" in changed.summary.ran and network_of(target) == network_of(source)

    own = Stages(target, RunOptions(preset="smoke", quiet=True))  # without --like: its own plan
    own.plan()
    assert "plan" in own.summary.ran and network_of(target) != network_of(source)
    assert records.read_record(target, "plan") is not None
