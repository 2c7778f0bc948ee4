"""``toolkit status``: where a dataset stands, read from the files the stages wrote.

The training stage's estimate (:mod:`toolkit.pipeline.estimate`) comes from the same files:
run-all's record (``pipeline/run.json``: the trainings and their budget) and each fold's
``log.jsonl``; so it is the same in another terminal while run-all runs, and after a kill.
:class:`LiveEstimate` is what run-all shows of it as it trains.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from toolkit.core.constants import FOLD_ALL
from toolkit.core.plans import Plans
from toolkit.core.selection import Selection
from toolkit.core.splits import fold_numbers
from toolkit.io.json_files import read_json
from toolkit.io.lock import LockHolder, current_holder
from toolkit.pipeline import records
from toolkit.pipeline.estimate import (
    ConfigurationSpeed,
    StageEstimate,
    TrainingWork,
    approximate_duration,
    estimate_stage,
    speed_from_epochs,
    training_seconds_left,
)
from toolkit.pipeline.records import preprocess_stage, train_stage
from toolkit.progress import show_table
from toolkit.training.history import EpochRecord, read_log
from toolkit.workspace import CHECKPOINT_FINAL, TRAINING_LOG, DatasetPaths

RUNNING_WITHIN_S = 600  # a log written this recently belongs to a training still running
REFRESH_S = 2.0  # run-all's progress note: how often the estimate is remade

FIXED_STAGES = ("verify", "fingerprint", "plan")


@dataclass
class StageRow:
    stage: str
    state: str  # done | started | pending
    seconds: float | None = None
    completed_at: float | None = None


@dataclass
class TrainingRow:
    configuration: str
    fold: int | str  # a fold number, or "all" (trained on every case: no final validation)
    state: str  # done | running | interrupted | pending
    epoch: int = 0
    epochs: int | None = None
    best_ema_dice: float | None = None
    seconds: float = 0.0
    seconds_left: float | None = None
    iterations: int = 0  # training iterations logged
    seconds_per_iteration: float | None = None  # from its logged epochs
    last_logged: float | None = None  # when its latest epoch ended
    validation_seconds: float | None = None  # its final validation, once done


@dataclass
class Status:
    dataset: str
    stages: list[StageRow] = field(default_factory=list)
    trainings: list[TrainingRow] = field(default_factory=list)
    selection: Selection | None = None
    run: dict | None = None
    estimate: StageEstimate | None = None  # the training stage's, when run-all set its budget
    writer: LockHolder | None = None  # the command writing the dataset now (its writer lock)


def stage_row(paths: DatasetPaths, stage: str) -> StageRow:
    record = records.read_record(paths, stage)
    if record is not None:
        return StageRow(stage, "done", record.seconds, record.completed_at)
    if records.started_path(paths, stage).is_file():
        return StageRow(stage, "started")
    return StageRow(stage, "pending")


def training_row(
    paths: DatasetPaths,
    configuration: str,
    fold: int | str,
    epochs: int | None,
    reader: Callable[[Path], list[EpochRecord]] = read_log,
) -> TrainingRow:
    fold_dir = paths.fold_dir(configuration, fold)
    log = reader(fold_dir / TRAINING_LOG)
    row = TrainingRow(configuration, fold, "pending", epochs=epochs)
    if log:
        row.epoch = int(log[-1].epoch) + 1
        row.seconds = float(sum(r.epoch_time_s for r in log))
        emas = [r.ema_pseudo_dice for r in log if r.ema_pseudo_dice is not None]
        row.best_ema_dice = max(emas) if emas else None
        row.iterations = sum(r.train_iterations for r in log)
        row.seconds_per_iteration = speed_from_epochs(
            [(r.epoch_time_s, r.train_iterations) for r in log]
        )
        row.last_logged = float(log[-1].timestamp)
        if epochs:
            per_epoch = row.seconds / max(1, len(log))
            row.seconds_left = max(0, epochs - row.epoch) * per_epoch
    summary = paths.validation_summary(configuration, fold)
    done = records.read_record(paths, train_stage(configuration, fold)) is not None
    validated = summary.is_file() or fold == FOLD_ALL  # fold all has nothing to validate on
    if done or (fold_dir / CHECKPOINT_FINAL).is_file() and validated:
        row.state = "done"
        row.seconds_left = 0.0
        with contextlib.suppress(OSError):
            if row.last_logged is not None:
                # from the last epoch to the summary, written last: the final validation
                gap = summary.stat().st_mtime - row.last_logged
                row.validation_seconds = gap if gap >= 0 else None
    elif log:
        quiet_for = time.time() - (fold_dir / TRAINING_LOG).stat().st_mtime
        row.state = "running" if quiet_for < running_within(row) else "interrupted"
    return row


def running_within(row: TrainingRow) -> float:
    """How long a running training may go without logging: an epoch can outlast the minimum."""
    epoch_s = row.seconds / max(1, row.epoch)
    return max(RUNNING_WITHIN_S, 2 * epoch_s)


def voxels_per_iteration(plans: Plans, configuration: str) -> int:
    """A configuration's work per training iteration: patch voxels x batch size."""
    c = plans.configurations[configuration]
    return math.prod(c.patch_size) * c.batch_size


