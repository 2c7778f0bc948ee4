"""Command of the training stage: ``train``."""

from __future__ import annotations

from pathlib import Path

import typer

from toolkit.cli.common import (
    DeviceOption,
    QuietOption,
    WaitOption,
    WorkspaceOption,
    dataset_argument,
    writing,
)


def train(
    dataset: str = dataset_argument(),
    configuration: str = typer.Argument(
        ...,
        help="Configuration of the plan: 2d, 3d_fullres, 3d_lowres or 3d_cascade_fullres.",
        show_default=False,
    ),
    fold: str = typer.Argument(
        ...,
        help="Cross-validation fold, 0-4 (the split is written once to splits.json), or `all`: "
        "train on every case into fold_all/ (nnU-Net v2's fold all: the per-epoch pseudo-Dice is "
        "measured on training cases, and there is no final validation, so evaluate and select "
        "leave it out; predict with --folds all).",
        show_default=False,
    ),
    workspace: Path | None = WorkspaceOption,
    epochs: int = typer.Option(1000, "--epochs", min=1, help="Epochs (the method: 1000)."),
    iters_per_epoch: int = typer.Option(
        250, "--iters-per-epoch", min=1, help="Training iterations per epoch (the method: 250)."
    ),
    val_iters: int = typer.Option(
        50,
        "--val-iters",
        min=0,
        help="Validation patches' batches per epoch, for the pseudo-Dice (the method: 50).",
    ),
    device: str = DeviceOption,
    precision: str = typer.Option(
        "auto",
        "--precision",
        help="auto (fp16 with gradient scaling on CUDA; on the CPU bf16 autocast where it computes bf16 natively, "
        "AVX-512 BF16 or AMX, else fp32), fp32, bf16 (autocast) or fp16 (CUDA). On CPUs without native bf16, "
        "torch emulates it: many times slower than fp32. The loss is computed in fp32 either way.",
    ),
    compile_network: bool = typer.Option(
        False,
        "--compile",
        help="Compile the network with torch.compile (slow start, faster steps).",
    ),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue from the fold's latest checkpoint (same epoch, optimizer, scaler and random state); a finished fold is left as it is.",
    ),
    devices: int = typer.Option(
        1,
        "--devices",
        min=1,
        help="Processes training this model together (one per GPU on CUDA; gloo on the CPU). torchrun is detected too.",
    ),
    seed: int = typer.Option(
        0,
        "--seed",
        help="Seed of the network's initialisation and of every batch, mixed with the configuration and the fold (each fold draws its own numbers; the same seed repeats a run exactly).",
    ),
    checkpoint_minutes: float = typer.Option(
        5.0,
        "--checkpoint-minutes",
        min=0.0,
        help="Save the latest checkpoint at least this often, also within an epoch.",
    ),
    validate: bool = typer.Option(
        True,
        "--validate/--no-validate",
        help="Predict the fold's validation cases at the end (needed by evaluate and by a cascade's next stage).",
    ),
    validation_tta: bool = typer.Option(
        True,
        "--validation-tta/--no-validation-tta",
        help="Mirroring over every axis in the final validation prediction (the method's; off only for quick smoke runs).",
    ),
    loader_threads: int | None = typer.Option(
        None,
        "--loader-threads",
        min=1,
        help="Background threads preparing batches. Default: 1 on the CPU, 2 on CUDA.",
        show_default=False,
    ),
    logger: list[str] = typer.Option(
        None,
        "--logger",
        metavar="tensorboard|mlflow",
        help="Also log each epoch's losses, pseudo-Dice per class, learning rate and time, and the final validation Dice, to "
        "tensorboard (models/<config>/fold_<k>/tensorboard) and/or mlflow (a local store in the fold folder, or "
        "MLFLOW_TRACKING_URI when set). Repeat it or separate with commas; optional extras: pip install 'toolkit[tensorboard]' "
        "or 'toolkit[mlflow]'. Default: none.",
    ),
    pretrained: Path | None = typer.Option(
        None,
        "--pretrained",
        help="Start the network from another model's weights: a checkpoint file (ours, "
        "checkpoint_*.pt, or nnU-Net v2's, checkpoint_*.pth), a fold folder, or a model folder "
        "(ours or nnU-Net v2's; its fold_all, else its first fold). Every tensor whose name and "
        "shape match is loaded, the rest (e.g. the heads when the labels differ, the first "
        "convolution when the channels differ) stays freshly initialised; one line says which. "
        "Only at the start: a resume continues from its own checkpoint (give the same option).",
        show_default=False,
    ),
    wait: bool = WaitOption,
    quiet: bool = QuietOption,
) -> None:
    """Train one fold of one configuration: `models/<config>/fold_<k>/` gets checkpoints, `log.jsonl`, `progress.png` and the validation predictions (fold `all`: `fold_all/`, no validation).

    Patches are sampled from the preprocessed cases (a third forced onto foreground),
    augmented on the training device, and fed to the plan's U-Net (Dice + cross-entropy over
    the deep-supervision outputs, SGD with Nesterov momentum, poly learning rate). A killed
    run continues with `--resume`.

    Examples: `toolkit train Task04_Hippocampus 3d_fullres all` (every case, no validation);
    `toolkit train Task05_Prostate 3d_fullres 0 --pretrained workspace/Task04_Hippocampus/models/3d_fullres`
    """
    from toolkit.training.stage import Schedule, TrainOptions, parse_fold, train_fold
    from toolkit.workspace import DatasetPaths

    options = TrainOptions(
        schedule=Schedule(
            epochs=epochs, iterations_per_epoch=iters_per_epoch, validation_iterations=val_iters
        ),
        device=device,
        precision=precision,
        compile=compile_network,
        resume=resume,
        seed=seed,
        devices=devices,
        checkpoint_every_s=checkpoint_minutes * 60,
        validate=validate,
        validation_mirroring=validation_tta,
        loader_threads=loader_threads,
        quiet=quiet,
        loggers=tuple(logger or ()),
        pretrained=None if pretrained is None else str(pretrained),
    )
    paths = DatasetPaths.open(workspace, dataset)
    with writing(paths, wait):
        train_fold(paths, configuration, parse_fold(fold), options)


def register(app: typer.Typer) -> None:
    app.command(no_args_is_help=True)(train)
