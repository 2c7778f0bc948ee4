"""Commands that share a trained model: ``export-model``, ``import-model``."""

from __future__ import annotations

from pathlib import Path

import typer

from toolkit.cli.common import (
    WaitOption,
    WorkspaceOption,
    parse_int_list,
    parse_str_list,
    writing_into,
)
from toolkit.progress import info


def export_model(
    dataset: str | None = typer.Argument(
        None,
        help="Dataset name in the workspace (or the path of its folder); or give --model.",
        show_default=False,
    ),
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
    model: Path | None = typer.Option(
        None,
        "--model",
        "-m",
        help="Instead of a dataset: a model folder as `toolkit predict --model` reads it "
        "(models/CONFIG/ of a dataset, or one trained by nnU-Net v2), with --format onnx; a "
        "cascade takes its first stage from the folder beside it.",
        show_default=False,
    ),
    network_format: str = typer.Option(
        "torch",
        "--format",
        help="How each fold's network is stored: torch (weights, for the torch predictor) or "
        "onnx (the inference graph, input `image` and output `logits`, batch axis dynamic, "
        "spatial axes the plan's patch; for `toolkit predict --backend openvino|onnxruntime`, "
        "the lean container image, or any ONNX runtime).",
    ),
) -> None:
    """Write a trained model as one zip: plans, dataset.json, each fold's network (weights without training state, or an ONNX graph), postprocessing and a manifest with sha256 checksums.

    `toolkit import-model model.zip` installs it into another workspace.
    """
    from toolkit.errors import ToolkitError
    from toolkit.modelzip.stage import ModelExportOptions, export_model, export_model_folder
    from toolkit.workspace import DatasetPaths

    options = ModelExportOptions(
        configurations=parse_str_list(config),
        folds=parse_int_list(folds, "--folds"),
        example=example,
        network_format=network_format,
    )
    if (model is None) == (dataset is None):
        raise ToolkitError("give either a DATASET or --model DIR")
    if model is not None and (network_format != "onnx" or config):
        raise ToolkitError(
            "--model exports a model folder's ONNX networks: give --format onnx and no "
            "--config (for torch weights: `toolkit import-model`, then export the dataset)"
        )
    with writing_into(output, wait):  # a zip written into a dataset's folder
        if model is not None:
            done = export_model_folder(model, output, options.folds)
        else:
            done = export_model(DatasetPaths.open(workspace, dataset), output, options)
    m = done.manifest
    info(
        f"model written to {done.path} ({done.size_bytes / 1e6:.1f} MB): "
        f"{'+'.join(m.configurations)}, folds {','.join(map(str, m.folds))}, "
        f"{m.network_format} networks"
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
