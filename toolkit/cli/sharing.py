"""Commands that share a trained model: ``export-model``, ``import-model``."""

from __future__ import annotations

from pathlib import Path

import typer

from toolkit.cli.common import (
    WaitOption,
    WorkspaceOption,
    dataset_argument,
    parse_int_list,
    parse_str_list,
    writing_into,
)
from toolkit.progress import info


def export_model(
    dataset: str = dataset_argument(),
    output: Path = typer.Option(
        ..., "--output", "-o", help="The zip to write, e.g. model.zip.", show_default=False
    ),
    workspace: Path | None = WorkspaceOption,
    config: str | None = typer.Option(
        None,
        "--config",
        "-c",
        help="Configuration(s) to export, e.g. 3d_fullres or 2d,3d_fullres (an ensemble). "
        "Default: the selection's (selection.json), with its folds and postprocessing.",
        show_default=False,
    ),
    folds: str | None = typer.Option(
        None,
        "--folds",
        "-f",
        help="Folds to export, e.g. 0,1. Default: the selection's, else every trained fold.",
        show_default=False,
    ),
    example: bool = typer.Option(
        True,
        "--example/--no-example",
        help="Put one training case (images and label) in the zip, so that the receiver can "
        "test-run `toolkit export-container`. Leave it out for data that must not travel.",
    ),
    wait: bool = WaitOption,
) -> None:
    """Write a trained model as one zip: plans, dataset.json, each fold's network weights (no training state), postprocessing and a manifest with sha256 checksums.

    `toolkit import-model model.zip` installs it into another workspace.
    """
    from toolkit.modelzip.stage import ModelExportOptions, export_model
    from toolkit.workspace import DatasetPaths

    options = ModelExportOptions(
        configurations=parse_str_list(config),
        folds=parse_int_list(folds, "--folds"),
        example=example,
    )
    with writing_into(output, wait):  # a zip written into a dataset's folder
        done = export_model(DatasetPaths.open(workspace, dataset), output, options)
    m = done.manifest
    info(
        f"model written to {done.path} ({done.size_bytes / 1e6:.1f} MB): "
        f"{'+'.join(m.configurations)}, folds {','.join(map(str, m.folds))}"
        + (f", example case {m.example_case}" if m.example_case else "")
    )


def import_model(
    archive: Path = typer.Argument(
        ...,
        help="A zip from `toolkit export-model`, or from nnU-Net v2's `nnUNetv2_export_model_to_zip`.",
        show_default=False,
    ),
    workspace: Path | None = WorkspaceOption,
    name: str | None = typer.Option(
        None,
        "--name",
        "-n",
        help="Dataset name in the workspace. Default: the archive's dataset.",
        show_default=False,
    ),
    force: bool = typer.Option(
        False,
        "--force",
        help="Replace a dataset of that name (by renames: a kill leaves the old or the new one).",
    ),
    wait: bool = WaitOption,
) -> None:
    """Install a model zip as a dataset of the workspace: then `toolkit predict --dataset NAME` and `toolkit export-container NAME` use it.

    Every member is checked against the manifest's sha256 as it is unpacked (a chunk at a
    time) into a staging folder, every JSON member by its file's reader; the dataset appears
    only when all pass. A zip that would unpack into more than 32 GiB, or a member more than
    200 times its compressed size, is refused. nnU-Net v2 archives are converted to the
    toolkit's model folders; pickles such as postprocessing.pkl are never unpickled (left
    out; the postprocessing is read from postprocessing.json).
    """
    from toolkit.modelzip.stage import import_model

    done = import_model(archive, workspace, name, force, wait=wait)
    info(
        f"{done.kind} model installed as {done.paths.root}: {'+'.join(done.configurations)}, "
        f"folds {','.join(map(str, done.folds))}; predict with "
        f"`toolkit predict --dataset {done.paths.name} -i IN -o OUT`"
    )
    for note in done.notes:
        info(f"note: {note}")


def register(app: typer.Typer) -> None:
    app.command(no_args_is_help=True)(export_model)
    app.command(no_args_is_help=True)(import_model)
