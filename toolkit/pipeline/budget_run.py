"""``run-all --time-budget`` as it runs: the decision, made again at each training's start.

The decision itself is :func:`toolkit.pipeline.budget.decide_budget` (pure); what it is made
from is measured and estimated by :mod:`toolkit.pipeline.costs`. This module executes it: one
training at a time, and after each, how much slower or faster the machine ran than calibrated
(its logged epochs against the calibrated estimate; its final validation likewise) is applied
to every estimate of the trainings not started yet, which are decided again at their start. A
running training keeps its schedule. A resumed run keeps the schedules of the trainings the
previous plan finished or started.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

from toolkit.core.plans import Plans
from toolkit.core.splits import load_or_create_splits
from toolkit.errors import ToolkitError
from toolkit.io.atomic import write_json
from toolkit.io.json_files import read_json
from toolkit.io.preprocessed import complete_cases
from toolkit.pipeline import records
from toolkit.pipeline.budget import (
    BudgetPlan,
    BudgetRequest,
    PlannedTraining,
    TrainingCost,
    decide_budget,
    effective_seconds_per_iteration,
    ladder_order,
    minutes,
    parse_duration,
)
from toolkit.pipeline.costs import (
    after_training_seconds,
    calibrate,
    fold_validation_seconds,
    validated_cases,
    window_seconds,
)
from toolkit.pipeline.status import LiveEstimate, training_row
from toolkit.progress import info, progress_note


@dataclass
class BudgetRun:
    """The state of one budgeted training stage: speeds, slowdown, trainings done."""

    budget: float
    started: float  # run-all's start (time.time())
    speeds: dict[str, dict]
    validation: dict[tuple[str, int], float]  # estimated final validation per training
    ladder: list[tuple[str, int]]
    iterations_per_epoch: int
    validation_iterations: int
    export_reserve: float
    cases_per_fold: dict[int, int]
    slowdown: float = 1.0  # measured / calibrated seconds per iteration, latest training
    validation_slowdown: float = 1.0
    done: list[PlannedTraining] = field(default_factory=list)
    started_unfinished: list[PlannedTraining] = field(default_factory=list)
    replans: list[str] = field(default_factory=list)
    plan: BudgetPlan | None = None
    more_time: str = ""  # what more time would add, as said by the last plan with work left
    first_estimate: float = 0.0  # the first decision's estimate of the whole run, seconds

    def cost(self, configuration: str, fold: int) -> TrainingCost:
        s = self.speeds[configuration]
        return TrainingCost(
            configuration=configuration,
            fold=fold,
            seconds_per_iteration=s["seconds_per_iteration"] * self.slowdown,
            seconds_per_validation_iteration=s["seconds_per_validation_iteration"] * self.slowdown,
            validation_seconds=self.validation[(configuration, fold)] * self.validation_slowdown,
        )

    def decide(self, now: float) -> BudgetPlan:
        """The decision now; evaluation is estimated for the folds the plan trains (first for
        the first fold alone, again when the plan bought more)."""
        configs = list(dict.fromkeys(c for c, _ in self.ladder))
        folds = [self.ladder[0][1]]
        for _ in range(2):
            cases = sum(self.cases_per_fold.get(f, 0) for f in folds)
            request = BudgetRequest(
                budget=self.budget,
                spent=now - self.started,
                after_training=after_training_seconds(cases, len(configs), self.export_reserve),
                candidates=[self.cost(c, f) for c, f in self.ladder],
                iterations_per_epoch=self.iterations_per_epoch,
                validation_iterations=self.validation_iterations,
                kept=[*self.done, *self.started_unfinished],
            )
            plan = decide_budget(request)
            trained = sorted({t.fold for t in plan.trainings})
            if trained == folds or not trained:
                break
            folds = trained
        self.plan = plan
        self.first_estimate = self.first_estimate or self.plan.estimated_total
        if self.next_training() is not None and self.plan.more_time:
            self.more_time = self.plan.more_time
        return self.plan

    def next_training(self) -> PlannedTraining | None:
        """The interrupted training first (its schedule kept), then the plan's next one."""
        if self.started_unfinished:
            return self.started_unfinished[0]
        finished = {(t.configuration, t.fold) for t in self.done}
        assert self.plan is not None
        for t in self.plan.trainings:
            if (t.configuration, t.fold) not in finished:
                return t
        return None

    def finished(self, training: PlannedTraining, paths) -> None:
        """A training ended: keep it, and measure how the machine's speed changed."""
        self.started_unfinished = [
            t
            for t in self.started_unfinished
            if (t.configuration, t.fold) != (training.configuration, training.fold)
        ]
        self.done.append(replace(training, seconds=0.0, kept=True))
        row = training_row(paths, training.configuration, training.fold, training.epochs)
        calibrated = self.speeds[training.configuration]
        expected = effective_seconds_per_iteration(
            TrainingCost(
                configuration=training.configuration,
                fold=training.fold,
                seconds_per_iteration=calibrated["seconds_per_iteration"],
                seconds_per_validation_iteration=calibrated["seconds_per_validation_iteration"],
            ),
            training.iterations_per_epoch,
            self.validation_iterations,
        )
        if row.seconds_per_iteration and expected > 0:
            self.slowdown = row.seconds_per_iteration / expected
        estimated = self.validation.get((training.configuration, training.fold), 0.0)
        if row.validation_seconds and estimated > 0:
            self.validation_slowdown = row.validation_seconds / estimated

    def record(self, calibration: dict) -> dict:
        assert self.plan is not None
        return {
            "time_budget": {
                **self.plan.as_record(),
                "slowdown": round(self.slowdown, 3),
                "validation_slowdown": round(self.validation_slowdown, 3),
                "replans": list(self.replans),
                "done": [[t.configuration, t.fold] for t in self.done],
                "more_time": self.more_time or self.plan.more_time,
            },
            "calibration": calibration,
        }

    def report_lines(self, source: str) -> list[str]:
        """The report's section: the budget, what it bought, what more time would add."""
        assert self.plan is not None
        bought = ", ".join(
            f"{t.configuration} fold {t.fold}: {t.epochs} x {t.iterations_per_epoch} = {t.iterations} iterations"
            for t in self.plan.trainings
        )
        speeds = ", ".join(
            f"{c} {s['seconds_per_iteration']:.3g} s/iteration ({s['device']}, {s['precision']})"
            for c, s in self.speeds.items()
        )
        lines = [
            f"- Budget: {minutes(self.budget)} ({source}), from run-all's start to `selection.json`.",
            f"- Calibrated speeds: {speeds}; the latest training ran at {self.slowdown:.2f}x the "
            f"calibrated time per iteration, its final validation at {self.validation_slowdown:.2f}x "
            "the estimate (other load on the machine slows both).",
            f"- Bought: {bought}.",
        ]
        ended = time.time() - self.started
        over = ended + self.plan.after_training - self.budget
        lines.append(
            f"- Training and final validation ended {minutes(ended)} after the start (planned: "
            f"{minutes(self.first_estimate - self.plan.after_training)})"
            + (
                f"; evaluation and selection, as estimated, would end about {minutes(over)} over the budget."
                if over > 0
                else "."
            )
        )
        if self.replans:
            lines.append(f"- Re-planned at a training's start: {'; '.join(self.replans)}.")
        if self.more_time:
            lines.append(f"- More time: {self.more_time} (the estimate before the last training).")
        return lines


