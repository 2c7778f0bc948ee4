"""What the training stage costs: the pure estimator on fake numbers, the count line, and the
estimate ``toolkit status`` and run-all read from fake training logs."""

from __future__ import annotations

import json
import os
import time

import pytest

from toolkit import progress
from toolkit.core.plans import Architecture, Configuration, Normalization, Plans
from toolkit.pipeline import records
from toolkit.pipeline.estimate import (
    ConfigurationSpeed,
    TrainingWork,
    approximate_duration,
    count_line,
    estimate_stage,
    guess_speeds,
    planned_trainings,
    remaining_seconds,
    speed_from_epochs,
)
from toolkit.pipeline.presets import get_preset
from toolkit.pipeline.records import train_stage
from toolkit.pipeline.runner import RunOptions, Stages
from toolkit.pipeline.status import (
    LiveEstimate,
    TrainingRow,
    dataset_status,
    render,
    training_work,
)
from toolkit.pipeline.training_task import TrainTask
from toolkit.workspace import TRAINING_LOG, DatasetPaths


def work(configuration, fold, done, total, finished=False):
    return TrainingWork(
        configuration=configuration,
        fold=fold,
        iterations_done=done,
        iterations_total=total,
        done=finished,
    )


# the pure estimator ---------------------------------------------------------------------------


def test_speed_leaves_out_the_first_epoch_and_keeps_the_latest():
    assert speed_from_epochs([]) is None
    assert speed_from_epochs([(10.0, 5)]) == 2.0  # the only epoch: warm-up included
    assert speed_from_epochs([(30.0, 5), (5.0, 5), (5.0, 5)]) == 1.0
    # the latest five epochs after the first
    epochs = [(100.0, 10)] + [(50.0, 10)] * 3 + [(10.0, 10)] * 5
    assert speed_from_epochs(epochs) == pytest.approx(1.0)


def test_remaining_seconds_per_configuration_with_validation():
    trainings = [
        work("2d", 0, 1000, 1000, finished=True),
        work("2d", 1, 400, 1000),
        work("3d_fullres", 0, 0, 1000),
    ]
    speeds = {"2d": 0.1, "3d_fullres": 0.5}
    assert remaining_seconds(trainings, speeds) == pytest.approx(600 * 0.1 + 1000 * 0.5)
    assert remaining_seconds(trainings, speeds, {"2d": 30.0, "3d_fullres": 60.0}) == (
        pytest.approx(60 + 30 + 500 + 60)
    )
    # a configuration with work left and no speed: no estimate
    assert remaining_seconds(trainings, {"2d": 0.1}) is None
    # ... but one whose trainings are all done needs none
    assert remaining_seconds(trainings[:1], {}) == 0.0
    # extrapolated past the total: nothing left, not negative
    assert remaining_seconds([work("2d", 0, 1003.5, 1000)], speeds) == 0.0


def test_untimed_configurations_are_scaled_from_the_closest_timed_one():
    speeds = {
        "2d": ConfigurationSpeed(seconds_per_iteration=0.2, voxels_per_iteration=1000),
        "3d_lowres": ConfigurationSpeed(seconds_per_iteration=1.0, voxels_per_iteration=8000),
        "3d_fullres": ConfigurationSpeed(voxels_per_iteration=16000),
        "unsized": ConfigurationSpeed(),
    }
    per_iteration, guessed_from = guess_speeds(speeds)
    assert per_iteration["3d_fullres"] == pytest.approx(2.0)  # from 3d_lowres, x2 voxels
    assert guessed_from == {"3d_fullres": "3d_lowres"}
    assert "unsized" not in per_iteration
    assert guess_speeds({"3d_fullres": ConfigurationSpeed(voxels_per_iteration=9)}) == ({}, {})


