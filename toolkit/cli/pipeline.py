"""``run-all`` and ``status``."""

from __future__ import annotations

from pathlib import Path

import typer

from toolkit.cli.common import (
    PLANNER_HELP,
    DeviceOption,
    QuietOption,
    WaitOption,
    WorkspaceOption,
    parse_int_list,
    parse_str_list,
    writing,
)
from toolkit.pipeline.presets import PRESETS
from toolkit.workspace import DatasetPaths

_PRESETS_HELP = "; ".join(f"**{p.name}**: {p.description}" for p in PRESETS.values())


def run_all(
    dataset: str = typer.Argument(
        ..., help="Dataset name in the workspace (after `toolkit convert`), or its folder."
    ),
    configs: str = typer.Option(
        None,
        "--configs",
        help="Comma-separated configurations to train, e.g. 2d,3d_fullres (a name without its "
        "planner means that configuration of every planner). Default: the preset's (paper: every planned one).",
    ),
    planner: str = typer.Option(
        None,
        "--planner",
        help=PLANNER_HELP + " Each planner's configurations train on the same folds; evaluation "
        "and selection compare them all and their pairwise ensembles. Default: default.",
    ),
    folds: str = typer.Option(
        None,
        "--folds",
        help="Comma-separated folds, e.g. 0,1. Default: every fold of splits.json (five).",
    ),
    preset: str = typer.Option("paper", "--preset", help=f"Budget. {_PRESETS_HELP}."),
    time_budget: str = typer.Option(
        None,
        "--time-budget",
        metavar="DURATION",
        help="Wall time from this command's start to selection.json, e.g. 30m, 2h, 12h or 1h30m: "
        "after preprocessing a short calibration measures each configuration's seconds per "
        "iteration here, and the budget decides which configurations and folds train and for how "
        "many epochs x iterations (one deep model first: fold 0 up to 12000 iterations, then more "
        "folds of as many, then more configurations); trainings not started are decided again at their start "
        "if the machine got slower. Overrides the preset's budget (quick: 30 min, demo: 4 min 30 s); "
        "not with --epochs/--iters-per-epoch, which fix the iterations instead.",
    ),
    epochs: int = typer.Option(
        None, "--epochs", min=1, help="Epochs per model (overrides the preset)."
    ),
    iters_per_epoch: int = typer.Option(
        None,
        "--iters-per-epoch",
        min=1,
        help="Training iterations per epoch (overrides the preset).",
    ),
    val_iters: int = typer.Option(
        None, "--val-iters", min=1, help="Validation iterations per epoch (overrides the preset)."
    ),
    device: str = DeviceOption,
    like: str = typer.Option(
        None,
        "--like",
        help="Plan like another dataset (a name in the workspace, a plans.json or a model folder): "
        "its network, patch and spacing, this dataset's own normalisation and labels, as "
        "`toolkit plan --like`. Without it run-all plans anew (replacing a plan made with --like).",
    ),
    precision: str = typer.Option(
        "auto",
        "--precision",
        help="Of the trainings: auto (fp16 on CUDA; on the CPU bf16 where it computes bf16 natively, "
        "AVX-512 BF16 or AMX, else fp32), fp32, bf16 or fp16 (CUDA).",
    ),
    executor: str = typer.Option(
        "local",
        "--executor",
        help="local: one training at a time per device; ray: trainings and per-case work as Ray tasks (pip install 'toolkit[ray]').",
    ),
    ray_address: str = typer.Option(
        None,
        "--ray-address",
        help="Address of an existing Ray cluster (e.g. 10.0.0.5:6379); default: start a local Ray instance.",
    ),
    workers: int = typer.Option(
        None,
        "--workers",
        "-j",
        min=1,
        help="Parallel worker processes for per-case work. Default: number of CPU cores (at most "
        "8). With --executor ray: how many per-case Ray tasks run at once (default: as many as the "
        "cluster has CPUs).",
    ),
    seed: int = typer.Option(
        0, "--seed", help="Seed of the trainings (mixed with each configuration and fold)."
    ),
    logger: list[str] = typer.Option(
        None,
        "--logger",
        metavar="tensorboard|mlflow",
        help="Of the trainings: log each epoch's losses, pseudo-Dice per class, learning rate and time, and the final validation Dice, to "
        "tensorboard (models/<config>/fold_<k>/tensorboard) and/or mlflow (a local store in the fold folder, or "
        "MLFLOW_TRACKING_URI when set). Repeat it or separate with commas; optional extras: pip install 'toolkit[tensorboard]' "
        "or 'toolkit[mlflow]'. Default: none.",
    ),
    pretrained: Path = typer.Option(
        None,
        "--pretrained",
        help="Start every training's network from these weights (as `toolkit train --pretrained`: "
        "a checkpoint file, fold folder or model folder, ours or nnU-Net v2's; tensors whose name "
        "and shape match). Its content is part of each training's key: a changed file trains again.",
        show_default=False,
    ),
    workspace: Path = WorkspaceOption,
    wait: bool = WaitOption,
    quiet: bool = QuietOption,
) -> None:
    """Run the whole method: verify, fingerprint, plan, preprocess, train every configuration and
    fold, evaluate with bootstrap intervals, select the best candidate and its postprocessing.

    Resumable: run it again after an interruption and it skips what is complete and valid,
    resumes trainings from their checkpoints and redoes what changed.

    One writer per dataset: while it runs, any other toolkit command that would write this
    dataset stops at once with one line naming this run (or waits, with `--wait`);
    `toolkit status` and `predict` into another folder read it freely.

    Before training it says how many trainings and iterations are ahead (with a time budget: the
    plan of trainings and its estimate), then shows the training stage's time left, estimated from
    the speeds measured so far (see `toolkit status`).

    Example: `toolkit run-all Task04_Hippocampus --preset quick`, or with nnU-Net v2's
    residual-encoder U-Net beside the plain one: `... --planner default,resenc-l`
    """
    from toolkit.pipeline.runner import RunOptions
    from toolkit.pipeline.runner import run_all as run
    from toolkit.pipeline.status import dataset_status, render
    from toolkit.progress import info

    paths = DatasetPaths.open(workspace, dataset)
    fold_list = parse_int_list(folds, "--folds")
    config_list = parse_str_list(configs)
    planner_list = parse_str_list(planner)
    options = RunOptions(
        preset=preset,
        planners=tuple(planner_list) if planner_list else None,
        configs=tuple(config_list) if config_list else None,
        folds=tuple(fold_list) if fold_list else None,
        epochs=epochs,
        iters_per_epoch=iters_per_epoch,
        val_iters=val_iters,
        device=device,
        precision=precision,
        like=like,
        executor=executor,
        ray_address=ray_address,
        workers=workers,
        seed=seed,
        quiet=quiet,
        loggers=tuple(logger or ()),
        pretrained=None if pretrained is None else str(pretrained.expanduser().resolve()),
        time_budget=time_budget,
    )
    # the lock is this process's: the trainings and per-case work it starts (worker
    # processes, Ray tasks) write under it and never take it themselves
    with writing(paths, wait):
        summary = run(paths, options)
    info(
        f"run-all finished in {summary.seconds:.0f} s: {len(summary.ran)} stage(s) run, "
        f"{len(summary.skipped)} already complete; chosen: {summary.selection}"
    )
    if not quiet:
        render(dataset_status(paths))
        info(f"report: {paths.evaluation / 'report.md'}   selection: {paths.selection_json}")


def status(
    dataset: str = typer.Argument(..., help="Dataset name in the workspace, or its folder."),
    workspace: Path = WorkspaceOption,
) -> None:
    """Show the stages and trainings of a dataset: state, epoch, best pseudo-Dice, time spent and
    left; the trainings done and the training stage's time left, from the seconds per iteration
    measured in the training logs; and the chosen candidate once selected.

    Example: `toolkit status Task04_Hippocampus`
    """
    from toolkit.pipeline.status import dataset_status, render

    paths = DatasetPaths.open(workspace, dataset)
    paths.require_raw()
    render(dataset_status(paths))


def register(app: typer.Typer) -> None:
    app.command("run-all")(run_all)
    app.command("status")(status)