def budget_seconds(options, preset) -> float | None:
    """The time budget: ``--time-budget``, else the preset's unless ``--epochs`` or
    ``--iters-per-epoch`` fix the iterations; None: no budget."""
    if options.time_budget is not None:
        return parse_duration(options.time_budget)
    if options.epochs is not None or options.iters_per_epoch is not None:
        return None
    return preset.time_budget_s


def budget_text_source(options_budget: str | None, preset: str) -> str:
    return f"--time-budget {options_budget}" if options_budget else f"the {preset} preset's"


def require_budget_configurations(
    plans: Plans, configurations: list[str], quiet: bool
) -> list[str]:
    """The configurations a budget can train: a cascade is left out (it needs every fold of its
    first stage first), said once."""
    kept = [c for c in configurations if not plans.configuration(c).is_cascade]
    left_out = [c for c in configurations if c not in kept]
    if left_out and not quiet:
        info(
            f"time budget: {', '.join(left_out)} left out (a cascade needs every fold of its first stage)"
        )
    if not kept:
        raise ToolkitError(
            f"--time-budget has nothing to train: {', '.join(configurations)} are cascades; add 3d_fullres or 2d"
        )
    return kept


def save_run_record(paths, run_record: dict, run: BudgetRun, calibration: dict) -> None:
    """run.json with the plan: its trainings (read by ``status``), the first one's schedule as
    the run's epochs and iterations, the budget's decision and the calibration."""
    plan = run.plan.trainings if run.plan else ()
    shape = (
        {"epochs": plan[0].epochs, "iters_per_epoch": plan[0].iterations_per_epoch} if plan else {}
    )
    trainings = {"trainings": [[t.configuration, t.fold] for t in plan]}
    write_json(paths.run_json, {**run_record, **shape, **trainings, **run.record(calibration)})


