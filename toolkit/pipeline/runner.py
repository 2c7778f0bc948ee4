"""``run-all``: every stage of the method in order, skipping what is complete and valid.

verify -> fingerprint -> plan -> preprocess (per data identifier) -> train (per configuration
and fold; the cascade after its low-res fold) -> evaluate (+ bootstrap) -> select
(+ postprocessing).

Each stage's key is a digest of what it is computed from: the raw files' names, sizes and
times; the fingerprint file; the planning options; the configuration's part of the plan;
the training budget and seed; the keys of the stages before it. A re-run recomputes the
keys and redoes exactly the stages whose key changed (and, through the keys, everything
downstream of them). A training that was interrupted resumes from its latest checkpoint
when it was started with the same key; one started with another key (a changed plan) is
thrown away and trained again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

from toolkit.core.device import PRECISION_CHOICES
from toolkit.core.plans import Plans, dataset_plans
from toolkit.core.selection import Selection
from toolkit.core.splits import fold_numbers
from toolkit.errors import ToolkitError
from toolkit.evaluation.stage import EvaluationOptions, evaluate_dataset, select_dataset
from toolkit.fingerprint.stage import extract_fingerprint
from toolkit.io.atomic import write_json
from toolkit.parallel import case_backend
from toolkit.pipeline import records
from toolkit.pipeline.budget import check_time_budget
from toolkit.pipeline.budget_run import budget_seconds, previous_record, train_within_budget
from toolkit.pipeline.estimate import count_line, planned_trainings
from toolkit.pipeline.executors import LocalExecutor, RayExecutor
from toolkit.pipeline.presets import Preset, get_preset
from toolkit.pipeline.records import preprocess_stage, sweep_run_temporaries, train_stage
from toolkit.pipeline.status import LiveEstimate
from toolkit.pipeline.training_task import TrainTask
from toolkit.planning.planner import preset as planner_preset
from toolkit.planning.planners import parse_planners
from toolkit.planning.stage import plan_dataset, plan_like, source_plans_file
from toolkit.preprocessing.case import source_record
from toolkit.preprocessing.stage import preprocess_dataset
from toolkit.progress import info, progress_note
from toolkit.training.stage import (
    plans_configuration_dict,
    pretrained_file,
    require_loggers,
)
from toolkit.verify.stage import require_valid
from toolkit.workspace import DatasetPaths


@dataclass(frozen=True)
class RunOptions:
    preset: str = "paper"
    configs: tuple[str, ...] | None = None  # None: the preset's, else every planned one
    folds: tuple[int, ...] | None = None  # None: the preset's (every fold of splits.json)
    epochs: int | None = None
    iters_per_epoch: int | None = None
    val_iters: int | None = None
    device: str = "auto"
    precision: str = "auto"  # of the trainings (auto: core/device.py's pick)
    like: str | None = None  # plan like this dataset / plans file (toolkit plan --like)
    executor: str = "local"  # local | ray
    ray_address: str | None = None
    workers: int | None = None
    seed: int = 0
    quiet: bool = False
    loggers: tuple[str, ...] = ()  # of the trainings: tensorboard, mlflow (not in their keys)
    pretrained: str | None = None  # every training's network starts from these weights
    planners: tuple[str, ...] | None = None  # planning/planners.py; None: the default
    time_budget: str | None = None  # --time-budget (30m, 2h); None: the preset's, if any

    def check(self) -> RunOptions:
        get_preset(self.preset)
        check_time_budget(
            self.time_budget, fixed=(self.epochs, self.iters_per_epoch) != (None,) * 2
        )
        if self.planners is not None and self.like:
            raise ToolkitError(
                "--planner plans anew; --like takes another dataset's plans: give one of them"
            )
        parse_planners(self.planners)
        require_loggers(self.loggers)
        if self.executor not in ("local", "ray"):
            raise ToolkitError(f"--executor must be local or ray, not {self.executor!r}")
        if self.precision not in PRECISION_CHOICES:
            raise ToolkitError(
                f"--precision must be one of {', '.join(PRECISION_CHOICES)}, not {self.precision!r}"
            )
        if self.ray_address and self.executor != "ray":
            raise ToolkitError("--ray-address needs --executor ray")
        for name in ("epochs", "iters_per_epoch", "val_iters", "workers"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ToolkitError(f"--{name.replace('_', '-')} must be at least 1, not {value}")
        if self.folds is not None and (not self.folds or any(f < 0 for f in self.folds)):
            raise ToolkitError(f"--folds must be fold numbers, not {list(self.folds)}")
        return self


@dataclass
class RunSummary:
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0
    selection: str | None = None
    ray_tasks: dict[str, int] = field(default_factory=dict)  # "training" / per-case work -> tasks


def selected_configurations(plans: Plans, options: RunOptions, preset: Preset) -> list[str]:
    """The configurations to train, in plan order; the cascade brings its low-res stage.

    A name without its planner ("3d_fullres") means that configuration of every planner in
    the plans ("3d_fullres", "3d_fullres-resenc-l")."""
    wanted = options.configs or preset.configs
    if wanted is None:
        return list(plans.configurations)
    by_base: dict[str, list[str]] = {}
    for c in plans.configurations.values():
        by_base.setdefault(c.base_name, []).append(c.name)
    if options.configs:
        for name in options.configs:
            if name not in by_base:
                plans.configuration(name)  # an unknown name is an error the user sees
    chosen = [
        c
        for name in wanted
        for c in dict.fromkeys([*by_base.get(name, []), name])
        if c in plans.configurations
    ]
    for name in list(chosen):
        previous = plans.configurations[name].previous_stage
        if previous and previous not in chosen:
            chosen.append(previous)
    if not chosen:
        raise ToolkitError(
            f"none of the configurations {list(wanted)} is in the plans (planned: {', '.join(plans.configurations)})"
        )
    return [c for c in plans.configurations if c in chosen]


class Stages:
    """Runs one dataset's stages; knows their keys and records."""

    def __init__(self, paths: DatasetPaths, options: RunOptions):
        self.paths = paths
        self.options = options.check()
        self.preset = get_preset(options.preset)
        self.summary = RunSummary()

    # one stage ----------------------------------------------------------------------------
    def stage(
        self,
        name: str,
        key: str,
        work: Callable[[], object],
        details: Callable[[], dict] | None = None,
    ) -> bool:
        """Run ``work`` unless the stage is complete with ``key``; True when it ran."""
        if records.is_valid(self.paths, name, key):
            self.summary.skipped.append(name)
            return False
        if not self.options.quiet:
            info(f"[bold cyan]{name}[/]")
        started = time.time()
        records.mark_started(self.paths, name, key)
        work()
        records.write_record(self.paths, name, key, started, details() if details else None)
        self.summary.ran.append(name)
        return True

    # keys ---------------------------------------------------------------------------------
    def raw_key(self) -> str:
        return records.digest(
            records.file_digest(self.paths.dataset_json),
            records.tree_stat_digest(self.paths.images_tr),
            records.tree_stat_digest(self.paths.labels_tr),
        )

    def planner_options(self):
        return planner_preset(self.preset.plan_preset, planners=self.options.planners)

    def schedule(self) -> tuple[int, int, int]:
        p = self.preset
        o = self.options
        return (
            o.epochs or p.epochs,
            o.iters_per_epoch or p.iters_per_epoch,
            o.val_iters or p.val_iters,
        )

    def all_folds(self) -> tuple[int, ...]:
        """Every fold of the dataset's splits.json (the method's five before it exists)."""
        return tuple(fold_numbers(self.paths))

    def folds(self) -> tuple[int, ...]:
        """The folds to train: the user's, else the preset's, else every fold."""
        folds = tuple(sorted(set(self.options.folds or self.preset.folds or self.all_folds())))
        unknown = [f for f in folds if f not in self.all_folds()]
        if unknown:
            raise ToolkitError(
                f"--folds {unknown} not in the split file (folds 0..{len(self.all_folds()) - 1})",
                self.paths.splits_json,
            )
        return folds

    # the run ------------------------------------------------------------------------------
    def run(self) -> RunSummary:
        """Every stage; with the Ray executor, per-case work and trainings are Ray tasks."""
        executor = make_executor(self.options)
        if self.options.executor != "ray":
            return self._run(executor)
        with executor, case_backend(executor):
            summary = self._run(executor)
        summary.ray_tasks = {"training": executor.training_tasks, **executor.case_tasks}
        if not self.options.quiet:
            info(
                f"ray: {executor.tasks['training']} training task(s), "
                f"{executor.tasks['case']} per-case task(s)"
            )
        return summary

    def plan(self) -> None:
        """The plan stage: the planner's, or another dataset's plans moved onto this one
        (``--like``), keyed on the fingerprint and the planner options or the source's file."""
        paths, o = self.paths, self.options
        if o.like:  # another dataset's plans, this dataset's data (toolkit plan --like)
            workspace = paths.root.parent
            like_file = source_plans_file(o.like, workspace)
            if not like_file.is_file():
                raise ToolkitError(
                    f"--like {o.like}: no plans.json there (plan it first)", like_file
                )
            plan_key = records.digest(
                "plan-like",
                records.file_digest(paths.fingerprint_json),
                records.file_digest(like_file),
            )
            self.stage("plan", plan_key, lambda: plan_like(paths, o.like, workspace))
        else:
            planner_options = self.planner_options()
            plan_key = records.digest(
                "plan", records.file_digest(paths.fingerprint_json), asdict(planner_options)
            )
            self.stage("plan", plan_key, lambda: plan_dataset(paths, planner_options))

    def _run(self, executor) -> RunSummary:
        start = time.time()
        paths, o = self.paths, self.options
        paths.require_raw()
        raw_key = self.raw_key()
        self.stage("verify", raw_key, lambda: require_valid(paths, o.workers, quiet=o.quiet))
        fingerprint_key = records.digest("fingerprint", raw_key)
        self.stage(
            "fingerprint",
            fingerprint_key,
            lambda: extract_fingerprint(paths, o.workers, quiet=o.quiet),
        )
        self.plan()
        plans = dataset_plans(paths)
        configs = selected_configurations(plans, o, self.preset)
        epochs, iters, val_iters = self.schedule()
        run_record = {
            "preset": o.preset,
            "configurations": configs,
            "folds": list(self.folds()),
            "trainings": [list(t) for t in self.planned(plans, configs)],
            "epochs": epochs,
            "iters_per_epoch": iters,
            "val_iters": val_iters,
            "executor": o.executor,
            "started_at": start,
        }
        previous_run = previous_record(paths)  # a time budget's calibration and plan, reused
        write_json(paths.run_json, run_record)

        preprocess_keys: dict[str, str] = {}
        for name in configs:
            configuration = plans.configuration(name)
            data_id = configuration.data_identifier
            if data_id in preprocess_keys:
                continue
            key = records.digest("preprocess", source_record(plans, configuration)["hash"], raw_key)
            preprocess_keys[data_id] = key
            self.stage(
                preprocess_stage(data_id),
                key,
                lambda name=name: preprocess_dataset(paths, [name], o.workers, quiet=o.quiet),
            )

        budget = budget_seconds(o, self.preset)
        folds, budget_lines = self.folds(), ()
        if budget is not None:  # the trainings the time buys (pipeline/budget.py decides)
            tasks, folds, configs, budget_lines = train_within_budget(
                self, executor, plans, configs, preprocess_keys, run_record, previous_run
            )
        else:
            tasks = self.training_tasks(plans, configs, preprocess_keys)
            pending = [t for t in tasks if not records.is_valid(paths, t.stage, t.key)]
            self.summary.skipped += [t.stage for t in tasks if t not in pending]
            if pending:
                live = self.train(executor, plans, tasks, pending)
                # the speeds measured, for the record (run-all's options and what they cost)
                write_json(paths.run_json, {**run_record, **live.estimate().as_record()})

        evaluate_key = records.digest(
            "evaluate", sorted(t.key for t in tasks), list(folds), configs
        )
        self.stage(
            "evaluate",
            evaluate_key,
            lambda: evaluate_dataset(
                paths,
                EvaluationOptions(
                    folds=list(folds), configurations=list(configs), time_budget=tuple(budget_lines)
                ),
                o.workers,
                quiet=o.quiet,
            ),
        )
        select_key = records.digest("select", evaluate_key)
        self.stage("select", select_key, lambda: select_dataset(paths, o.workers, quiet=o.quiet))
        self.summary.selection = Selection.load(paths.selection_json).candidate
        self.summary.seconds = time.time() - start
        return self.summary

    def planned(self, plans: Plans, configs: list[str]) -> list[tuple[str, int]]:
        """The (configuration, fold) trainings, first stages (every fold) first."""
        previous = {c: plans.configurations[c].previous_stage for c in configs}
        return planned_trainings(configs, previous, self.folds(), self.all_folds())

    def train(
        self, executor, plans: Plans, tasks: list[TrainTask], pending: list[TrainTask]
    ) -> LiveEstimate:
        """The pending trainings, after a line saying what the stage costs; its time left on
        each progress bar and after each training. Returns the estimate, read from disk."""
        epochs, iters, _ = self.schedule()
        keys = {(t.configuration, t.fold): t.key for t in tasks}
        live = LiveEstimate(self.paths, plans, keys, epochs, iters)
        quiet = self.options.quiet
        if not quiet:
            count = count_line(list(keys), epochs, iters, len(tasks) - len(pending))
            info(f"[bold cyan]training[/]: {count}; {live.estimate().time_left()}")

        def done(task: TrainTask) -> None:
            if not quiet:
                estimate = live.refresh().describe()
                info(f"training: {task.configuration} fold {task.fold} done; {estimate}")

        with progress_note(live.note):
            executor.run(pending, on_done=done)
        self.summary.ran += [t.stage for t in pending]
        return live

    def training_tasks(
        self,
        plans: Plans,
        configs: list[str],
        preprocess_keys: dict[str, str],
        planned: list[tuple[str, int]] | None = None,
        schedules: dict[tuple[str, int], tuple[int, int]] | None = None,
    ) -> list[TrainTask]:
        """The tasks of the ``planned`` trainings (default: every configuration and fold);
        ``schedules``: (epochs, iterations per epoch) of each, where a time budget decided them."""
        _, _, val_iters = self.schedule()
        o = self.options
        keys: dict[tuple[str, int], str] = {}
        tasks = []
        planned = self.planned(plans, configs) if planned is None else planned
        pretrained_digest = None
        if o.pretrained is not None:
            # the weights' content: a changed source trains again
            pretrained_digest = records.file_digest(pretrained_file(o.pretrained))
        if not o.quiet and schedules is None:
            for name in dict.fromkeys(c for c, _ in planned):
                folds = tuple(f for c, f in planned if c == name)
                if folds != self.folds():
                    info(f"{name}: training every fold, the cascade needs every case's prediction")
        for name, fold in planned:
            epochs, iters = (schedules or {}).get((name, fold), self.schedule()[:2])
            configuration = plans.configuration(name)
            after: tuple[str, ...] = ()
            upstream: list[str] = []
            if configuration.previous_stage:
                after = tuple(
                    train_stage(configuration.previous_stage, f) for f in self.all_folds()
                )
                upstream = [keys[(configuration.previous_stage, f)] for f in self.all_folds()]
            key = training_key(
                plans_configuration_dict(configuration),
                preprocess_keys[configuration.data_identifier],
                [epochs, iters, val_iters, o.seed, self.preset.validation_mirroring],
                upstream,
                pretrained_digest,
            )
            keys[(name, fold)] = key
            tasks.append(
                TrainTask(
                    str(self.paths.root),
                    name,
                    fold,
                    key,
                    epochs,
                    iters,
                    val_iters,
                    o.seed,
                    o.device,
                    o.quiet,
                    self.preset.validation_mirroring,
                    after,
                    o.precision,
                    loggers=o.loggers,
                    pretrained=o.pretrained,
                )
            )
        return tasks


def training_key(
    configuration: dict,
    preprocess_key: str,
    budget: list,
    upstream: list[str],
    pretrained_digest: str | None = None,
) -> str:
    """A training's key: its part of the plan, its data, budget and seed, the first stage's
    keys for a cascade, and the ``--pretrained`` weights' digest when there are any (without
    them the key is what it was before the option existed, so no training is redone)."""
    parts: list = [configuration, preprocess_key, budget, upstream]
    if pretrained_digest is not None:
        parts.append({"pretrained": pretrained_digest})
    return records.digest("train", *parts)


def make_executor(options: RunOptions):
    if options.executor == "ray":
        return RayExecutor(options.ray_address, options.device, max_case_tasks=options.workers)
    return LocalExecutor()


def run_all(paths: DatasetPaths, options: RunOptions) -> RunSummary:
    sweep_run_temporaries(paths)
    return Stages(paths, options).run()


def with_overrides(options: RunOptions, **changes) -> RunOptions:
    return replace(options, **{k: v for k, v in changes.items() if v is not None})
