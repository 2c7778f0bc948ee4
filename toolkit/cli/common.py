"""Options shared by commands, so each is spelled and documented once."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import typer

from toolkit.core.constants import FOLD_ALL
from toolkit.workspace import DatasetPaths

WorkspaceOption = typer.Option(
    None,
    "--workspace",
    "-w",
    help="Workspace root. Default: $TOOLKIT_WORKSPACE, else ./workspace.",
    show_default=False,
)
QuietOption = typer.Option(False, "--quiet", "-q", help="No progress bars.")
WorkersOption = typer.Option(
    None,
    "--workers",
    "-j",
    min=1,
    help="Parallel worker processes. Default: number of CPU cores (at most 8).",
)
PLANNER_HELP = (
    "Planner(s), comma-separated: default (the method's plain U-Net, 8 GB reference budget), "
    "resenc-m (nnU-Net v2's residual-encoder U-Net M, 8 GB), resenc-l (24 GB) or resenc-xl "
    "(40 GB). Several plan side by side into one plans.json: a planner other than default "
    "names its configurations <configuration>-<planner>, e.g. 3d_fullres-resenc-l."
)
CaseWorkersOption = typer.Option(
    None,
    "--workers",
    "-j",
    min=1,
    help="Parallel worker processes. Default: number of CPU cores (at most 8). Fewer run when "
    "the memory available would not hold one large case per worker (a line says so).",
)
WaitOption = typer.Option(
    False,
    "--wait",
    help="When another toolkit command is writing this dataset, wait for it to end instead of "
    "stopping at once (the refusal names that command, its process id, host and start time).",
)
DeviceOption = typer.Option(
    "auto", "--device", help="auto (CUDA when available, else CPU), cpu or cuda."
)


def dataset_argument(
    help_text: str = "Dataset name in the workspace (or the path of its folder).",
) -> typer.models.ArgumentInfo:
    return typer.Argument(..., help=help_text, show_default=False)


def parse_int_list(text: str | None, what: str) -> list[int] | None:
    """``"0,1,2"`` -> ``[0, 1, 2]``; errors name the option."""
    if text is None or text.strip() == "":
        return None
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise typer.BadParameter(
            f"{what} must be comma-separated integers such as 0,1,2, not {text!r}"
        ) from None


def parse_fold_list(text: str | None, what: str = "--folds") -> list[int | str] | None:
    """``"0,1,2"`` -> ``[0, 1, 2]``; ``"all"`` -> ``["all"]`` (the fold trained on every case)."""
    if text is None or text.strip() == "":
        return None
    folds: list[int | str] = []
    for value in (v for v in text.replace(" ", "").split(",") if v != ""):
        if value.lower() == FOLD_ALL:
            folds.append(FOLD_ALL)
        elif value.isdigit():
            folds.append(int(value))
        else:
            raise typer.BadParameter(
                f"{what} must be comma-separated fold numbers such as 0,1,2, or {FOLD_ALL}, not {text!r}"
            )
    return folds


def parse_str_list(text: str | None) -> list[str] | None:
    if text is None or text.strip() == "":
        return None
    return [v for v in text.replace(" ", "").split(",") if v]


def as_path(p: str | Path | None) -> Path | None:
    return None if p is None else Path(p)


@contextlib.contextmanager
def writing(paths: DatasetPaths | None, wait: bool) -> Iterator[None]:
    """Hold the writer lock of the dataset ``paths`` (none for ``None``) for the ``with`` block:
    every command that writes into a dataset's folder runs inside it."""
    if paths is None:
        yield
        return
    from toolkit.io.lock import dataset_writer_lock
    from toolkit.progress import info

    with dataset_writer_lock(paths, wait=wait, notify=info):
        yield


def writing_into(path: Path | None, wait: bool) -> contextlib.AbstractContextManager[None]:
    """:func:`writing` for the dataset whose folder holds ``path``, if one does (an output
    written into a dataset's folder); nothing to hold for a folder outside every dataset."""
    return writing(None if path is None else DatasetPaths.holding(path), wait)