def describe_plan(plan: BudgetPlan) -> str:
    text = plan.describe()
    return f"{text}; {plan.more_time}" if plan.more_time else text


def previous_record(paths) -> dict:
    """The run-all record before this run rewrites it (its calibration and plan); {} if none
    or unreadable."""
    if not paths.run_json.is_file():
        return {}
    try:
        return read_json(paths.run_json, what="run-all record")
    except ToolkitError:
        return {}


def train_within_budget(
    stages,
    executor,
    plans: Plans,
    configs: list[str],
    preprocess_keys: dict[str, str],
    run_record: dict,
    previous: dict,
):
    """Calibrate, decide, and train one training at a time, deciding again before each.

    Returns the training tasks run or kept, the folds and configurations to evaluate, and
    the report's lines."""
    paths, o = stages.paths, stages.options
    quiet, start = o.quiet, run_record["started_at"]
    budget = budget_seconds(o, stages.preset)
    trainable = require_budget_configurations(plans, configs, quiet)
    calibration = calibrate(
        paths,
        plans,
        trainable,
        device=o.device,
        precision=o.precision,
        previous=previous.get("calibration") or {},
        quiet=quiet,
    )
    data_folder = paths.preprocessed_dir(plans.configuration(trainable[0]).data_identifier)
    load_or_create_splits(paths.splits_json, complete_cases(data_folder))  # as training would
    folds = [f for f in (o.folds or stages.all_folds()) if f in stages.all_folds()]
    mirroring = stages.preset.validation_mirroring
    validation = {
        (c, f): fold_validation_seconds(
            paths,
            plans,
            c,
            f,
            window_seconds(calibration[c], plans.configuration(c).batch_size),
            mirroring,
        )
        for c in trainable
        for f in folds
    }
    _, iters, val_iters = stages.schedule()
    base_names = {c: plans.configuration(c).base_name for c in trainable}
    run = BudgetRun(
        budget=budget,
        started=start,
        speeds=calibration,
        validation=validation,
        ladder=ladder_order(trainable, base_names, folds),
        iterations_per_epoch=iters,
        validation_iterations=val_iters,
        export_reserve=stages.preset.export_reserve_s,
        cases_per_fold=validated_cases(paths, folds),
    )
    keep_earlier_trainings(run, previous, stages, plans, preprocess_keys)
    write_json(paths.run_json, {**run_record, "calibration": calibration})  # kept if none fits
    run.decide(time.time())
    if not quiet:
        info(f"[bold cyan]time budget[/]: {describe_plan(run.plan)}")
    save_run_record(paths, run_record, run, calibration)
    tasks = []
    while (training := run.next_training()) is not None:
        task = task_for(stages, plans, preprocess_keys, training)
        tasks.append(task)
        if records.is_valid(paths, task.stage, task.key):
            stages.summary.skipped.append(task.stage)
        else:
            if not quiet:
                info(
                    f"[bold cyan]training[/] {training.configuration} fold {training.fold}: "
                    f"{training.epochs} x {training.iterations_per_epoch} iterations "
                    f"(~{minutes(training.seconds)} with its validation)"
                )
            keys = {
                (t.configuration, t.fold): task_for(stages, plans, preprocess_keys, t).key
                for t in run.plan.trainings
            }
            shape = (training.epochs, training.iterations_per_epoch)
            with progress_note(LiveEstimate(paths, plans, keys, *shape).note):
                executor.run([task])
            stages.summary.ran.append(task.stage)
        run.finished(training, paths)
        replan(run, start, quiet)
        save_run_record(paths, run_record, run, calibration)
    done = {(t.configuration, t.fold) for t in tasks}
    tasks += [
        task_for(stages, plans, preprocess_keys, t)
        for t in run.done
        if (t.configuration, t.fold) not in done
    ]
    trained = [(t.configuration, t.fold) for t in tasks]
    first_config = run.ladder[0][0]
    eval_folds = sorted(f for c, f in trained if c == first_config)
    eval_configs = [c for c in trainable if all((c, f) in trained for f in eval_folds)]
    lines = run.report_lines(budget_text_source(o.time_budget, o.preset))
    return tasks, eval_folds, eval_configs, lines


