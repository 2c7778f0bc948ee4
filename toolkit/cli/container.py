"""Commands of the container stage: ``export-container``, ``test-container``."""

from __future__ import annotations

from pathlib import Path

import typer

from toolkit.cli.common import (
    QuietOption,
    WaitOption,
    WorkspaceOption,
    dataset_argument,
    parse_fold_list,
    writing,
    writing_into,
)

EngineOption = typer.Option(
    "auto",
    "--engine",
    help="docker (DOCKER_HOST or the local Docker engine), podman (a private podman service "
    "started for this command, storage under ~/.cache/toolkit), or auto (Docker when found, else podman).",
)
MemoryOption = typer.Option(
    "8g",
    "--memory",
    help="The memory selected for the algorithm on the platform (default 8g); test runs get it "
    "minus the 1 GiB the platform reserves for the system, and fail above it.",
)
TimeLimitOption = typer.Option(
    3600.0,
    "--time-limit",
    help="The phase's time limit per job in seconds: a test case that takes longer fails (and is stopped).",
)
InterfacesOption = typer.Option(
    None,
    "--interfaces",
    help="The phase's algorithm interfaces as JSON (grand-challenge-forge's `algorithm_interfaces`: "
    "a list of {inputs, outputs}, each socket with slug, kind, relative_path and, for a "
    "Segmentation, overlay_segments). Image inputs are mapped to the model's channels by name; "
    "the job's inputs.json picks the interface.",
    show_default=False,
)
ChannelMapOption = typer.Option(
    None,
    "--channel-map",
    help="SOCKET=CHANNEL (name or index), repeatable: which input socket feeds which channel, "
    "where the names do not tell.",
    show_default=False,
)
OutOption = typer.Option(
    None,
    "--out",
    help="Export folder. Default: `<dataset>/export/` in the workspace.",
    show_default=False,
)


def export_container(
    dataset: str = dataset_argument(),
    workspace: Path | None = WorkspaceOption,
    out: Path | None = OutOption,
    tag: str | None = typer.Option(
        None, "--tag", help="Image name. Default: `toolkit-<dataset>:latest`.", show_default=False
    ),
    base_image: str | None = typer.Option(
        None,
        "--base-image",
        help="Base image with Python 3.11. Default: python:3.11-slim-bookworm with Docker; "
        "with podman localhost/toolkit-base:bookworm, made once with debootstrap (no registry needed).",
        show_default=False,
    ),
    model_mode: str = typer.Option(
        "baked",
        "--model-mode",
        help="baked: the model inside the image; tarball: a separate model.tar.gz for the "
        "platform's /opt/ml/model (the image then needs no rebuild for new weights).",
    ),
    interfaces: Path | None = InterfacesOption,
    channel_map: list[str] | None = ChannelMapOption,
    input_slugs: list[str] | None = typer.Option(
        None,
        "--input-slug",
        help="Shorthand for one interface whose folders are the slugs: an input socket per "
        "channel in channel order (e.g. --input-slug t2-weighted-mri --input-slug adc-map). "
        "Default: `<channel name>-image`.",
        show_default=False,
    ),
    output_slug: str = typer.Option(
        "segmentation",
        "--output-slug",
        help="Shorthand: the output Segmentation socket (folder images/SLUG, the model's labels as segments).",
    ),
    device: str = typer.Option(
        "cpu",
        "--device",
        help="cpu: PyTorch's CPU build (small image); cuda: the CUDA build (several GB), "
        "falling back to the CPU when the job has no GPU; its test run gets this machine's GPUs "
        "(Docker) and reports the GPU memory against the T4's 16 GB.",
    ),
    runtime: str | None = typer.Option(
        None,
        "--runtime",
        help="What runs the networks in the image: openvino or onnxruntime for a lean CPU image "
        "(no torch, no SimpleITK: it reads .mha/.mhd inputs; each fold's network as ONNX, "
        "exported here unless the dataset's model is ONNX already), or torch (PyTorch and "
        "SimpleITK: any input format, and --device cuda). The test run is compared with "
        "`toolkit predict --backend RUNTIME`. Default: openvino for --device cpu, torch for "
        "--device cuda.",
        show_default=False,
    ),
    build: bool = typer.Option(
        True,
        "--build/--no-build",
        help="--no-build: write the context only and dry-run its entrypoint in a subprocess "
        "(no container engine needed).",
    ),
    save: bool = typer.Option(
        True,
        "--save/--no-save",
        help="Save the image as image.tar.gz and check it as the platform does.",
    ),
    wheelhouse: Path | None = typer.Option(
        None,
        "--wheelhouse",
        help="Where the image's wheels are downloaded on this machine (by the pip that installed "
        "the toolkit, with its index and find-links settings) and reused; the build itself needs "
        "no network. Default: `<toolkit cache>/wheelhouse`.",
        show_default=False,
    ),
    online_build: bool = typer.Option(
        False,
        "--online-build",
        help="Let pip download the wheels inside the build instead (needs network in the build, "
        "and PyTorch's CPU index for a cpu image).",
    ),
    folds: str | None = typer.Option(
        None,
        "--folds",
        "-f",
        help="Folds to ship instead of the selection's, e.g. 0,1 or `all` (the models trained on "
        "every case by `toolkit train ... all`). The configurations and postprocessing still come "
        "from selection.json.",
        show_default=False,
    ),
    engine: str = EngineOption,
    memory: str = MemoryOption,
    time_limit: float = TimeLimitOption,
    wait: bool = WaitOption,
    quiet: bool = QuietOption,
) -> None:
    """Build the selected model (ensemble and postprocessing of `selection.json`) as a Grand
    Challenge algorithm image.

    Writes a build context to `<dataset>/export/context/` (wheels downloaded here, so the
    build needs no network), builds the image through the Docker SDK (log in
    `export/build.log`), runs it on a cross-validation case laid out as on the platform for
    each interface (no network, the memory minus 1 GiB, read-only /input, the time limit; a
    GPU for a cuda image when this machine has one) and checks that the outputs are valid
    for their sockets and identical to `toolkit predict`'s, then saves `export/image.tar.gz`
    (refused over 10 GiB) and checks it as the platform does (one image, non-root user,
    amd64). Writes the model card `export/README.md`, with --no-build too.
    """
    from toolkit.container.stage import ExportOptions, default_tag
    from toolkit.container.stage import export_container as run_export
    from toolkit.progress import enabled
    from toolkit.workspace import DatasetPaths

    paths = DatasetPaths.open(workspace, dataset)
    options = ExportOptions(
        tag=tag or default_tag(paths.name),
        base_image=base_image,
        model_mode=model_mode,
        input_slugs=list(input_slugs) if input_slugs else None,
        output_slug=output_slug,
        device=device,
        wheelhouse=wheelhouse,
        folds=parse_fold_list(folds, "--folds"),
        interfaces=interfaces,
        channel_map=list(channel_map) if channel_map else None,
        online_build=online_build,
        runtime=runtime,
    )
    echo = (lambda line: typer.echo(f"  | {line}", err=True)) if enabled(quiet) else None
    # the dataset's writer lock for its own export/, or that of the dataset --out lies in
    with writing(paths, wait) if out is None else writing_into(out, wait):
        run_export(
            paths,
            options,
            out=out,
            build=build,
            save=save,
            engine=engine,
            memory=memory,
            time_limit=time_limit,
            echo=echo,
        )


