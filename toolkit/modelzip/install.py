"""``toolkit import-model``: a model archive installed as a dataset of a workspace.

The dataset folder gets the layout training leaves (``models/<config>/fold_<k>/``,
``plans.json``, ``raw/dataset.json``) and a ``selection.json``, so that ``toolkit predict
--dataset NAME`` and ``toolkit export-container NAME`` use the model as on the source.
Everything is written into a staging folder beside the dataset and renamed into place: an
interrupted import leaves no half-installed dataset.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from toolkit.core.postprocessing import Postprocessing
from toolkit.core.selection import Interval, Selection
from toolkit.errors import ToolkitError
from toolkit.io.atomic import write_bytes, write_json
from toolkit.io.lock import dataset_writer_lock
from toolkit.progress import info
from toolkit.workspace import DatasetPaths, check_dataset_name


@dataclass(frozen=True)
class ImportedModel:
    paths: DatasetPaths
    kind: str  # "toolkit" or "nnU-Net v2"
    configurations: list[str]
    folds: list[int]
    notes: list[str]  # what the user should know (e.g. a pickle left unread)


def staged_install(
    workspace: Path | None,
    name: str,
    force: bool,
    fill: Callable[[DatasetPaths, str], None],
    *,
    wait: bool = False,
) -> DatasetPaths:
    """``fill(staging, name)`` a staging dataset folder, then move it to ``<workspace>/<name>``,
    holding the dataset's writer lock (``wait``: for another writer to end)."""
    paths = DatasetPaths.open(workspace, check_dataset_name(name))
    with dataset_writer_lock(paths, wait=wait, notify=info):
        _install(paths, force, fill)
    return paths


def _install(paths: DatasetPaths, force: bool, fill: Callable[[DatasetPaths, str], None]) -> None:
    if paths.root.exists() and any(paths.root.iterdir()) and not force:
        raise ToolkitError("already exists: give --force to replace it, or --name", paths.root)
    staging = paths.root.parent / f".{paths.name}.importing"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        fill(DatasetPaths(staging), paths.name)
        if paths.root.exists():
            shutil.rmtree(paths.root)
        staging.rename(paths.root)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def write_selection(
    paths: DatasetPaths,
    dataset: str,
    configurations: list[str],
    folds: list[int],
    postprocessing: Postprocessing,
    source_selection: bytes | None = None,
) -> None:
    """The source's selection (renamed to this dataset), else one that names the model only."""
    if source_selection is not None:
        data = json.loads(source_selection.decode("utf-8")) | {"dataset": dataset}
        selection = Selection.from_dict(data, paths.selection_json)
    else:
        selection = Selection(
            dataset=dataset,
            candidate="+".join(configurations),
            configurations=configurations,
            folds=folds,
            postprocessing=postprocessing,
            mean_dice=math.nan,  # unknown here: the archive carries no evaluation
            mean_dice_postprocessed=math.nan,
            class_dice={},
            class_dice_postprocessed={},
            interval=Interval(math.nan, math.nan),
            rank_first_frequency=0.0,
            complete_cross_validation=False,
        )
    selection.save(paths.selection_json)


def write_member(target: Path, data: bytes) -> None:
    write_bytes(target, data)


def write_record(paths: DatasetPaths, record: dict) -> None:
    write_json(paths.import_record, record)