def replan(run: BudgetRun, start: float, quiet: bool) -> None:
    """Decide the trainings not started yet again, from the speed measured last."""
    finished = {(t.configuration, t.fold) for t in run.done}

    def pending() -> list[tuple[str, int, int]]:
        return [
            (t.configuration, t.fold, t.iterations)
            for t in run.plan.trainings
            if (t.configuration, t.fold) not in finished
        ]

    before = pending()
    run.decide(time.time())
    if pending() != before:
        change = f"after {minutes(time.time() - start)}: {describe_plan(run.plan)}"
        run.replans.append(change)
        if not quiet:
            info(f"time budget: re-planned at {run.slowdown:.2f}x the calibrated time, {change}")


def keep_earlier_trainings(run: BudgetRun, previous: dict, stages, plans, preprocess_keys) -> None:
    """A resumed run: trainings of the previous plan that are done or started keep their
    schedules (a started one runs first)."""
    for item in (previous.get("time_budget") or {}).get("trainings", []):
        planned = PlannedTraining(
            configuration=item["configuration"],
            fold=int(item["fold"]),
            epochs=int(item["epochs"]),
            iterations_per_epoch=int(item["iterations_per_epoch"]),
            seconds=float(item.get("seconds", 0.0)),
            kept=True,
        )
        if (planned.configuration, planned.fold) not in run.validation:
            continue
        task = task_for(stages, plans, preprocess_keys, planned)
        if records.is_valid(stages.paths, task.stage, task.key):
            run.done.append(replace(planned, seconds=0.0))
        elif records.started_path(stages.paths, task.stage).is_file():
            run.started_unfinished.append(planned)


def task_for(stages, plans: Plans, preprocess_keys: dict[str, str], training: PlannedTraining):
    """The run-all task of one planned training, keyed on its own schedule."""
    key = (training.configuration, training.fold)
    (task,) = stages.training_tasks(
        plans,
        [training.configuration],
        preprocess_keys,
        planned=[key],
        schedules={key: (training.epochs, training.iterations_per_epoch)},
    )
    return task