def stage_estimate(
    rows: list[TrainingRow],
    plans: Plans,
    iterations_per_epoch: int,
    now: float | None = None,
) -> StageEstimate:
    """The training stage's estimate from the rows read off disk; fills each row's time left.
    A running training counts down between epochs (:func:`training_work`)."""
    now = time.time() if now is None else now
    speeds = {}
    for name in dict.fromkeys(r.configuration for r in rows):
        own = [r for r in rows if r.configuration == name]
        timed = [r for r in own if r.seconds_per_iteration is not None]
        latest = max(timed, key=lambda r: r.last_logged or 0.0, default=None)
        validations = [r.validation_seconds for r in own if r.validation_seconds is not None]
        speeds[name] = ConfigurationSpeed(
            seconds_per_iteration=latest.seconds_per_iteration if latest else None,
            validation_seconds=min(validations) if validations else None,
            voxels_per_iteration=voxels_per_iteration(plans, name),
        )
    works = [training_work(r, iterations_per_epoch, now) for r in rows]
    estimate = estimate_stage(works, speeds)
    for row, work in zip(rows, works, strict=True):
        speed = speeds[row.configuration]
        row.seconds_left = training_seconds_left(
            work,
            estimate.seconds_per_iteration.get(row.configuration),
            speed.validation_seconds,
        )
    return estimate


def training_work(row: TrainingRow, iterations_per_epoch: int, now: float) -> TrainingWork:
    """A row as work done and to do; a running training is taken to have gone on since its
    latest epoch at its speed (at most one epoch further), or with its final validation."""
    done = float(row.iterations)
    total = (row.epochs or 0) * iterations_per_epoch
    validating = 0.0
    if row.state == "running" and row.seconds_per_iteration and row.last_logged is not None:
        since = max(0.0, now - row.last_logged)
        if done >= total:
            validating = since
        else:
            done += min(float(iterations_per_epoch), since / row.seconds_per_iteration)
    return TrainingWork(
        configuration=row.configuration,
        fold=row.fold,
        iterations_done=done,
        iterations_total=total,
        done=row.state == "done",
        seconds_validating=validating,
    )


def run_trainings(run: dict | None, configs: list[str], folds: list[int]) -> list[tuple[str, int]]:
    """The trainings of the latest run-all (each (configuration, fold) it trains)."""
    if run and run.get("trainings"):
        return [(str(c), int(f)) for c, f in run["trainings"] if c in configs]
    return [(c, f) for c in configs for f in folds]


