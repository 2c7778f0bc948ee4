"""``run-all --time-budget``: which trainings, and how long each, so that run-all ends in time.

A pure rule, no files: the runner measures the speeds (:mod:`toolkit.training.calibration`),
reads the plans and the clock, and executes what :func:`decide_budget` returns.

The rule ("one complete model first, and a deep one"):

1. The first candidate training (the preferred configuration's first fold) gets every
   iteration the budget allows, up to :data:`BREADTH_ITERATIONS`. Below
   :data:`MIN_ITERATIONS` the budget buys no useful training: a one-line error says the least
   budget that would.
2. Only once that training can reach :data:`BREADTH_ITERATIONS` does the budget buy more
   trainings: the next folds of the same configuration (a complete cross-validation, an
   ensemble of five), then the other configurations' folds, each one only when it too can
   reach :data:`BREADTH_ITERATIONS` (a half-trained extra fold would pull an ensemble down).
3. What is left after that raises the iterations of every chosen training alike, up to the
   method's 1000 x 250.

Why: on the real-anatomy task (``bench/anatomy.py``) one fold of the cpu plan needs about
3000 iterations (:data:`TARGET_ITERATIONS`) to find all four structures (0.81 held-out Dice
after 20 x 150); the 2d configuration learned nothing at small budgets (Dice 0.000 after
10 x 25); a narrow network was still at the onset of learning after 3000 iterations. Two
folds of 1500 iterations would be two models that have not learned, where one of 3000 has.
Past 3000 a fold still learns fast: with three folds of 3450 iterations (30 min, bf16, a
quiet machine) every fold's pseudo-Dice and training loss were still improving at its last
epoch, and the ensemble of the three reached 0.835 held-out Dice; the same budget given to
fold 0 alone reached 0.889-0.892 (58-69 x 150 iterations), every structure better, within
24.4 min on the quiet machine (``bench/results/budget.md``). One deep fold, then more folds only when each can be deep too:
:data:`BREADTH_ITERATIONS`. The price: a budget spent on one training cannot be re-planned
when the machine slows down while it runs (that run overran 2.5x when other work started
after its calibration); several shorter trainings can. So
depth first, then breadth.

Each training costs its iterations x its seconds per iteration (per-epoch validation and
checkpointing spread over the epoch's iterations) plus its final validation; run-all adds what
came before training (measured), what comes after (evaluation, selection, an export where the
preset includes one) and a safety margin. When the machine slows down (other load), the
trainings not started yet are decided again at their start from the speed measured last
(:func:`decide_budget` with the finished or running ones ``kept``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from toolkit.errors import ToolkitError

# one fold of the cpu plan finds all four structures of the real-anatomy task in about this many
TARGET_ITERATIONS = 3000
# one fold gets the whole budget until it could have this many: only then do more folds pay
BREADTH_ITERATIONS = 4 * TARGET_ITERATIONS
# the least training that learned something measured: the demo preset's 4 x 40 iterations per
# fold reached 0.92 cross-validation Dice on the demo task (real anatomy needs far more)
MIN_ITERATIONS = 160
# the method's budget: no training gets more (1000 epochs x 250 iterations)
METHOD_ITERATIONS = 1000 * 250
# the learning-rate schedule needs a few epochs to decay over; short trainings get shorter epochs
MIN_EPOCHS = 4
# the estimate's error and the machine's load: this share of the budget is kept back. One deep
# training cannot be re-planned while it runs: on real anatomy (bench/results/budget.md) a
# 30 min budget's single training ran 2-3% slower per epoch than calibrated on a quiet machine,
# 15% slower with light load beside it, and its final validation 22% slower; 5% overran there
SAFETY_SHARE = 0.10
# each epoch's checkpoint, log and progress plot, in seconds (on top of its iterations)
EPOCH_OVERHEAD_S = 1.0
# configurations by preference (base names); others after them, in plan order
PREFERENCE = ("3d_fullres", "2d", "3d_lowres")

_DURATION = re.compile(
    r"^(?:(\d+(?:\.\d+)?)d)?(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?$"
)


def parse_duration(text: str, option: str = "--time-budget") -> float:
    """``30m``, ``2h``, ``1h30m``, ``90s``, ``1.5h`` -> seconds; anything else a one-line error
    naming ``option``."""
    cleaned = str(text).strip().lower().replace(" ", "")
    match = _DURATION.match(cleaned)
    if not cleaned or match is None or not any(match.groups()):
        raise ToolkitError(
            f"{option} must be a duration such as 30m, 2h, 12h or 1h30m, not {text!r}"
        )
    days, hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    total = days * 86400 + hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise ToolkitError(f"{option} must be longer than zero, not {text!r}")
    return total


def check_time_budget(text: str | None, *, fixed: bool) -> None:
    """``--time-budget`` parses, and is not given with fixed iterations (``fixed``:
    ``--epochs`` or ``--iters-per-epoch``)."""
    if text is None:
        return
    parse_duration(text)
    if fixed:
        raise ToolkitError(
            "--time-budget decides the epochs and iterations: give it or "
            "--epochs/--iters-per-epoch, not both"
        )


@dataclass(frozen=True, kw_only=True)
class TrainingCost:
    """What one candidate (configuration, fold) training costs on this machine."""

    configuration: str
    fold: int
    seconds_per_iteration: float  # one training iteration
    seconds_per_validation_iteration: float = 0.0  # one per-epoch validation batch
    validation_seconds: float = 0.0  # the final validation of this fold


@dataclass(frozen=True, kw_only=True)
class PlannedTraining:
    """One training the budget bought: its schedule and what it is expected to cost."""

    configuration: str
    fold: int
    epochs: int
    iterations_per_epoch: int
    seconds: float  # training + final validation, estimated (for a kept one: what is left)
    kept: bool = False  # started before this decision: keeps its schedule

    @property
    def iterations(self) -> int:
        return self.epochs * self.iterations_per_epoch

    def as_record(self) -> dict:
        return {
            "configuration": self.configuration,
            "fold": self.fold,
            "epochs": self.epochs,
            "iterations_per_epoch": self.iterations_per_epoch,
            "seconds": round(self.seconds, 1),
        }


@dataclass(frozen=True, kw_only=True)
class BudgetRequest:
    """Everything the decision is made from (seconds throughout)."""

    budget: float  # the whole --time-budget
    spent: float  # since the command started (stages before training, calibration, trainings)
    after_training: float  # evaluation, selection, export: estimated
    candidates: Sequence[TrainingCost]  # in the order they would be added (see ladder_order)
    iterations_per_epoch: int  # the preferred epoch length
    validation_iterations: int  # per-epoch validation batches
    kept: Sequence[PlannedTraining] = ()  # started or done: their schedule stays


@dataclass(frozen=True, kw_only=True)
class BudgetPlan:
    """The decision: the trainings, their estimate, and what more time would add."""

    budget: float
    spent: float
    after_training: float
    trainings: tuple[PlannedTraining, ...]
    more_time: str = ""  # what the next step of the rule would cost and buy
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def training_seconds(self) -> float:
        return sum(t.seconds for t in self.trainings)

    @property
    def estimated_total(self) -> float:
        return self.spent + self.training_seconds + self.after_training

    def schedule_of(self, configuration: str, fold: int) -> PlannedTraining | None:
        for t in self.trainings:
            if (t.configuration, t.fold) == (configuration, fold):
                return t
        return None

    def describe(self) -> str:
        """``budget 30 min: 3d_fullres fold 0 (20 x 150 iterations); estimated 28 min in all``."""
        parts = [
            f"{t.configuration} fold {t.fold} ({t.epochs} x {t.iterations_per_epoch} iterations)"
            for t in self.trainings
        ]
        return (
            f"budget {minutes(self.budget)}: {', '.join(parts)}; estimated "
            f"{minutes(self.estimated_total)} in all ({minutes(self.spent)} before training, "
            f"{minutes(self.training_seconds)} training and final validation, "
            f"{minutes(self.after_training)} evaluation and after)"
        )

    def as_record(self) -> dict:
        return {
            "budget_seconds": self.budget,
            "spent_seconds": round(self.spent, 1),
            "after_training_seconds": round(self.after_training, 1),
            "estimated_seconds": round(self.estimated_total, 1),
            "trainings": [t.as_record() for t in self.trainings],
            "more_time": self.more_time,
            "notes": list(self.notes),
        }


def minutes(seconds: float) -> str:
    """``30 min``, ``2 h 5 min``, ``4 min 30 s`` (seconds below 10 min), ``45 s``."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{round(seconds)} s"
    if seconds < 600:
        m, s = divmod(round(seconds), 60)
        return f"{m} min {s} s" if s else f"{m} min"
    m = round(seconds / 60)
    if m < 60:
        return f"{m} min"
    h, m = divmod(m, 60)
    return f"{h} h {m} min" if m else f"{h} h"


