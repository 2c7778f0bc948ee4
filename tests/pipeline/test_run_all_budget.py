"""run-all --time-budget end to end on a tiny task, with fake calibrated speeds and the rule's
iteration numbers made tiny: the plan is executed, recorded, reported, shown and reused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from toolkit.convert.stage import convert_task
from toolkit.errors import ToolkitError
from toolkit.pipeline import budget, costs
from toolkit.pipeline.runner import RunOptions, run_all
from toolkit.pipeline.status import budget_summary, dataset_status
from toolkit.synthetic import generate_task
from toolkit.training.stage import SpeedSample
from toolkit.workspace import DatasetPaths

pytestmark = pytest.mark.slow

OPTIONS = RunOptions(
    preset="smoke",
    configs=("3d_fullres",),
    folds=(0, 1),
    val_iters=1,
    device="cpu",
    precision="fp32",
    workers=1,
    quiet=True,
    time_budget="1h",
)


@pytest.fixture
def tiny_rule(monkeypatch):
    """Every training of the plan is at most 6 iterations; calibration is counted, not run."""
    monkeypatch.setattr(budget, "MIN_ITERATIONS", 2)
    monkeypatch.setattr(budget, "TARGET_ITERATIONS", 4)
    monkeypatch.setattr(budget, "BREADTH_ITERATIONS", 4)
    monkeypatch.setattr(budget, "METHOD_ITERATIONS", 6)
    monkeypatch.setattr(budget, "MIN_EPOCHS", 2)
    calls = []

    def fake_speed(paths, configuration, *, device, precision):
        calls.append(configuration)
        return SpeedSample(
            seconds_per_iteration=0.5,
            seconds_per_validation_iteration=0.2,
            seconds_per_window=0.1,
            precision="fp32",
            device="cpu",
        )

    monkeypatch.setattr(costs, "measure_speed", fake_speed)
    return calls


def _dataset(root: Path) -> DatasetPaths:
    task = generate_task("mr", root / "source", n_cases=6, seed=3, shape=(16, 32, 32), n_test=1)
    paths = DatasetPaths(root / "workspace" / "Synth")
    convert_task(task, paths, workers=1, quiet=True)
    return paths


def test_a_budget_trains_what_it_decided_and_says_so(tmp_path, tiny_rule):
    paths = _dataset(tmp_path)
    summary = run_all(paths, OPTIONS)
    assert summary.selection == "3d_fullres"
    run = json.loads(paths.run_json.read_text())
    plan = run["time_budget"]
    assert [(t["configuration"], t["fold"]) for t in plan["trainings"]] == [
        ("3d_fullres", 0),
        ("3d_fullres", 1),
    ]
    assert all(t["epochs"] * t["iterations_per_epoch"] == 6 for t in plan["trainings"])
    assert plan["budget_seconds"] == 3600 and plan["estimated_seconds"] < 3600
    assert run["calibration"]["3d_fullres"]["seconds_per_iteration"] == 0.5
    assert run["calibration"]["3d_fullres"]["key"]
    # the schedule decided is the one trained (the learning rate runs over these epochs)
    for fold in (0, 1):
        log = (paths.fold_dir("3d_fullres", fold) / "log.jsonl").read_text().splitlines()
        assert len([line for line in log if line.strip()]) == plan["trainings"][fold]["epochs"]
    report = (paths.evaluation / "report.md").read_text()
    assert "## Time budget" in report and "- Budget: 1 h (--time-budget 1h)" in report
    first = plan["trainings"][0]
    shape = f"{first['epochs']} x {first['iterations_per_epoch']}"
    assert f"3d_fullres fold 0: {shape} = 6 iterations" in report
    status = dataset_status(paths)
    assert [t.epochs for t in status.trainings] == [first["epochs"]] * 2
    assert f"bought 3d_fullres fold 0 ({shape}), 3d_fullres fold 1 ({shape})" in budget_summary(
        status.run["time_budget"]
    )
    assert tiny_rule == ["3d_fullres"]

    # again: the calibration is reused, every training kept, nothing redone
    again = run_all(paths, OPTIONS)
    assert tiny_rule == ["3d_fullres"]
    assert not [s for s in again.ran if s.startswith("train")]


def test_a_budget_too_small_names_the_least_that_would_do(tmp_path, tiny_rule, monkeypatch):
    paths = _dataset(tmp_path)
    monkeypatch.setattr(budget, "MIN_ITERATIONS", 100_000)
    with pytest.raises(ToolkitError, match=r"buys no useful training here: .* give at least \d+ h"):
        run_all(paths, OPTIONS)
    # the calibration is kept for the next try
    assert json.loads(paths.run_json.read_text())["calibration"]["3d_fullres"]["key"]


def test_fixed_iterations_turn_a_presets_budget_off():
    from toolkit.pipeline.budget_run import budget_seconds
    from toolkit.pipeline.presets import get_preset

    quick = get_preset("quick")
    assert budget_seconds(RunOptions(preset="quick"), quick) == 30 * 60
    assert budget_seconds(RunOptions(preset="quick", epochs=3), quick) is None
    assert budget_seconds(RunOptions(preset="paper"), get_preset("paper")) is None
    assert budget_seconds(RunOptions(preset="paper", time_budget="2h"), get_preset("paper")) == 7200
    with pytest.raises(ToolkitError, match="give it or --epochs/--iters-per-epoch, not both"):
        RunOptions(time_budget="2h", iters_per_epoch=5).check()
    with pytest.raises(ToolkitError, match="--time-budget must be a duration"):
        RunOptions(time_budget="soon").check()
