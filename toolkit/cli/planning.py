"""Commands of the planning stage: ``fingerprint``, ``plan``, ``preprocess``."""

from __future__ import annotations

from pathlib import Path

import typer

from toolkit.cli.common import (
    PLANNER_HELP,
    CaseWorkersOption,
    QuietOption,
    WaitOption,
    WorkspaceOption,
    dataset_argument,
    parse_str_list,
    writing,
)
from toolkit.errors import ToolkitError
from toolkit.progress import info, show_table


def fingerprint(
    dataset: str = dataset_argument(),
    workspace: Path | None = WorkspaceOption,
    workers: int | None = CaseWorkersOption,
    wait: bool = WaitOption,
    quiet: bool = QuietOption,
) -> None:
    """Measure the training cases: crop boxes, shapes, spacings, label voxels, foreground intensities.

    Writes `<dataset>/fingerprint.json`, which `toolkit plan` reads.
    """
    from toolkit.fingerprint.stage import extract_fingerprint
    from toolkit.workspace import DatasetPaths

    paths = DatasetPaths.open(workspace, dataset)
    with writing(paths, wait):
        extract_fingerprint(paths, workers=workers, quiet=quiet)


def plan(
    dataset: str = dataset_argument(),
    workspace: Path | None = WorkspaceOption,
    preset_name: str = typer.Option(
        "default",
        "--preset",
        help="default: the method's plans (8 GB reference budget). cpu: a narrow network with small patches "
        "and batches that trains on a CPU in minutes.",
    ),
    planner: str = typer.Option("default", "--planner", help=PLANNER_HELP),
    gpu_memory: float | None = typer.Option(
        None,
        "--gpu-memory",
        min=0.1,
        help="Memory budget in GB of every planner, scaling its reference (default: each "
        "planner's own, 8 GB for default and resenc-m, 24 for resenc-l, 40 for resenc-xl).",
    ),
    memory_model: str | None = typer.Option(
        None,
        "--memory-model",
        help="reference (default): the method's feature-map estimate. calibrated: bytes predicted from memory "
        "measured by bench/calibrate_memory.py.",
    ),
    features_base: int | None = typer.Option(
        None, "--features-base", min=1, help="Features of the first stage (32)."
    ),
    max_features: int | None = typer.Option(
        None,
        "--max-features",
        min=1,
        help="Cap on features per stage, 2D and 3D (320 for 3D, 512 for 2D).",
    ),
    max_patch_voxels: int | None = typer.Option(
        None,
        "--max-patch-voxels",
        min=1,
        help="Largest 3D patch, in voxels, on top of the memory budget.",
    ),
    max_patch_pixels: int | None = typer.Option(
        None,
        "--max-patch-pixels",
        min=1,
        help="Largest 2D patch, in pixels, on top of the memory budget.",
    ),
    max_batch_size: int | None = typer.Option(
        None, "--max-batch-size", min=2, help="Largest batch size, 2D and 3D."
    ),
    like: str | None = typer.Option(
        None,
        "--like",
        help="Take another dataset's plans (configurations, target spacing, network, patch and "
        "batch size) with this dataset's own normalization, labels and shapes, as nnU-Net's "
        "move_plans_between_datasets: a dataset of the workspace, or a plans.json (ours, or "
        "nnU-Net v2's with its dataset.json beside it) or a folder holding one. Needs the same "
        "number of channels; replaces the planner options.",
        show_default=False,
    ),
    show: bool = typer.Option(False, "--show", help="Print a table per configuration."),
    wait: bool = WaitOption,
) -> None:
    """Turn the fingerprint into `<dataset>/plans.json`: 2d, 3d_fullres and, when needed, 3d_lowres + 3d_cascade_fullres.

    Each configuration holds its target spacing, axis order, normalization, network (family,
    stages, blocks, kernels, strides, features), patch and batch size, resampling and
    deep-supervision scales. `--planner resenc-l` plans nnU-Net v2's residual-encoder preset;
    `--planner default,resenc-l` both, side by side. `--like SOURCE` transfers another
    dataset's plans instead (for pretraining and fine-tuning).
    """
    from toolkit.planning.stage import (
        plan_dataset,
        plan_like,
        planner_summary,
        plans_tables,
        preset,
    )
    from toolkit.workspace import DatasetPaths

    paths = DatasetPaths.open(workspace, dataset)
    if like is not None:
        planner_options = {
            "--preset": preset_name != "default",
            "--planner": planner != "default",
            "--gpu-memory": gpu_memory,
            "--memory-model": memory_model,
            "--features-base": features_base,
            "--max-features": max_features,
            "--max-patch-voxels": max_patch_voxels,
            "--max-patch-pixels": max_patch_pixels,
            "--max-batch-size": max_batch_size,
        }
        given = [name for name, value in planner_options.items() if value]
        if given:
            raise ToolkitError(
                f"--like takes the source's plans as they are; leave out {', '.join(given)}"
            )
        with writing(paths, wait):
            plans = plan_like(paths, like, workspace)
        info(f"plans of {like} written to {paths.plans_json} ({planner_summary(plans)})")
        if show:
            for table in plans_tables(plans):
                show_table(table)
        return

    options = preset(
        preset_name,
        planners=parse_str_list(planner),
        gpu_memory_gb=gpu_memory,
        memory_model=memory_model,
        features_base=features_base,
        max_features_3d=max_features,
        max_features_2d=max_features,
        max_patch_voxels_3d=max_patch_voxels,
        max_patch_voxels_2d=max_patch_pixels,
        max_batch_size_3d=max_batch_size,
        max_batch_size_2d=max_batch_size,
    )
    with writing(paths, wait):
        plans = plan_dataset(paths, options)
    info(f"plans written to {paths.plans_json} ({planner_summary(plans)})")
    if show:
        for table in plans_tables(plans):
            show_table(table)


def preprocess(
    dataset: str = dataset_argument(),
    workspace: Path | None = WorkspaceOption,
    configs: str | None = typer.Option(
        None,
        "--configs",
        "-c",
        help="Comma-separated configurations, e.g. 2d,3d_fullres. Default: all in the plans "
        "(3d_cascade_fullres shares 3d_fullres's data).",
    ),
    workers: int | None = CaseWorkersOption,
    force: bool = typer.Option(
        False, "--force", "-f", help="Recompute cases that are already complete."
    ),
    wait: bool = WaitOption,
    quiet: bool = QuietOption,
) -> None:
    """Crop, normalize, resample and store every training case under `<dataset>/preprocessed/`.

    Resumable: cases already done for the current plans are skipped; cases made for older
    plans are redone.
    """
    from toolkit.preprocessing.stage import preprocess_dataset
    from toolkit.workspace import DatasetPaths

    paths = DatasetPaths.open(workspace, dataset)
    with writing(paths, wait):
        preprocess_dataset(
            paths,
            configurations=parse_str_list(configs),
            workers=workers,
            force=force,
            quiet=quiet,
        )


def register(app: typer.Typer) -> None:
    app.command()(fingerprint)
    app.command()(plan)
    app.command()(preprocess)