def test_stage_estimate_says_what_was_guessed_and_left_out():
    trainings = [work("2d", 0, 10, 10, finished=True), work("2d", 1, 5, 10)]
    trainings += [work("3d_fullres", f, 0, 10) for f in (0, 1)]
    speeds = {
        "2d": ConfigurationSpeed(
            seconds_per_iteration=1.0, validation_seconds=20.0, voxels_per_iteration=100
        ),
        "3d_fullres": ConfigurationSpeed(voxels_per_iteration=1000),
    }
    estimate = estimate_stage(trainings, speeds)
    assert (estimate.done, estimate.total) == (1, 4)
    assert estimate.seconds_left == pytest.approx(5 + 20 + 2 * 10 * 10.0)
    assert estimate.validation_left_out == ("3d_fullres",)
    assert estimate.describe() == (
        "1/4 trainings done, ~4 min left "
        "(3d_fullres guessed from 2d; final validation not timed yet)"
    )
    assert estimate.note() == (
        "training: ~4 min left, 1/4 done (3d_fullres guessed, validation not timed)"
    )
    # only measured speeds go into the record
    assert estimate.as_record() == {
        "seconds_per_iteration": {"2d": 1.0},
        "validation_seconds": {"2d": 20.0},
    }
    nothing_timed = estimate_stage(trainings, {"2d": ConfigurationSpeed()})
    assert nothing_timed.seconds_left is None
    assert nothing_timed.time_left() == "time left estimated after the first epoch"
    assert estimate_stage(trainings[:1], speeds).describe() == "1/1 trainings done"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "~1 s"), (42.4, "~42 s"), (59.6, "~1 min"), (725, "~12 min"), (4800, "~1 h 20 min")]
    + [(7200, "~2 h"), (3 * 86400 + 4 * 3600, "~3 d 4 h")],
)
def test_approximate_duration(seconds, text):
    assert approximate_duration(seconds) == text


# the count line ------------------------------------------------------------------------------


def test_count_line_of_the_smoke_preset():
    smoke = get_preset("smoke")
    planned = planned_trainings(smoke.configs, {}, smoke.folds, range(5))
    assert planned == [(c, f) for c in smoke.configs for f in smoke.folds]
    line = count_line(planned, smoke.epochs, smoke.iters_per_epoch)
    assert line == (
        f"{len(planned)} trainings ({len(smoke.configs)} configurations x {len(smoke.folds)} "
        f"folds: {', '.join(smoke.configs)}), {smoke.epochs} epochs x "
        f"{smoke.iters_per_epoch} iterations each"
    )
    assert count_line([("2d", 0), ("2d", 1), ("3d_fullres", 0), ("3d_fullres", 1)], 2, 4) == (
        "4 trainings (2 configurations x 2 folds: 2d, 3d_fullres), 2 epochs x 4 iterations each"
    )


def test_count_line_with_a_cascade_and_a_resume():
    previous = {"3d_cascade_fullres": "3d_lowres"}
    # the cascade's first stage trains every fold, and before the cascade
    planned = planned_trainings(["3d_cascade_fullres", "3d_lowres"], previous, [0], range(5))
    assert planned[:5] == [("3d_lowres", f) for f in range(5)]
    assert planned[5:] == [("3d_cascade_fullres", 0)]
    assert count_line(planned, 1000, 250, done=2) == (
        "6 trainings (3d_lowres x 5 folds, 3d_cascade_fullres x 1 fold), "
        "1000 epochs x 250 iterations each, 2 already done"
    )


# from the files on disk ---------------------------------------------------------------------


def _plans() -> Plans:
    def configuration(name, patch, batch):
        dims = len(patch)
        arch = Architecture([4, 8], [[3] * dims] * 2, [[1] * dims, [2] * dims], [1, 1], [1])
        return Configuration(
            name,
            name,
            dims,
            [1.0] * 3,
            [20, 24, 24],
            list(patch),
            batch,
            arch,
            [Normalization("zscore")],
        )

    configs = {
        "2d": configuration("2d", (16, 16), 4),
        "3d_fullres": configuration("3d_fullres", (16, 16, 16), 2),
    }
    labels = {"background": 0, "a": 1}
    return Plans(
        "Fake", {"0": "MR"}, labels, [0, 1, 2], [0, 1, 2], [1.0] * 3, [20, 24, 24], configs
    )


