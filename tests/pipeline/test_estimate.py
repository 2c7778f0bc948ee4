"""What the training stage costs: the pure estimator on fake numbers, and the count line."""

from __future__ import annotations

import pytest

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