def ladder_order(
    configurations: Sequence[str], base_names: dict[str, str], folds: Sequence[int]
) -> list[tuple[str, int]]:
    """The order trainings are bought in: configurations by :data:`PREFERENCE` (then plan
    order), each one's folds in order, before the next configuration."""

    def rank(name: str) -> tuple[int, int]:
        base = base_names.get(name, name)
        preferred = PREFERENCE.index(base) if base in PREFERENCE else len(PREFERENCE)
        return preferred, list(configurations).index(name)

    return [(c, f) for c in sorted(configurations, key=rank) for f in folds]


def buying_groups(
    ladder: Sequence[TrainingCost], candidates: Sequence[TrainingCost]
) -> list[list[TrainingCost]]:
    """``candidates`` as the units the budget buys: the first configuration of the ``ladder``
    fold by fold, every other configuration all its folds at once (evaluation compares
    configurations on the same folds, so a configuration with fewer folds than the first
    could not be compared)."""
    first = ladder[0].configuration if ladder else None
    groups: list[list[TrainingCost]] = []
    for cost in candidates:
        if (
            cost.configuration != first
            and groups
            and groups[-1][0].configuration == cost.configuration
        ):
            groups[-1].append(cost)
        else:
            groups.append([cost])
    return groups


def effective_seconds_per_iteration(
    cost: TrainingCost, iterations_per_epoch: int, validation_iterations: int
) -> float:
    """One iteration with its share of the epoch's validation batches and checkpoint."""
    per_epoch = validation_iterations * cost.seconds_per_validation_iteration + EPOCH_OVERHEAD_S
    return cost.seconds_per_iteration + per_epoch / max(1, iterations_per_epoch)