EPOCHS, ITERATIONS = 10, 5


def _write_log(paths, configuration, fold, epochs, ended):
    """``epochs`` epochs of 2 s (the first of 4 s): 0.4 s per iteration; the last ended at
    ``ended``."""
    lines = []
    for e in range(epochs):
        seconds = 4.0 if e == 0 else 2.0
        record = {
            "epoch": e,
            "train_loss": 1.0,
            "val_loss": 1.0,
            "pseudo_dice": [0.5],
            "mean_pseudo_dice": 0.5,
            "ema_pseudo_dice": 0.5,
            "lr": 0.01,
            "epoch_time_s": seconds,
            "data_wait_s": 0.0,
            "train_iterations": ITERATIONS,
            "timestamp": ended - 2.0 * (epochs - 1 - e),
        }
        lines.append(json.dumps(record))
    log = paths.fold_dir(configuration, fold) / TRAINING_LOG
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("\n".join(lines) + "\n")
    os.utime(log, (ended, ended))


@pytest.fixture
def fake_run(tmp_path):
    """run-all's record and logs: 2d fold 0 done (validation 6 s), fold 1 interrupted after
    4 of 10 epochs, 3d_fullres not started."""
    paths = DatasetPaths(tmp_path / "Fake")
    _plans().save(paths.plans_json)
    trainings = [["2d", 0], ["2d", 1], ["3d_fullres", 0], ["3d_fullres", 1]]
    run = {"configurations": ["2d", "3d_fullres"], "folds": [0, 1], "trainings": trainings}
    paths.pipeline.mkdir(parents=True)
    paths.run_json.write_text(json.dumps({**run, "epochs": EPOCHS, "iters_per_epoch": ITERATIONS}))
    long_ago = time.time() - 7200
    _write_log(paths, "2d", 0, EPOCHS, long_ago)
    summary = paths.validation_summary("2d", 0)
    summary.parent.mkdir(parents=True)
    summary.write_text("{}")
    os.utime(summary, (long_ago + 6, long_ago + 6))
    records.write_record(paths, train_stage("2d", 0), "key-2d-0", long_ago - 30)
    _write_log(paths, "2d", 1, 4, long_ago + 60)
    return paths


# 2d: 0.4 s/iteration, 30 iterations left + 6 s validation; 3d_fullres: 8x the voxels per
# iteration (16^3 x 2 against 16^2 x 4), guessed 3.2 s/iteration, 2 x 50 iterations
FAKE_SECONDS_LEFT = 30 * 0.4 + 6 + 2 * 50 * 3.2


def test_status_shows_trainings_done_and_the_estimate_from_the_logs(fake_run, capsys):
    status = dataset_status(fake_run)
    assert [(t.configuration, t.fold, t.state) for t in status.trainings] == [
        ("2d", 0, "done"),
        ("2d", 1, "interrupted"),
        ("3d_fullres", 0, "pending"),
        ("3d_fullres", 1, "pending"),
    ]
    estimate = status.estimate
    assert (estimate.done, estimate.total) == (1, 4)
    assert estimate.seconds_per_iteration == pytest.approx({"2d": 0.4, "3d_fullres": 3.2})
    assert estimate.validation_seconds == pytest.approx({"2d": 6.0}, abs=0.01)
    assert estimate.seconds_left == pytest.approx(FAKE_SECONDS_LEFT, abs=0.1)
    assert status.trainings[1].seconds_left == pytest.approx(30 * 0.4 + 6, abs=0.01)
    assert status.trainings[2].seconds_left == pytest.approx(50 * 3.2)
    render(status)
    out = capsys.readouterr().out
    assert "1/4 trainings done, ~6 min left (3d_fullres guessed from 2d;" in " ".join(out.split())
    assert "3d_fullres 3.2 s/iteration (guessed)" in out