def dataset_status(paths: DatasetPaths) -> Status:
    status = Status(paths.name, writer=current_holder(paths))
    if paths.run_json.is_file():
        status.run = read_json(paths.run_json, what="run-all record")
    status.stages = [stage_row(paths, s) for s in FIXED_STAGES]
    configs: list[str] = []
    folds = fold_numbers(paths)
    epochs = None
    plans = None
    if paths.plans_json.is_file():
        plans = Plans.load(paths.plans_json)
        configs = list(plans.configurations)
        data_ids = []
        if status.run:
            configs = [
                c for c in status.run.get("configurations", configs) if c in plans.configurations
            ]
            folds = status.run.get("folds", folds)
            epochs = status.run.get("epochs")
        for c in configs:
            data_id = plans.configurations[c].data_identifier
            if data_id not in data_ids:
                data_ids.append(data_id)
        status.stages += [stage_row(paths, preprocess_stage(d)) for d in data_ids]
    budgeted = {  # run-all --time-budget: each training's own epochs
        (t["configuration"], t["fold"]): t["epochs"]
        for t in ((status.run or {}).get("time_budget") or {}).get("trainings", [])
    }
    status.trainings = [
        training_row(paths, c, f, budgeted.get((c, f), epochs))
        for c, f in run_trainings(status.run, configs, folds)
    ]
    iterations = (status.run or {}).get("iters_per_epoch")
    if plans is not None and status.trainings and epochs and iterations:
        status.estimate = stage_estimate(status.trainings, plans, int(iterations))
    status.trainings += fold_all_rows(paths, list(plans.configurations) if plans else [])
    status.stages += [stage_row(paths, s) for s in ("evaluate", "select")]
    if paths.selection_json.is_file():
        status.selection = Selection.load(paths.selection_json)
    return status


def fold_all_rows(
    paths: DatasetPaths,
    configs: list[str],
    reader: Callable[[Path], list[EpochRecord]] = read_log,
) -> list[TrainingRow]:
    """A row per configuration whose ``fold_all`` was trained or started (``toolkit train ...
    all``; run-all never trains it), outside the training stage's estimate."""
    rows = []
    for c in configs:
        fold_dir = paths.fold_dir(c, FOLD_ALL)
        if (fold_dir / TRAINING_LOG).is_file() or (fold_dir / CHECKPOINT_FINAL).is_file():
            rows.append(training_row(paths, c, FOLD_ALL, None, reader))
    return rows


class LiveEstimate:
    """The training stage's estimate while run-all trains, read from the same files as
    ``toolkit status``: logs re-read when they change, the text remade at most every
    :data:`REFRESH_S` (a progress bar asks for it several times a second, from its thread).
    A training counts as done once its record carries the key it is trained with now, and as
    running once it has logged an epoch in this run."""

    def __init__(
        self,
        paths: DatasetPaths,
        plans: Plans,
        keys: dict[tuple[str, int], str],
        epochs: int,
        iterations_per_epoch: int,
    ):
        self.paths, self.plans, self.keys = paths, plans, keys
        self.epochs, self.iterations_per_epoch = epochs, iterations_per_epoch
        self._logs: dict[Path, tuple[int, list[EpochRecord]]] = {}
        self.started = time.time()  # a log older than this is an earlier run's
        self._lock = threading.RLock()
        self._text, self._made = "", -math.inf

    def _read(self, path: Path) -> list[EpochRecord]:
        try:
            changed = path.stat().st_mtime_ns
        except OSError:
            return []
        cached = self._logs.get(path)
        if cached is None or cached[0] != changed:
            cached = (changed, read_log(path))
            self._logs[path] = cached
        return cached[1]

    def estimate(self) -> StageEstimate:
        with self._lock:  # the bar's thread and this one share the cache of logs
            rows = []
            for (configuration, fold), key in self.keys.items():
                row = training_row(self.paths, configuration, fold, self.epochs, self._read)
                valid = records.is_valid(self.paths, train_stage(configuration, fold), key)
                if row.state == "done" and not valid:
                    row.state = "pending"  # trained from other inputs: trained again
                elif valid:
                    row.state = "done"
                elif row.state == "running" and (row.last_logged or 0.0) < self.started:
                    row.state = "interrupted"  # by an earlier run: not counted down
                rows.append(row)
            return stage_estimate(rows, self.plans, self.iterations_per_epoch)

    def note(self) -> str:
        """The short text beside each progress bar, remade at most every :data:`REFRESH_S`."""
        with self._lock:
            if time.monotonic() - self._made >= REFRESH_S:
                try:
                    self._text = self.estimate().note()
                except OSError:  # a file replaced while read: the next refresh reads it
                    pass
                self._made = time.monotonic()
            return self._text

    def refresh(self) -> StageEstimate:
        """The estimate now (a training just ended); the next bar's note starts from it."""
        with self._lock:
            estimate = self.estimate()
            self._text, self._made = estimate.note(), time.monotonic()
        return estimate


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def budget_summary(budget: dict) -> str:
    """run-all's time budget as recorded: the trainings it bought, the estimate, what more adds."""
    bought = ", ".join(
        f"{t['configuration']} fold {t['fold']} ({t['epochs']} x {t['iterations_per_epoch']})"
        for t in budget.get("trainings", [])
    )
    text = (
        f"{approximate_duration(budget['budget_seconds'])[1:]} bought {bought or 'nothing yet'}; "
        f"estimated {approximate_duration(budget.get('estimated_seconds', 0.0))[1:]} in all"
    )
    if budget.get("replans"):
        text += f"; re-planned {len(budget['replans'])} time(s)"
    return f"{text}; {budget['more_time']}" if budget.get("more_time") else text


