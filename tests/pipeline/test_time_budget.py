"""The time budget's rule (pipeline/budget.py) with fake speeds: no training runs here."""

import random

import pytest

from toolkit.errors import ToolkitError
from toolkit.pipeline.budget import (
    BREADTH_ITERATIONS,
    METHOD_ITERATIONS,
    MIN_EPOCHS,
    MIN_ITERATIONS,
    SAFETY_SHARE,
    TARGET_ITERATIONS,
    BudgetRequest,
    PlannedTraining,
    TrainingCost,
    check_time_budget,
    decide_budget,
    epoch_shape,
    ladder_order,
    least_budget,
    minutes,
    parse_duration,
)

MIN = 60.0


@pytest.mark.parametrize(
    "text, seconds",
    [("30m", 1800), ("2h", 7200), ("12h", 43200), ("1h30m", 5400), ("90s", 90), ("1.5h", 5400)],
)
def test_durations_parse(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30", "abc", "0m", "m", "30 minutes", "-5m"])
def test_a_bad_duration_is_one_line_naming_the_option(text):
    with pytest.raises(ToolkitError, match="^--time-budget must be") as caught:
        parse_duration(text)
    assert "\n" not in str(caught.value)


def test_a_budget_and_fixed_iterations_are_not_given_together():
    check_time_budget("30m", fixed=False)
    check_time_budget(None, fixed=True)
    with pytest.raises(ToolkitError, match="--time-budget decides the epochs"):
        check_time_budget("30m", fixed=True)


def costs(
    seconds_per_iteration, folds=(0, 1, 2, 3, 4), configuration="3d_fullres", validation=30.0
):
    return [
        TrainingCost(
            configuration=configuration,
            fold=f,
            seconds_per_iteration=seconds_per_iteration,
            seconds_per_validation_iteration=seconds_per_iteration / 3,
            validation_seconds=validation,
        )
        for f in folds
    ]


def request(budget, candidates, spent=60.0, after=60.0, kept=()):
    return BudgetRequest(
        budget=budget,
        spent=spent,
        after_training=after,
        candidates=candidates,
        iterations_per_epoch=150,
        validation_iterations=10,
        kept=kept,
    )


def test_a_short_budget_buys_one_training_as_long_as_it_can():
    plan = decide_budget(request(30 * MIN, costs(0.6)))
    (only,) = plan.trainings
    assert (only.configuration, only.fold) == ("3d_fullres", 0)
    assert MIN_ITERATIONS <= only.iterations < TARGET_ITERATIONS
    assert only.iterations_per_epoch == 150 and only.epochs >= MIN_EPOCHS
    assert plan.estimated_total <= 30 * MIN
    assert plan.estimated_total > (0.95 - SAFETY_SHARE) * 30 * MIN  # the budget is used, not wasted
    assert "would give 3d_fullres fold 0 the 3000 iterations" in plan.more_time


def test_past_the_target_one_fold_keeps_the_whole_budget_until_it_is_deep():
    plan = decide_budget(request(30 * MIN, costs(0.15)))
    (only,) = plan.trainings
    assert TARGET_ITERATIONS <= only.iterations < BREADTH_ITERATIONS
    assert plan.estimated_total > (0.95 - SAFETY_SHARE) * 30 * MIN
    assert f"more would add 3d_fullres fold 1 ({BREADTH_ITERATIONS} iterations each)" in (
        plan.more_time
    )
    # the time it names buys exactly that: fold 0 and fold 1 at the breadth threshold
    extra = float(plan.more_time.split("~")[1].split(" min")[0]) * MIN
    two = decide_budget(request(30 * MIN + extra + MIN, costs(0.15)))
    assert [t.fold for t in two.trainings] == [0, 1]
    lone = decide_budget(request(30 * MIN, costs(0.15, folds=(0,))))
    assert "more would double 3d_fullres fold 0's iterations" in lone.more_time


def test_a_fast_machine_buys_folds_only_once_the_first_reaches_the_breadth_threshold():
    plan = decide_budget(request(30 * MIN, costs(0.04)))
    assert 1 < len(plan.trainings) < 5
    assert [t.fold for t in plan.trainings] == list(range(len(plan.trainings)))
    assert all(t.iterations >= BREADTH_ITERATIONS for t in plan.trainings)
    assert len({t.iterations for t in plan.trainings}) == 1  # alike budgets across folds
    assert plan.estimated_total <= 30 * MIN
    assert "more would add 3d_fullres fold" in plan.more_time


def test_every_fold_then_more_iterations_up_to_the_methods():
    plan = decide_budget(request(12 * 3600, costs(0.08)))
    assert [t.fold for t in plan.trainings] == [0, 1, 2, 3, 4]
    assert BREADTH_ITERATIONS < plan.trainings[0].iterations <= METHOD_ITERATIONS
    assert "double every training's iterations" in plan.more_time
    huge = decide_budget(request(10_000 * 3600, costs(0.08)))
    assert all(METHOD_ITERATIONS - 150 < t.iterations <= METHOD_ITERATIONS for t in huge.trainings)


def test_a_slow_machine_gets_a_one_line_error_with_the_least_budget_that_would_do():
    slow = request(30 * MIN, costs(20.0))
    with pytest.raises(ToolkitError) as caught:
        decide_budget(slow)
    message = str(caught.value)
    assert "\n" not in message and "buys no useful training" in message
    least = least_budget(slow)
    assert f"give at least {minutes(-(-least // 60) * 60)}" in message
    enough = decide_budget(request(least + 1, costs(20.0)))
    assert enough.trainings[0].iterations >= MIN_ITERATIONS - MIN_EPOCHS


def test_what_came_before_training_counts_against_the_budget():
    fresh = decide_budget(request(30 * MIN, costs(0.5), spent=60))
    late = decide_budget(request(30 * MIN, costs(0.5), spent=10 * MIN))
    assert late.trainings[0].iterations < fresh.trainings[0].iterations
    with pytest.raises(ToolkitError, match="buys no useful training"):
        decide_budget(request(30 * MIN, costs(0.5), spent=29 * MIN))


def test_another_configuration_comes_with_all_its_folds_or_not_at_all():
    ladder = costs(0.01) + costs(0.01, configuration="2d", validation=5.0)
    plan = decide_budget(request(3.5 * 3600, ladder))
    chosen = [(t.configuration, t.fold) for t in plan.trainings]
    assert chosen[:5] == [("3d_fullres", f) for f in range(5)]
    two_d = [f for c, f in chosen if c == "2d"]
    assert two_d in ([], [0, 1, 2, 3, 4])
    assert decide_budget(request(40 * 3600, ladder)).trainings[-1].configuration == "2d"


def test_configurations_are_bought_3d_fullres_first():
    order = ladder_order(
        ["2d", "3d_fullres", "3d_lowres"],
        {"2d": "2d", "3d_fullres": "3d_fullres", "3d_lowres": "3d_lowres"},
        [0, 1],
    )
    assert order == [
        ("3d_fullres", 0),
        ("3d_fullres", 1),
        ("2d", 0),
        ("2d", 1),
        ("3d_lowres", 0),
        ("3d_lowres", 1),
    ]


def kept_training(fold, iterations, seconds=0.0):
    epochs, per_epoch = epoch_shape(iterations, 150)
    return PlannedTraining(
        configuration="3d_fullres",
        fold=fold,
        epochs=epochs,
        iterations_per_epoch=per_epoch,
        seconds=seconds,
    )


def test_a_slower_machine_drops_a_training_not_started_yet():
    first = decide_budget(request(60 * MIN, costs(0.1)))
    assert len(first.trainings) >= 2
    fold0 = first.trainings[0]
    spent = 60 + fold0.seconds * 3  # fold 0 took three times its estimate
    again = decide_budget(
        request(60 * MIN, costs(0.3), spent=spent, kept=[kept_training(0, fold0.iterations)])
    )
    assert len(again.trainings) < len(first.trainings)
    assert again.trainings[0].kept and again.trainings[0].iterations == fold0.iterations
    assert again.estimated_total <= 60 * MIN or len(again.trainings) == 1


def test_a_kept_training_below_the_breadth_threshold_gets_no_partial_companions():
    for iterations in (1000, BREADTH_ITERATIONS - 150):
        plan = decide_budget(request(10 * 3600, costs(0.1), kept=[kept_training(0, iterations)]))
        assert [(t.fold, t.kept) for t in plan.trainings] == [(0, True)]


def test_added_folds_get_no_more_iterations_than_the_kept_ones():
    kept = [kept_training(0, BREADTH_ITERATIONS + 1500)]
    plan = decide_budget(request(10 * 3600, costs(0.1), kept=kept))
    assert all(t.iterations <= BREADTH_ITERATIONS + 1500 for t in plan.trainings)
    assert len(plan.trainings) == 5


@pytest.mark.parametrize(
    "iterations, shape", [(3000, (20, 150)), (3075, (20, 150)), (300, (4, 75)), (160, (4, 40))]
)
def test_iterations_become_epochs_of_the_preferred_length_or_shorter(iterations, shape):
    assert epoch_shape(iterations, 150) == shape
    epochs, per_epoch = shape
    assert epochs * per_epoch <= iterations


def test_the_estimate_stays_within_the_budget_whatever_the_speeds():
    rng = random.Random(0)
    for _ in range(300):
        budget = rng.uniform(5 * MIN, 24 * 3600)
        speed = rng.uniform(0.01, 3.0)
        folds = tuple(range(rng.randint(1, 5)))
        try:
            plan = decide_budget(
                request(budget, costs(speed, folds=folds, validation=rng.uniform(0, 300)))
            )
        except ToolkitError:
            continue
        assert plan.estimated_total <= budget
        assert plan.trainings and plan.trainings[0].fold == folds[0]


def test_minutes_read_as_people_say_them():
    assert minutes(45) == "45 s"
    assert minutes(270) == "4 min 30 s"
    assert minutes(1800) == "30 min"
    assert minutes(7500) == "2 h 5 min"


def test_a_training_that_ran_slower_than_calibrated_replans_the_next_ones(tmp_path):
    """BudgetRun: the slowdown the finished training's log shows is applied to the next ones."""
    import json as json_module
    import time as time_module

    from toolkit.pipeline.budget_run import BudgetRun
    from toolkit.workspace import DatasetPaths

    paths = DatasetPaths(tmp_path / "X")
    speed = {
        "seconds_per_iteration": 0.04,
        "seconds_per_validation_iteration": 0.03,
        "seconds_per_window": 0.1,
        "device": "cpu",
        "precision": "bf16",
    }
    run = BudgetRun(
        budget=60 * MIN,
        started=time_module.time(),
        speeds={"3d_fullres": speed},
        validation={("3d_fullres", f): 20.0 for f in range(5)},
        ladder=[("3d_fullres", f) for f in range(5)],
        iterations_per_epoch=150,
        validation_iterations=10,
        export_reserve=0.0,
        cases_per_fold={f: 4 for f in range(5)},
    )
    first = run.decide(time_module.time())
    assert len(first.trainings) >= 3
    fold0 = run.next_training()
    # fold 0's log: each epoch took three times the calibrated time
    per_iteration = 3 * (0.04 + (10 * 0.03 + 1.0) / 150)
    log = paths.fold_dir("3d_fullres", 0) / "log.jsonl"
    log.parent.mkdir(parents=True)
    log.write_text(
        "".join(
            json_module.dumps(
                {
                    "epoch": e,
                    "train_loss": 1.0,
                    "val_loss": 1.0,
                    "pseudo_dice": [0.5],
                    "mean_pseudo_dice": 0.5,
                    "ema_pseudo_dice": 0.5,
                    "lr": 0.01,
                    "epoch_time_s": 150 * per_iteration,
                    "data_wait_s": 0.0,
                    "train_iterations": 150,
                    "timestamp": time_module.time(),
                }
            )
            + "\n"
            for e in range(fold0.epochs)
        )
    )
    run.started -= fold0.seconds * 3  # and the clock moved on as much
    run.finished(fold0, paths)
    assert run.slowdown == pytest.approx(3.0, rel=0.01)
    again = run.decide(time_module.time())
    assert len(again.trainings) < len(first.trainings)
    assert again.trainings[0].kept and again.trainings[0].fold == 0
    assert run.more_time
    lines = run.report_lines("--time-budget 1h")
    assert lines[0].startswith("- Budget: 1 h (--time-budget 1h)")
    assert "3.00x the calibrated time" in lines[1]
    assert "over the budget" not in lines[-2] + lines[-1]
    run.started -= run.budget  # past the budget: the report says it from the estimate
    ended = next(x for x in run.report_lines("--time-budget 1h") if "ended" in x)
    assert "evaluation and selection, as estimated, would end about" in ended


def test_a_window_costs_at_most_a_training_iterations_share_of_one_sample():
    from toolkit.pipeline.costs import window_seconds

    timed = {"seconds_per_window": 2.14, "seconds_per_iteration": 0.514}
    assert window_seconds(timed, 2) == pytest.approx(0.257)
    assert window_seconds({**timed, "seconds_per_window": 0.1}, 2) == 0.1