def test_status_without_a_run_all_budget_has_no_estimate(fake_run):
    fake_run.run_json.unlink()
    status = dataset_status(fake_run)
    assert status.estimate is None
    assert len(status.trainings) == 10  # every configuration and fold of the plan


def test_a_running_training_counts_down_between_epochs():
    row = TrainingRow("2d", 1, "running", epoch=2, epochs=EPOCHS, iterations=2 * ITERATIONS)
    row.seconds_per_iteration, row.last_logged = 0.5, 100.0
    assert training_work(row, ITERATIONS, now=101.0).iterations_done == 12
    # never more than one epoch past the log
    assert training_work(row, ITERATIONS, now=200.0).iterations_done == 15
    row.state = "interrupted"
    assert training_work(row, ITERATIONS, now=200.0).iterations_done == 10
    # trained: its final validation counts down
    row.state, row.iterations = "running", EPOCHS * ITERATIONS
    validating = training_work(row, ITERATIONS, now=104.0)
    assert (validating.iterations_done, validating.seconds_validating) == (50, 4.0)


def test_a_running_final_validation_counts_down():
    validating = TrainingWork(
        configuration="2d", fold=0, iterations_done=10, iterations_total=10, seconds_validating=4
    )
    assert remaining_seconds([validating], {"2d": 1.0}, {"2d": 10.0}) == 6.0
    assert remaining_seconds([validating], {"2d": 1.0}, {"2d": 3.0}) == 0.0


def test_live_estimate_counts_a_training_done_by_its_key(fake_run):
    keys = {
        ("2d", 0): "key-2d-0",
        ("2d", 1): "k1",
        ("3d_fullres", 0): "k2",
        ("3d_fullres", 1): "k3",
    }
    live = LiveEstimate(fake_run, _plans(), keys, EPOCHS, ITERATIONS)
    assert live.estimate().done == 1
    assert live.note().startswith("training: ~6 min left, 1/4 done (3d_fullres guessed")
    # a log written since run-all started: counted down; one from before: not
    _write_log(fake_run, "2d", 1, 4, time.time() - 5)
    live.started = time.time() - 10
    assert live.estimate().seconds_left < FAKE_SECONDS_LEFT - 1
    live.started = time.time()
    assert live.estimate().seconds_left == pytest.approx(FAKE_SECONDS_LEFT, abs=0.1)
    # trained from other inputs (a changed plan): to be trained again
    stale = LiveEstimate(fake_run, _plans(), {**keys, ("2d", 0): "changed"}, EPOCHS, ITERATIONS)
    assert stale.estimate().done == 0


class _FakeExecutor:
    def __init__(self):
        self.columns = []

    def run(self, tasks, on_done=None):
        with progress.progress_bar() as bar:
            self.columns = [type(c).__name__ for c in bar.columns]
        for task in tasks:
            on_done(task)


def test_run_all_says_what_training_costs_before_and_as_it_goes(fake_run, capsys):
    stages = Stages(
        fake_run,
        RunOptions(preset="smoke", folds=(0, 1), epochs=EPOCHS, iters_per_epoch=ITERATIONS),
    )
    tasks = [
        TrainTask(str(fake_run.root), c, f, k, EPOCHS, ITERATIONS, 1, 0, "cpu", True)
        for (c, f), k in {("2d", 0): "key-2d-0", ("2d", 1): "k1", ("3d_fullres", 0): "k2"}.items()
    ]
    executor = _FakeExecutor()
    live = stages.train(executor, _plans(), tasks, tasks[1:])
    err = " ".join(capsys.readouterr().err.split())
    assert (
        "training: 3 trainings (2d x 2 folds, 3d_fullres x 1 fold), 10 epochs x 5 iterations "
        "each, 1 already done; ~3 min left (3d_fullres guessed from 2d;"
    ) in err
    assert "training: 2d fold 1 done; 1/3 trainings done, ~3 min left" in err
    assert "_NoteColumn" in executor.columns  # the stage's time left beside each bar
    assert live.estimate().total == 3
    assert stages.summary.ran == [t.stage for t in tasks[1:]]