STATE_STYLE = {
    "done": "green",
    "running": "cyan",
    "started": "yellow",
    "interrupted": "yellow",
    "pending": "dim",
}


def render(status: Status) -> None:
    stages = Table(title=f"{status.dataset}: stages", title_justify="left")
    stages.add_column("stage")
    stages.add_column("state")
    stages.add_column("time", justify="right")
    for row in status.stages:
        style = STATE_STYLE.get(row.state, "")
        stages.add_row(row.stage, f"[{style}]{row.state}[/]", _duration(row.seconds))
    show_table(stages)
    if status.trainings:
        trainings = Table(title="trainings", title_justify="left")
        for col, justify in (
            ("configuration", "left"),
            ("fold", "right"),
            ("state", "left"),
            ("epoch", "right"),
            ("best EMA pseudo-Dice", "right"),
            ("time", "right"),
            ("time left", "right"),
        ):
            trainings.add_column(col, justify=justify)  # type: ignore[arg-type]
        for t in status.trainings:
            style = STATE_STYLE.get(t.state, "")
            epoch = f"{t.epoch}/{t.epochs}" if t.epochs else str(t.epoch)
            dice = f"{t.best_ema_dice:.4f}" if t.best_ema_dice is not None else "-"
            trainings.add_row(
                t.configuration,
                str(t.fold),
                f"[{style}]{t.state}[/]",
                epoch,
                dice,
                _duration(t.seconds),
                _duration(t.seconds_left),
            )
        show_table(trainings)
    if status.estimate is not None:
        show_table(f"[bold]training:[/] {status.estimate.describe()}")
        speeds = [
            f"{c} {s:.3g} s/iteration" + (" (guessed)" if c in status.estimate.guessed_from else "")
            for c, s in status.estimate.seconds_per_iteration.items()
        ]
        if speeds:
            show_table(f"[dim]speeds: {', '.join(speeds)}[/]")
    budget = (status.run or {}).get("time_budget")
    if budget:
        show_table(f"[bold]time budget:[/] {budget_summary(budget)}")
    if status.selection:
        s = status.selection
        pp = s.postprocessing
        steps = []
        if pp.largest_component_foreground:
            steps.append("largest foreground component")
        if pp.largest_component_classes:
            steps.append(f"largest component of classes {pp.largest_component_classes}")
        lo, hi = s.interval.low, s.interval.high
        ci = f" (95% CI {lo:.4f}-{hi:.4f})" if not (math.isnan(lo) or math.isnan(hi)) else ""
        show_table(
            f"[bold]chosen:[/] {s.candidate}, folds {s.folds}: mean foreground Dice "
            f"{s.mean_dice:.4f}{ci}, first in {100 * s.rank_first_frequency:.0f}% "
            f"of bootstrap sets; postprocessing: {', '.join(steps) or 'none'} -> "
            f"{s.mean_dice_postprocessed:.4f}"
        )
    else:
        show_table(
            "[dim]no selection yet: `toolkit run-all` (or `toolkit evaluate` then `toolkit select`) makes one[/]"
        )
    if status.writer is not None:
        show_table(f"[bold]being written now by[/] {escape(status.writer.describe())}")
