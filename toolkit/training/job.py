"""What one ``toolkit train DATASET CONFIG FOLD`` run is, resolved and checked up front.

Everything a user can get wrong is found here, before any process is started or any file
written: missing plans or preprocessing (the error says which command to run), an unknown
configuration or fold, a cascade whose first stage has not been trained, a fold folder
with checkpoints but no ``--resume``, a resume with a different schedule.

Each fold of each configuration draws its own random numbers (initial weights, batches,
augmentation): the run's seed is a stable hash of ``--seed``, the configuration and the fold
(:func:`run_seed`), so the members of a cross-validation ensemble differ and the same
``--seed`` still repeats a run exactly. A checkpoint written before this rule (its run settings
have no ``run_seed``) resumes with the seed it was started with, ``--seed`` itself.

``--pretrained`` is checked here too (the source found and loadable) and recorded in the run
settings; it counts only at a training's start, a resume continuing from its own checkpoint.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from toolkit.core.checkpoint import KEY_RUN, load_checkpoint
from toolkit.core.constants import FOLD_ALL
from toolkit.core.device import resolve_device, resolve_precision
from toolkit.core.plans import Configuration, Plans, dataset_plans
from toolkit.core.splits import Fold, Split, fold_split, load_or_create_splits
from toolkit.errors import MissingStageError, ToolkitError
from toolkit.io.atomic import write_text
from toolkit.io.preprocessed import complete_cases
from toolkit.training import cascade
from toolkit.training.checkpoint import training_state
from toolkit.training.pretrained import pretrained_file, pretrained_weights
from toolkit.training.schedule import Schedule
from toolkit.training.tracking import require_loggers
from toolkit.workspace import (
    CHECKPOINT_FINAL,
    CHECKPOINT_LATEST,
    MODEL_DATASET_JSON,
    MODEL_PLANS,
    DatasetPaths,
)

# the run settings' entry holding the seed derived from --seed, the configuration and the fold
KEY_RUN_SEED = "run_seed"
# the run settings' entry naming the --pretrained source (absent when the run has none, as in
# every checkpoint written before the option: those resume unchanged)
KEY_PRETRAINED = "pretrained"
# bits of the derived seed: torch.manual_seed and numpy's SeedSequence both take 63
RUN_SEED_BITS = 63


def run_seed(seed: int, configuration: str, fold: Fold) -> int:
    """The seed of one fold of one configuration: a stable hash of the three (never Python's
    salted ``hash``), the same in every process and on every machine. Fold ``all`` is hashed
    as its name, a fold number as the number."""
    text = json.dumps([int(seed), str(configuration), fold if fold == FOLD_ALL else int(fold)])
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:8], "little") >> (64 - RUN_SEED_BITS)


@dataclass(frozen=True)
class TrainOptions:
    schedule: Schedule = Schedule()
    device: str = "auto"
    precision: str = "auto"  # auto: fp16 with gradient scaling on CUDA, fp32 on the CPU
    compile: bool = False
    resume: bool = False
    seed: int = 0
    devices: int = 1
    checkpoint_every_s: float = 300.0  # latest checkpoint at least this often, also mid-epoch
    validate: bool = True  # predict the fold's validation cases at the end
    validation_mirroring: bool = True  # test-time mirroring in that prediction (the method's)
    loader_threads: int | None = None  # None: 1 on the CPU (it shares the cores), 2 on CUDA
    prefetch: int = 3
    quiet: bool = False
    loggers: tuple[str, ...] = ()  # --logger: tensorboard, mlflow (toolkit/training/tracking.py)
    pretrained: str | None = None  # weights the network starts from (training/pretrained.py)

    def threads_for(self, device: torch.device) -> int:
        if self.loader_threads is not None:
            return self.loader_threads
        return 2 if device.type == "cuda" else 1

    def run_settings(self, configuration: str, fold: Fold) -> dict:
        """What a resumed run must share with the run it continues, with the derived seed
        (and the ``--pretrained`` source, when given, as an absolute path)."""
        run = {
            "seed": self.seed,
            "schedule": asdict(self.schedule),
            KEY_RUN_SEED: run_seed(self.seed, configuration, fold),
        }
        if self.pretrained is not None:
            run[KEY_PRETRAINED] = str(Path(self.pretrained).expanduser().resolve())
        return run


@dataclass(kw_only=True)
class TrainingJob:
    paths: DatasetPaths
    plans: Plans
    configuration: Configuration
    fold: Fold  # a fold of splits.json, or FOLD_ALL (every case trains, none is held out)
    split: Split
    data_folder: Path
    previous_folder: Path | None  # cascade: the first stage's predictions
    options: TrainOptions
    device: torch.device
    start_from: Path | None  # checkpoint to resume from
    only_validation: bool  # training finished, its final validation did not
    pretrained: Path | None  # checkpoint file the network starts from (None when resuming)
    run_settings: dict  # stored in every checkpoint (KEY_RUN); a resume keeps the stored ones

    @property
    def seed(self) -> int:
        """The seed of every random draw of this run (``--seed`` for a pre-``run_seed`` checkpoint)."""
        return int(self.run_settings.get(KEY_RUN_SEED, self.run_settings["seed"]))

    @property
    def final_validation(self) -> bool:
        """Whether the run ends by predicting its held-out cases: fold ``all`` has none (its
        pseudo-Dice is measured on training cases), so it never does."""
        return self.options.validate and self.fold != FOLD_ALL

    @property
    def fold_dir(self) -> Path:
        return self.paths.fold_dir(self.configuration.name, self.fold)

    @property
    def model_dir(self) -> Path:
        return self.paths.model_dir(self.configuration.name)


def prepare(
    paths: DatasetPaths, configuration_name: str, fold: Fold, options: TrainOptions
) -> TrainingJob:
    plans = dataset_plans(paths)
    configuration = plans.configuration(configuration_name)
    device = resolve_device(options.device)
    resolve_precision(options.precision, device)
    require_loggers(options.loggers)
    if options.devices < 1:
        raise ToolkitError(f"--devices must be at least 1, not {options.devices}")
    if device.type == "cuda" and options.devices > torch.cuda.device_count():
        raise ToolkitError(
            f"--devices {options.devices} asks for more GPUs than the {torch.cuda.device_count()} torch sees"
        )

    data_folder = paths.preprocessed_dir(configuration.data_identifier)
    cases = complete_cases(data_folder)
    if not cases:
        raise MissingStageError(
            data_folder, f"toolkit preprocess {paths.name} --configs {configuration.name}"
        )
    splits = load_or_create_splits(paths.splits_json, cases)
    split = fold_split(splits, fold, cases, paths.splits_json)

    previous_folder = None
    if configuration.is_cascade:
        previous_folder = cascade.require_previous_stage(paths, plans, configuration, split, splits)

    fold_dir = paths.fold_dir(configuration.name, fold)
    latest, final = fold_dir / CHECKPOINT_LATEST, fold_dir / CHECKPOINT_FINAL
    start_from = None
    only_validation = False
    run = options.run_settings(configuration.name, fold)
    existing = [p for p in (final, latest) if p.is_file()]
    if existing and not options.resume:
        raise ToolkitError(
            f"fold {fold} of {configuration.name} already has {existing[0].name}: "
            "add --resume to continue it, or delete the fold folder to start again",
            fold_dir,
        )
    if options.resume and existing:
        start_from = existing[0]
        checkpoint = load_checkpoint(start_from)
        run = resumed_run_settings(checkpoint.get(KEY_RUN, {}), run, start_from)
        only_validation = training_state(checkpoint).finished
    pretrained = None
    if options.pretrained is not None and start_from is None:
        pretrained = pretrained_file(options.pretrained)
        pretrained_weights(pretrained)  # a missing or damaged file fails here, before any run
    return TrainingJob(
        paths=paths,
        plans=plans,
        configuration=configuration,
        fold=fold,
        split=split,
        data_folder=data_folder,
        previous_folder=previous_folder,
        options=options,
        device=device,
        start_from=start_from,
        only_validation=only_validation,
        pretrained=pretrained,
        run_settings=run,
    )


def resumed_run_settings(stored: dict, wanted: dict, checkpoint: Path) -> dict:
    """The run settings a resume continues with: the stored ones, if the options match them.

    A checkpoint from before the per-fold seed has no ``run_seed``: it is compared without it
    and continues with its own seed.
    """
    comparable = wanted if KEY_RUN_SEED in stored else _without_run_seed(wanted)
    if stored != comparable:
        raise ToolkitError(
            f"was trained with {_describe(stored)}; resume with the same options (asked for {_describe(wanted)})",
            checkpoint,
        )
    return stored


def _without_run_seed(run: dict) -> dict:
    return {k: v for k, v in run.items() if k != KEY_RUN_SEED}


def _describe(run: dict) -> str:
    s = run.get("schedule", {})
    pretrained = f" --pretrained {run[KEY_PRETRAINED]}" if KEY_PRETRAINED in run else ""
    return (
        f"--seed {run.get('seed')} --epochs {s.get('epochs')} --iters-per-epoch {s.get('iterations_per_epoch')} "
        f"--val-iters {s.get('validation_iterations')}{pretrained}"
    )


def write_model_folder(job: TrainingJob) -> None:
    """Copies of ``plans.json`` and ``dataset.json`` so the model folder stands alone."""
    job.plans.save(job.model_dir / MODEL_PLANS)
    write_text(job.model_dir / MODEL_DATASET_JSON, job.paths.dataset_json.read_text())
