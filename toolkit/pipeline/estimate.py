"""What the training stage of ``run-all`` costs: how many trainings, and the time left.

Pure rules, no files: the caller (:mod:`toolkit.pipeline.status`) reads the training logs.

The time left is the iterations each training has left times the measured seconds per
iteration of its configuration (the epochs' times in ``log.jsonl`` over their training
iterations, so the per-epoch validation steps are included), plus each fold's final
validation where one of that configuration has been timed. Configurations differ a lot (2d
against 3d), so each has its own speed. A configuration not started yet has none: its speed
is *guessed* by scaling a timed configuration's by patch voxels x batch size, and the estimate
says so; with nothing timed at all there is no estimate. The sum is of trainings one after
the other, as the local executor runs them (Ray, running several at once, finishes sooner).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

# epochs averaged for a training's speed: the latest ones (the speed of now, not of the start)
RECENT_EPOCHS = 5


@dataclass(frozen=True, kw_only=True)
class TrainingWork:
    """One (configuration, fold) training: how far it is."""

    configuration: str
    fold: int
    iterations_done: float  # may be extrapolated past the last logged epoch
    iterations_total: int
    done: bool = False  # trained and validated (its run-all record, or its validation summary)
    seconds_validating: float = 0.0  # trained, its final validation running this long


@dataclass(frozen=True, kw_only=True)
class ConfigurationSpeed:
    """A configuration's measured speeds and its work per iteration (patch voxels x batch)."""

    seconds_per_iteration: float | None = None
    validation_seconds: float | None = None  # one fold's final validation
    voxels_per_iteration: int = 0


@dataclass(frozen=True, kw_only=True)
class StageEstimate:
    """The training stage: trainings done, time left, and how that time was worked out."""

    done: int
    total: int
    seconds_left: float | None  # None: a configuration with work left has no speed
    seconds_per_iteration: dict[str, float] = field(default_factory=dict)  # measured and guessed
    guessed_from: dict[str, str] = field(default_factory=dict)  # guessed -> timed configuration
    validation_seconds: dict[str, float] = field(default_factory=dict)  # one fold's, timed
    configurations_left: tuple[str, ...] = ()  # those with trainings not done
    validation_left_out: tuple[str, ...] = ()  # configurations whose validation is not timed

    def describe(self) -> str:
        """``3/10 trainings done, ~1 h 20 min left (...)``, for messages and ``toolkit status``."""
        head = f"{self.done}/{self.total} trainings done"
        return head if self.done == self.total else f"{head}, {self.time_left()}"

    def time_left(self) -> str:
        """``~1 h 20 min left (3d_fullres guessed from 2d)``, or when it will be known."""
        if self.seconds_left is None:
            return "time left estimated after the first epoch"
        notes = [f"{c} guessed from {r}" for c, r in self._guesses().items()]
        if self.validation_left_out:
            notes.append("final validation not timed yet")
        tail = f" ({'; '.join(notes)})" if notes else ""
        return f"{approximate_duration(self.seconds_left)} left{tail}"

    def note(self) -> str:
        """The short form beside a progress bar: ``training: ~1 h 20 min left, 3/10 done``."""
        count = f"{self.done}/{self.total} done"
        if self.done == self.total:
            return f"training: {count}"
        if self.seconds_left is None:
            return f"training: {count}, time left after the first epoch"
        notes = [f"{c} guessed" for c in self._guesses()]
        if self.validation_left_out:
            notes.append("validation not timed")
        tail = f" ({', '.join(notes)})" if notes else ""
        return f"training: {approximate_duration(self.seconds_left)} left, {count}{tail}"

    def as_record(self) -> dict:
        """The speeds measured (not the guessed ones), for run-all's record."""
        return {
            "seconds_per_iteration": {
                c: s for c, s in self.seconds_per_iteration.items() if c not in self.guessed_from
            },
            "validation_seconds": dict(self.validation_seconds),
        }

    def _guesses(self) -> dict[str, str]:
        return {c: r for c, r in self.guessed_from.items() if c in self.configurations_left}


def speed_from_epochs(epochs: Sequence[tuple[float, int]]) -> float | None:
    """A training's speed from its logged epochs, ``(epoch seconds, training iterations)``.

    The latest :data:`RECENT_EPOCHS` epochs; the first epoch is left out once there are
    others (it pays for warming up: kernels chosen, batches first prefetched).
    """
    timed = [(s, n) for s, n in epochs if n > 0 and s >= 0]
    if len(timed) > 1:
        timed = timed[1:]
    timed = timed[-RECENT_EPOCHS:]
    iterations = sum(n for _, n in timed)
    return sum(s for s, _ in timed) / iterations if iterations else None


