"""``toolkit import-model``: a model archive installed as a dataset of a workspace.

The dataset folder gets the layout training leaves (``models/<config>/fold_<k>/``,
``plans.json``, ``raw/dataset.json``) and a ``selection.json``, so that ``toolkit predict
--dataset NAME`` and ``toolkit export-container NAME`` use the model as on the source.
Everything is written into a staging folder beside the dataset and renamed into place: an
interrupted import leaves no half-installed dataset.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from toolkit.core.postprocessing import Postprocessing
from toolkit.core.selection import Interval, Selection
from toolkit.errors import ToolkitError
from toolkit.io.atomic import replace_folder, restore_replaced, write_bytes, write_json
from toolkit.io.lock import dataset_writer_lock
from toolkit.io.staging import staging_folder, sweep_staging
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
    holding the dataset's writer lock (``wait``: for another writer to end).

    The staging folder's name is unique (``.<name>.importing.<host>-<pid>.XXXX``), so imports
    running at once never delete each other's files, and one killed half-way is removed by the
    next import of the dataset (:mod:`toolkit.io.staging`). With ``force`` an existing dataset is replaced by
    renames only (:func:`toolkit.io.atomic.replace_folder`): a kill at any moment leaves one
    complete dataset, the old one or the new one.
    """
    paths = DatasetPaths.open(workspace, check_dataset_name(name))
    with dataset_writer_lock(paths, wait=wait, notify=info):
        _install(paths, force, fill)
    return paths


def _install(paths: DatasetPaths, force: bool, fill: Callable[[DatasetPaths, str], None]) -> None:
    restore_replaced(paths.root)  # a replacement killed half-way, where folders cannot swap
    if paths.root.exists() and any(paths.root.iterdir()) and not force:
        raise ToolkitError("already exists: give --force to replace it, or --name", paths.root)
    prefix = f".{paths.name}.importing."
    sweep_staging(paths.root.parent, prefix)  # of imports of this dataset killed half-way
    staging = staging_folder(paths.root.parent, prefix)
    try:
        fill(DatasetPaths(staging), paths.name)
        replace_folder(staging, paths.root)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def write_selection(
    paths: DatasetPaths,
    dataset: str,
    configurations: list[str],
    folds: list[int],
    postprocessing: Postprocessing,
    source_selection: Selection | None = None,
) -> None:
    """The source's selection (renamed to this dataset), else one that names the model only."""
    if source_selection is not None:
        selection = dataclasses.replace(source_selection, dataset=dataset)
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