def epoch_shape(iterations: int, iterations_per_epoch: int) -> tuple[int, int]:
    """``iterations`` as (epochs, iterations per epoch): the preferred epoch length, shorter
    epochs when that would give fewer than :data:`MIN_EPOCHS`; never more than asked."""
    iterations = max(1, int(iterations))
    per_epoch = max(1, int(iterations_per_epoch))
    if iterations // per_epoch < MIN_EPOCHS:
        per_epoch = max(1, iterations // MIN_EPOCHS)
    return max(1, iterations // per_epoch), per_epoch


def training_seconds(
    cost: TrainingCost, iterations: int, iterations_per_epoch: int, validation_iterations: int
) -> float:
    per_iteration = effective_seconds_per_iteration(
        cost, iterations_per_epoch, validation_iterations
    )
    return iterations * per_iteration + cost.validation_seconds


def least_budget(request: BudgetRequest) -> float:
    """The least budget that buys the first candidate :data:`MIN_ITERATIONS` iterations."""
    first = request.candidates[0]
    epochs, per_epoch = epoch_shape(MIN_ITERATIONS, request.iterations_per_epoch)
    needed = training_seconds(first, epochs * per_epoch, per_epoch, request.validation_iterations)
    return (request.spent + needed + request.after_training) / (1 - SAFETY_SHARE)


def decide_budget(request: BudgetRequest) -> BudgetPlan:
    """The trainings the budget buys (see the module's rule); a ToolkitError when it buys
    none at all and nothing is kept."""
    if request.budget <= 0:
        raise ToolkitError(f"--time-budget must be longer than zero, not {request.budget} s")
    kept = tuple(replace(t, kept=True) for t in request.kept)
    taken = {(t.configuration, t.fold) for t in kept}
    candidates = [c for c in request.candidates if (c.configuration, c.fold) not in taken]
    available = (
        request.budget * (1 - SAFETY_SHARE)
        - request.spent
        - request.after_training
        - sum(t.seconds for t in kept)
    )
    ipe, val_iters = request.iterations_per_epoch, request.validation_iterations

    def plan(chosen: list[PlannedTraining], more_time: str, notes=()) -> BudgetPlan:
        return BudgetPlan(
            budget=request.budget,
            spent=request.spent,
            after_training=request.after_training,
            trainings=kept + tuple(chosen),
            more_time=more_time,
            notes=tuple(notes),
        )

    def planned(cost: TrainingCost, iterations: float) -> PlannedTraining:
        epochs, per_epoch = epoch_shape(int(iterations), ipe)
        return PlannedTraining(
            configuration=cost.configuration,
            fold=cost.fold,
            epochs=epochs,
            iterations_per_epoch=per_epoch,
            seconds=training_seconds(cost, epochs * per_epoch, per_epoch, val_iters),
        )

    def per_iteration(cost: TrainingCost) -> float:
        return effective_seconds_per_iteration(cost, ipe, val_iters)

    if not candidates:
        return plan([], "")
    if not kept:
        first = candidates[0]
        affordable = (available - first.validation_seconds) / per_iteration(first)
        if affordable < MIN_ITERATIONS:
            raise ToolkitError(
                f"--time-budget {minutes(request.budget)} buys no useful training here: "
                f"{first.configuration} fold {first.fold} needs at least {MIN_ITERATIONS} "
                f"iterations at {first.seconds_per_iteration:.2g} s each and a final validation "
                f"of ~{minutes(first.validation_seconds)}; give at least "
                f"{minutes(math.ceil(least_budget(request) / 60) * 60)}"
            )
        if affordable < TARGET_ITERATIONS:
            extra = (TARGET_ITERATIONS - affordable) * per_iteration(first)
            return plan(
                [planned(first, affordable)],
                f"~{_more(extra)} more would give {first.configuration} fold {first.fold} "
                f"the {TARGET_ITERATIONS} iterations that one fold needed on real anatomy",
            )
        if affordable < BREADTH_ITERATIONS:
            return plan([planned(first, affordable)], _depth_more_time(request, affordable))
    # breadth: each further training only when it too reaches the target
    # folds of one cross-validation get alike budgets: none gets more than those kept; and
    # none is added beside a kept training that did not reach the target itself
    cap = max((t.iterations for t in kept), default=METHOD_ITERATIONS)
    floor = BREADTH_ITERATIONS
    if cap < floor:
        return plan([], "")
    chosen: list[TrainingCost] = []
    need = 0.0
    for group in buying_groups(request.candidates, candidates):
        extra = sum(floor * per_iteration(c) + c.validation_seconds for c in group)
        if need + extra > available:
            break
        chosen += group
        need += extra
    iterations = 0.0
    if chosen:
        fixed = sum(c.validation_seconds for c in chosen)
        iterations = min(cap, (available - fixed) / sum(per_iteration(c) for c in chosen))
    trainings = [planned(c, iterations) for c in chosen]
    rest = buying_groups(request.candidates, candidates[len(chosen) :])
    if rest:
        group = rest[0]
        cost = sum(floor * per_iteration(c) + c.validation_seconds for c in group)
        extra = max(0.0, need + cost - available)
        what = ", ".join(f"{c.configuration} fold {c.fold}" for c in group)
        more = f"~{_more(extra)} more would add {what} ({floor} iterations each)"
    elif chosen and iterations < cap:
        doubled = sum(per_iteration(c) for c in chosen) * iterations
        more = f"~{_more(doubled)} more would double every training's iterations"
    else:
        more = "more time would add nothing: every training has the method's full budget"
    return plan(trainings, more)


def _depth_more_time(request: BudgetRequest, affordable: float) -> str:
    """What more time buys while the first training has the whole budget: the next unit of
    trainings beside it, all at :data:`BREADTH_ITERATIONS` (or, with no other candidate, twice
    the first one's iterations)."""
    ipe, val_iters = request.iterations_per_epoch, request.validation_iterations
    first, others = request.candidates[0], list(request.candidates[1:])
    step = effective_seconds_per_iteration(first, ipe, val_iters)
    if not others:
        return (
            f"~{_more(affordable * step)} more would double {first.configuration} fold "
            f"{first.fold}'s iterations"
        )
    group = buying_groups(request.candidates, others)[0]
    cost = sum(
        BREADTH_ITERATIONS * effective_seconds_per_iteration(c, ipe, val_iters)
        + c.validation_seconds
        for c in [first, *group]
    )
    extra = max(0.0, cost - first.validation_seconds - affordable * step)
    what = ", ".join(f"{c.configuration} fold {c.fold}" for c in group)
    return f"~{_more(extra)} more would add {what} ({BREADTH_ITERATIONS} iterations each)"


def _more(seconds: float) -> str:
    """Seconds of training as budget: the safety share is kept back from the budget too."""
    return minutes(seconds / (1 - SAFETY_SHARE))
