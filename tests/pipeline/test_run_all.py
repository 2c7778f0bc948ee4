"""run-all end to end on a tiny synthetic task: a smoke run, resume after SIGKILL, invalidation
of exactly what a changed plan affects, and the Ray executor."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pipeline_helpers import SMOKE_RUN_ALL_ARGS

from toolkit.convert.stage import convert_task
from toolkit.core.plans import Plans
from toolkit.pipeline.runner import RunOptions, run_all
from toolkit.pipeline.status import dataset_status
from toolkit.synthetic import generate_task
from toolkit.workspace import DatasetPaths

pytestmark = pytest.mark.slow

# tiny: 6 cases of 16x32x32, two folds, one epoch of two iterations per model
OPTIONS = RunOptions(
    preset="smoke",
    folds=(0, 1),
    epochs=1,
    iters_per_epoch=2,
    val_iters=1,
    device="cpu",
    workers=1,
    quiet=True,
)


def _make_dataset(root: Path) -> DatasetPaths:
    task = generate_task("mr", root / "source", n_cases=6, seed=3, shape=(16, 32, 32), n_test=1)
    paths = DatasetPaths(root / "workspace" / "Synth")
    convert_task(task, paths, workers=1, quiet=True)
    return paths


def _selection(paths: DatasetPaths) -> dict:
    data = json.loads(paths.selection_json.read_text())
    return {
        k: data[k] for k in ("candidate", "configurations", "folds", "postprocessing", "mean_dice")
    }


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One complete, uninterrupted smoke run (shared, never modified by the tests)."""
    root = tmp_path_factory.mktemp("runall")
    paths = _make_dataset(root)
    summary = run_all(paths, OPTIONS)
    return paths, summary


def _copy(paths: DatasetPaths, target: Path) -> DatasetPaths:
    shutil.copytree(paths.root, target / paths.name)
    return DatasetPaths(target / paths.name)


def test_smoke_run_all_produces_selection_report_and_status(finished):
    paths, summary = finished
    assert paths.selection_json.is_file()
    report = (paths.evaluation / "report.md").read_text()
    assert "![" in report and any(p.suffix == ".png" for p in paths.evaluation.iterdir())
    assert summary.selection == json.loads(paths.selection_json.read_text())["candidate"]
    for stage in (
        "verify",
        "fingerprint",
        "plan",
        "preprocess:2d",
        "preprocess:3d_fullres",
        "train:2d:0",
        "train:3d_fullres:1",
        "evaluate",
        "select",
    ):
        assert stage in summary.ran
    status = dataset_status(paths)
    assert {t.state for t in status.trainings} == {"done"}
    assert len(status.trainings) == 4
    assert all(s.state == "done" for s in status.stages)
    assert status.selection.candidate == summary.selection
    # the training stage's estimate, and the speeds measured in run-all's record
    assert (status.estimate.done, status.estimate.total) == (4, 4)
    assert status.estimate.seconds_left == 0.0
    run = json.loads(paths.run_json.read_text())
    assert run["trainings"] == [[c, f] for c in ("2d", "3d_fullres") for f in (0, 1)]
    assert (
        set(run["seconds_per_iteration"]) == set(run["validation_seconds"]) == {"2d", "3d_fullres"}
    )


def test_second_run_skips_everything(finished, tmp_path):
    paths = _copy(finished[0], tmp_path)
    summary = run_all(paths, OPTIONS)
    assert summary.ran == []
    assert _selection(paths) == _selection(finished[0])


def test_changed_plan_invalidates_exactly_what_depends_on_it(finished, tmp_path):
    paths = _copy(finished[0], tmp_path)
    plans = Plans.load(paths.plans_json)
    plans.configurations["2d"].batch_size += 1  # only 2d's training depends on this
    plans.save(paths.plans_json)
    summary = run_all(paths, OPTIONS)
    assert sorted(summary.ran) == sorted(["train:2d:0", "train:2d:1", "evaluate", "select"])


def test_changed_training_budget_retrains_but_keeps_preprocessing(finished, tmp_path):
    paths = _copy(finished[0], tmp_path)
    summary = run_all(paths, RunOptions(**{**OPTIONS.__dict__, "iters_per_epoch": 3}))
    assert "preprocess:2d" not in summary.ran and "plan" not in summary.ran
    assert {"train:2d:0", "train:2d:1", "train:3d_fullres:0", "train:3d_fullres:1"} <= set(
        summary.ran
    )


def test_sigkill_during_training_then_rerun_gives_the_same_selection(finished, tmp_path):
    paths = _copy(finished[0], tmp_path)
    # keep the converted raw data only: the run starts from scratch
    for child in paths.root.iterdir():
        if child.name != "raw":
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    env = {**os.environ, "TOOLKIT_QUIET": "1"}
    cmd = [sys.executable, "-m", "toolkit", "run-all", str(paths.root), *SMOKE_RUN_ALL_ARGS]
    proc = subprocess.Popen(
        cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    target = paths.fold_dir("3d_fullres", 0) / "log.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and not target.exists():
        time.sleep(0.2)
    assert proc.poll() is None, (
        f"run-all ended before the kill: {proc.stderr.read().decode()[-2000:]}"
    )
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not paths.selection_json.exists()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    # nothing half-written is left behind
    assert not [p for p in paths.root.rglob("*.tmp*")]
    assert _selection(paths)["candidate"] == _selection(finished[0])["candidate"]
    assert _selection(paths)["postprocessing"] == _selection(finished[0])["postprocessing"]


def test_ray_executor_gives_the_same_selection(finished, tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'toolkit[ray]')")
    paths = _copy(finished[0], tmp_path)
    for child in paths.root.iterdir():
        if child.name != "raw":
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        summary = run_all(paths, RunOptions(**{**OPTIONS.__dict__, "executor": "ray"}))
    finally:
        ray.shutdown()
    assert "train:3d_fullres:1" in summary.ran
    # the trainings and the per-case work ran as Ray tasks: 2 configurations x 2 folds; the
    # fingerprint and preprocessing of the 6 cases; evaluation and postprocessing of the
    # validation cases of folds 0-1 (verify was cached by the conversion)
    tasks = summary.ray_tasks
    assert tasks["training"] == 4
    assert tasks["fingerprint"] == tasks["preprocess 2d"] == tasks["preprocess 3d_fullres"] == 6
    assert tasks["evaluate"] == tasks["postprocessing"] > 0
    assert _selection(paths)["candidate"] == _selection(finished[0])["candidate"]
    assert _selection(paths)["postprocessing"] == _selection(finished[0])["postprocessing"]