def test_container(
    dataset: str = dataset_argument(),
    workspace: Path | None = WorkspaceOption,
    out: Path | None = OutOption,
    cases: int = typer.Option(
        3, "--cases", "-n", min=1, help="Cross-validation cases to run (one per fold, in turn)."
    ),
    case: list[str] | None = typer.Option(
        None, "--case", help="Run this case (repeatable) instead of --cases.", show_default=False
    ),
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="Run the exported entrypoint in a subprocess instead of the image (no engine needed).",
    ),
    interfaces: Path | None = typer.Option(
        None,
        "--interfaces",
        help="Lay the cases out for these interfaces (the phase's JSON, as for export-container) "
        "instead of the export's: checks that the image serves them.",
        show_default=False,
    ),
    channel_map: list[str] | None = ChannelMapOption,
    engine: str = EngineOption,
    memory: str = MemoryOption,
    time_limit: float = TimeLimitOption,
    wait: bool = WaitOption,
    quiet: bool = QuietOption,
) -> None:
    """Run the exported image on cross-validation cases as the platform would, and check it.

    Each case is laid out as on the platform for one interface, the interfaces in turn
    (`input/<relative_path>/<uuid>.mha`, `inputs.json`); the image runs with no network, the
    memory minus the platform's 1 GiB reservation, read-only /input and the time limit (a
    GPU for a cuda image when this machine has one; its GPU memory at the largest case is
    reported against the T4's 16 GB). Every output must be valid for its socket and equal,
    voxel for voxel, the same ensemble predicted here. Reports time and peak memory per case;
    writes `export/container-test.json` and updates the model card `export/README.md`.
    """
    from toolkit.container.stage import test_container as run_test
    from toolkit.workspace import DatasetPaths

    paths = DatasetPaths.open(workspace, dataset)
    with writing(paths, wait) if out is None else writing_into(out, wait):
        run_test(
            paths,
            out=out,
            cases=cases,
            case_names=list(case) if case else None,
            engine=engine,
            memory=memory,
            time_limit=time_limit,
            dry_run=dry_run,
            quiet=quiet,
            interfaces_file=interfaces,
            channel_map=list(channel_map) if channel_map else None,
        )


def register(app: typer.Typer) -> None:
    app.command("export-container")(export_container)
    app.command("test-container")(test_container)
