"""The ``toolkit`` command line.

Each module in this package holds the commands of one stage, as thin functions that parse
options and call the library; it exposes ``register(app)``. Modules are registered in the
order of ``COMMAND_MODULES`` (the order of the pipeline, which is the order of ``--help``).
"""

from __future__ import annotations

import importlib
import sys

import typer

from toolkit import __version__
from toolkit.errors import ToolkitError, os_error_line

COMMAND_MODULES = (
    "data",  # convert, verify, demo-data
    "planning",  # fingerprint, plan, preprocess
    "training",  # train
    "inference",  # predict, ensemble
    "evaluation",  # evaluate, select
    "pipeline",  # run-all, status
    "container",  # export-container, test-container
    "sharing",  # export-model, import-model
)

app = typer.Typer(
    name="toolkit",
    help=(
        "Self-configuring medical image segmentation (the nnU-Net method).\n\n"
        "From a Medical Segmentation Decathlon task to a Grand Challenge algorithm image: "
        "`toolkit convert TASK`, `toolkit run-all DATASET`, `toolkit export-container DATASET`."
    ),
    no_args_is_help=True,
    rich_markup_mode="markdown",
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"toolkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Self-configuring medical image segmentation."""


def _register_all() -> None:
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"toolkit.cli.{name}")
        except ModuleNotFoundError as exc:
            # a stage whose module is not in this build yet (development checkouts)
            if exc.name == f"toolkit.cli.{name}":
                continue
            raise
        module.register(app)


_register_all()


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors and operating-system errors (no space left, permission denied,
    not a directory, ...) become one line on stderr and exit code 2."""
    try:
        app(args=argv, standalone_mode=True)
    except ToolkitError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except OSError as exc:
        print(f"error: {os_error_line(exc)}", file=sys.stderr)
        sys.exit(ToolkitError.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