def guess_speeds(
    speeds: Mapping[str, ConfigurationSpeed],
) -> tuple[dict[str, float], dict[str, str]]:
    """Seconds per iteration of every configuration, untimed ones scaled from a timed one.

    An untimed configuration takes the speed of the timed one with the closest work per
    iteration (patch voxels x batch), scaled by the ratio of the two. Returns the speeds and,
    for each guessed configuration, the one it was scaled from.
    """
    result = {
        c: s.seconds_per_iteration for c, s in speeds.items() if s.seconds_per_iteration is not None
    }
    usable = {c: speeds[c].voxels_per_iteration for c in result}
    usable = {c: v for c, v in usable.items() if v > 0}
    guessed_from: dict[str, str] = {}
    for name, speed in speeds.items():
        voxels = speed.voxels_per_iteration
        if name in result or not usable or voxels <= 0:
            continue
        reference = min(usable, key=lambda c: abs(math.log(usable[c] / voxels)))
        result[name] = result[reference] * voxels / usable[reference]
        guessed_from[name] = reference
    return result, guessed_from


def training_seconds_left(
    work: TrainingWork, seconds_per_iteration: float | None, validation_seconds: float | None
) -> float | None:
    """One training's time left: its iterations left, plus its final validation when timed."""
    if work.done:
        return 0.0
    if seconds_per_iteration is None:
        return None
    left = max(0.0, work.iterations_total - work.iterations_done) * seconds_per_iteration
    return left + max(0.0, (validation_seconds or 0.0) - work.seconds_validating)


def remaining_seconds(
    trainings: Sequence[TrainingWork],
    seconds_per_iteration: Mapping[str, float],
    validation_seconds: Mapping[str, float] | None = None,
) -> float | None:
    """The training stage's time left, one training after the other; None when a training
    with work left belongs to a configuration without a speed."""
    total = 0.0
    for work in trainings:
        left = training_seconds_left(
            work,
            seconds_per_iteration.get(work.configuration),
            (validation_seconds or {}).get(work.configuration),
        )
        if left is None:
            return None
        total += left
    return total


def estimate_stage(
    trainings: Sequence[TrainingWork], speeds: Mapping[str, ConfigurationSpeed]
) -> StageEstimate:
    """Done/total and the time left, with which speeds were guessed and what is left out."""
    per_iteration, guessed_from = guess_speeds(speeds)
    validation = {
        c: s.validation_seconds for c, s in speeds.items() if s.validation_seconds is not None
    }
    waiting = [t for t in trainings if not t.done]
    needed = tuple(dict.fromkeys(t.configuration for t in waiting))
    return StageEstimate(
        done=len(trainings) - len(waiting),
        total=len(trainings),
        seconds_left=remaining_seconds(waiting, per_iteration, validation),
        seconds_per_iteration=per_iteration,
        guessed_from=guessed_from,
        validation_seconds=validation,
        configurations_left=needed,
        validation_left_out=tuple(c for c in needed if c not in validation),
    )


def planned_trainings(
    configurations: Sequence[str],
    previous_stage: Mapping[str, str | None],
    folds: Sequence[int],
    all_folds: Sequence[int],
) -> list[tuple[str, int]]:
    """The (configuration, fold) trainings of a run, first stages first.

    A cascade's first stage trains every fold: its next stage reads the out-of-fold
    prediction of every training case.
    """
    first_stages = {previous_stage.get(c) for c in configurations} - {None}
    ordered = sorted(configurations, key=lambda c: previous_stage.get(c) is not None)
    return [(c, f) for c in ordered for f in (all_folds if c in first_stages else folds)]


def count_line(
    trainings: Sequence[tuple[str, int]], epochs: int, iterations_per_epoch: int, done: int = 0
) -> str:
    """``10 trainings (2 configurations x 5 folds: 2d, 3d_fullres), 1000 epochs x 250
    iterations each`` (with how many are done already, on a resume)."""
    folds: dict[str, int] = {}
    for configuration, _ in trainings:
        folds[configuration] = folds.get(configuration, 0) + 1
    counts = set(folds.values())
    if len(counts) == 1:
        n = counts.pop()
        shape = f"{_plural(len(folds), 'configuration')} x {_plural(n, 'fold')}: {', '.join(folds)}"
    else:
        shape = ", ".join(f"{c} x {_plural(n, 'fold')}" for c, n in folds.items())
    line = (
        f"{_plural(len(trainings), 'training')} ({shape}), "
        f"{_plural(epochs, 'epoch')} x {_plural(iterations_per_epoch, 'iteration')} each"
    )
    return f"{line}, {done} already done" if done else line


def approximate_duration(seconds: float) -> str:
    """``~40 s``, ``~12 min``, ``~1 h 20 min``, ``~2 d 3 h``."""
    seconds = max(0.0, seconds)
    if round(seconds) < 60:
        return f"~{max(1, round(seconds))} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"~{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"~{hours} h {minutes} min" if minutes else f"~{hours} h"
    days, hours = divmod(hours, 24)
    return f"~{days} d {hours} h" if hours else f"~{days} d"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
