"""Commands of the data stage: ``convert``, ``verify``, ``demo-data``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from toolkit.cli.common import QuietOption, WaitOption, WorkspaceOption, writing
from toolkit.errors import ToolkitError
from toolkit.progress import info

# convert and verify start worker processes only when there is enough data to repay them
WorkersOption = typer.Option(
    None,
    "--workers",
    "-j",
    min=1,
    help="Parallel worker processes. Default: the CPU cores (at most 8) for datasets over 32 MB, "
    "else one.",
    show_default=False,
)


def _print_report(report, dataset: str) -> None:
    from toolkit.verify.stage import listed_message

    for problem in report.problems:
        typer.echo(problem.line())
    info(escape(f"verify {dataset}: {report.summary()}"))
    if not report.ok:
        raise ToolkitError(listed_message(report), report.folder)


def convert(
    task: Path = typer.Argument(
        ...,
        help="MSD task folder (e.g. Task04_Hippocampus), its .tar archive, or a dataset in the converted "
        "(nnU-Net v2 raw) layout, also of 2D PNG/BMP/TIFF images (an RGB file is three channels).",
        show_default=False,
    ),
    workspace: Path | None = WorkspaceOption,
    name: str | None = typer.Option(
        None, "--name", "-n", help="Dataset name in the workspace. Default: the task folder's name."
    ),
    workers: int | None = WorkersOption,
    force: bool = typer.Option(
        False, "--force", "-f", help="Convert again, replacing an existing dataset."
    ),
    regions: str | None = typer.Option(
        None,
        "--regions",
        help="Train and evaluate regions (overlapping sets of label values) instead of classes, "
        "as nnU-Net v2 does: 'NAME=V,V,...;NAME=V,...', e.g. for BraTS (Task01_BrainTumour) "
        "'whole tumour=1,2,3;tumour core=2,3;enhancing tumour=3'. Each region writes the value "
        "no later region holds; otherwise give a JSON file with 'labels' (name -> values) and "
        "'regions_class_order'. A converted nnU-Net v2 dataset's own regions need no option.",
        show_default=False,
    ),
    wait: bool = WaitOption,
    quiet: bool = QuietOption,
) -> None:
    """Convert a Decathlon task into the workspace (`<workspace>/<name>/raw/`), then verify it.

    Splits 4D multi-modal images into one file per channel, stores labels as integers, skips
    `._` junk files and keeps every file's spacing, origin and direction. An existing dataset is
    left as it is unless `--force`.

    2D natural images (PNG, BMP, TIFF) are read as nnU-Net v2 reads them: spacing (999, 1, 1),
    RGB(A) files split into channels. Channel names select the normalization as in nnU-Net v2:
    CT, noNorm, zscore, rescale_to_0_1, rgb_to_0_1 (any other name: zscore).
    """
    from toolkit.convert.stage import convert_task, dataset_paths_for, parse_region_option

    declaration = parse_region_option(regions) if regions is not None else None
    paths = dataset_paths_for(task, workspace, name)
    with writing(paths, wait):
        result = convert_task(
            task, paths, workers=workers, force=force, quiet=quiet, regions=declaration
        )
    if not result.converted:
        info(escape(f"dataset exists: {paths.raw} (nothing changed; use --force to convert again)"))
        return
    info(
        escape(
            f"converted {result.training_cases} training and {result.test_cases} test cases into {paths.raw}"
        )
    )
    if result.report is not None:
        _print_report(result.report, paths.name)


def verify(
    dataset: str = typer.Argument(
        ..., help="Dataset name in the workspace (or the path of its folder).", show_default=False
    ),
    workspace: Path | None = WorkspaceOption,
    workers: int | None = WorkersOption,
    no_cache: bool = typer.Option(
        False,
        "--no-cache",
        help="Read every file again, even those unchanged since the last check.",
    ),
    wait: bool = WaitOption,
    quiet: bool = QuietOption,
) -> None:
    """Check a converted dataset: files readable, geometry consistent, labels declared, no NaN.

    Prints one line per problem (case and file); exits with code 2 when there is any error.
    Warnings (e.g. a case without foreground) do not fail.
    """
    from toolkit.verify.stage import verify_dataset
    from toolkit.workspace import DatasetPaths

    paths = DatasetPaths.open(workspace, dataset)
    with writing(paths, wait):  # it writes its cache, raw/.verified.json
        report = verify_dataset(paths, workers=workers, quiet=quiet, use_cache=not no_cache)
    _print_report(report, paths.name)


def demo_data(
    out: Path = typer.Argument(
        ..., help="Folder to write the task folder(s) into.", show_default=False
    ),
    task: list[str] = typer.Option(
        ["mr"],
        "--task",
        "-t",
        help="mr (Task901_SynthMR: 2-channel 3D, nested labels), ct (Task902_SynthCT), 2d (Task903_Synth2D), "
        "brats (Task904_SynthBraTS: 4 channels, nested labels trained as 3 declared regions), sparse "
        "(Task905_SynthSparse: every 4th slice labelled, the rest 'ignore'; dense test labels in labelsTs) "
        "rgb (Dataset920_SynthRGB: RGB PNG files, nnU-Net v2 raw layout) or all. Repeat (or separate with commas) for several.",
    ),
    cases: int | None = typer.Option(
        None,
        "--cases",
        min=1,
        help="Training cases per task. Default: mr 20, ct 12, 2d 24, brats 20, sparse 20, rgb 20.",
        show_default=False,
    ),
    test_cases: int = typer.Option(
        2, "--test-cases", min=0, help="Test cases (imagesTs) per task."
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same data."),
    force: bool = typer.Option(False, "--force", "-f", help="Replace task folders that exist."),
) -> None:
    """Write synthetic tasks in the Medical Segmentation Decathlon format; prints their folders.

    Made with the quirks of real downloads (4D multi-modal images, float labels, `._` junk
    files, non-identity directions), so `toolkit convert` on them works as on a real task.
    `rgb` is a natural-image task instead, in nnU-Net v2's raw layout (one RGB PNG per case).
    """
    from toolkit.synthetic import generate_tasks

    kinds = [k for value in task for k in value.replace(" ", "").split(",") if k]
    for folder in generate_tasks(
        kinds, out, n_cases=cases, seed=seed, n_test=test_cases, force=force
    ):
        typer.echo(str(folder))


def register(app: typer.Typer) -> None:
    app.command("convert")(convert)
    app.command("verify")(verify)
    app.command("demo-data")(demo_data)
