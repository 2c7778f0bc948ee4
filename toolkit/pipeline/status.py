"""``toolkit status``: where a dataset stands, read from the files the stages wrote."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from rich.table import Table

from toolkit.core.plans import Plans
from toolkit.core.selection import Selection
from toolkit.core.splits import fold_numbers
from toolkit.io.json_files import read_json
from toolkit.pipeline import records
from toolkit.pipeline.records import preprocess_stage, train_stage
from toolkit.progress import show_table
from toolkit.training.history import read_log
from toolkit.workspace import CHECKPOINT_FINAL, TRAINING_LOG, DatasetPaths

RUNNING_WITHIN_S = 600  # a log written this recently belongs to a training still running

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
    fold: int
    state: str  # done | running | interrupted | pending
    epoch: int = 0
    epochs: int | None = None
    best_ema_dice: float | None = None
    seconds: float = 0.0
    seconds_left: float | None = None


@dataclass
class Status:
    dataset: str
    stages: list[StageRow] = field(default_factory=list)
    trainings: list[TrainingRow] = field(default_factory=list)
    selection: Selection | None = None
    run: dict | None = None


def stage_row(paths: DatasetPaths, stage: str) -> StageRow:
    record = records.read_record(paths, stage)
    if record is not None:
        return StageRow(stage, "done", record.seconds, record.completed_at)
    if records.started_path(paths, stage).is_file():
        return StageRow(stage, "started")
    return StageRow(stage, "pending")


def training_row(
    paths: DatasetPaths, configuration: str, fold: int, epochs: int | None
) -> TrainingRow:

    fold_dir = paths.fold_dir(configuration, fold)
    log = read_log(fold_dir / TRAINING_LOG)
    row = TrainingRow(configuration, fold, "pending", epochs=epochs)
    if log:
        row.epoch = int(log[-1].epoch) + 1
        row.seconds = float(sum(r.epoch_time_s for r in log))
        emas = [r.ema_pseudo_dice for r in log if r.ema_pseudo_dice is not None]
        row.best_ema_dice = max(emas) if emas else None
        if epochs:
            per_epoch = row.seconds / max(1, len(log))
            row.seconds_left = max(0, epochs - row.epoch) * per_epoch
    done = records.read_record(paths, train_stage(configuration, fold)) is not None
    if (
        done
        or (fold_dir / CHECKPOINT_FINAL).is_file()
        and paths.validation_summary(configuration, fold).is_file()
    ):
        row.state = "done"
        row.seconds_left = 0.0
    elif log:
        recent = time.time() - (fold_dir / TRAINING_LOG).stat().st_mtime < RUNNING_WITHIN_S
        row.state = "running" if recent else "interrupted"
    return row


def dataset_status(paths: DatasetPaths) -> Status:
    status = Status(paths.name)
    if paths.run_json.is_file():
        status.run = read_json(paths.run_json, what="run-all record")
    status.stages = [stage_row(paths, s) for s in FIXED_STAGES]
    configs: list[str] = []
    folds = fold_numbers(paths)
    epochs = None
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
    status.trainings = [training_row(paths, c, f, epochs) for c in configs for f in folds]
    status.stages += [stage_row(paths, s) for s in ("evaluate", "select")]
    if paths.selection_json.is_file():
        status.selection = Selection.load(paths.selection_json)
    return status


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


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
                _duration(t.seconds_left) if t.state != "pending" else "-",
            )
        show_table(trainings)
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
