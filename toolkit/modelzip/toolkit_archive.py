"""Installing a toolkit model archive (:mod:`.archive`) into a workspace.

Every member is streamed into the staging dataset folder with its sha256 checked, then every
JSON member is read by its contract's reader (plans, dataset.json, postprocessing,
selection): a member that does not fit is a one-line error naming it, and the staging folder
goes, leaving the workspace as it was.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

from toolkit.core.plans import Plans
from toolkit.core.postprocessing import Postprocessing
from toolkit.core.selection import Selection
from toolkit.errors import ToolkitError
from toolkit.io.dataset_json import read_dataset_info
from toolkit.modelzip.archive import (
    DATASET_JSON,
    EXAMPLE,
    MODELS,
    PLANS,
    POSTPROCESSING,
    SELECTION,
    ArchiveReader,
    Manifest,
    model_member,
)
from toolkit.modelzip.install import (
    ImportedModel,
    staged_install,
    write_record,
    write_selection,
)
from toolkit.workspace import MODEL_DATASET_JSON, MODEL_PLANS, DatasetPaths


def install_toolkit_archive(
    reader: ArchiveReader,
    workspace: Path | None,
    name: str | None,
    force: bool,
    *,
    wait: bool = False,
) -> ImportedModel:
    manifest: Manifest = reader.manifest()  # checked to name what an install needs
    reader.check_listing(manifest)

    def fill(paths: DatasetPaths, dataset: str) -> None:
        for member, digest in manifest.members.items():
            reader.copy(member, _destination(paths, member, reader.path), digest)
        postprocessing, source_selection = _check_contracts(reader.path, manifest, paths)
        write_selection(
            paths,
            dataset,
            manifest.configurations,
            manifest.folds,
            postprocessing,
            source_selection,
        )
        write_record(
            paths,
            {"archive": str(reader.path.resolve()), "kind": "toolkit"}
            | {k: v for k, v in json.loads(manifest.to_json()).items() if k != "members"},
        )

    paths = staged_install(workspace, name or manifest.dataset, force, fill, wait=wait)
    notes = []
    if manifest.example_case is None:
        notes.append("no example case: export-container needs a training case in raw/imagesTr")
    return ImportedModel(paths, "toolkit", manifest.configurations, manifest.folds, notes)


@contextlib.contextmanager
def _member(archive: Path, member: str) -> Iterator[None]:
    """A contract's one-line error, said of the archive's member rather than the staged file."""
    try:
        yield
    except ToolkitError as exc:
        raise ToolkitError(f"member {member}: {exc.message}", archive) from None


def _check_contracts(
    archive: Path, manifest: Manifest, paths: DatasetPaths
) -> tuple[Postprocessing, Selection | None]:
    """Every JSON member of the staged install through its contract's reader; the
    postprocessing the model applies and the source's selection."""
    with _member(archive, PLANS):
        Plans.load(paths.plans_json)
    with _member(archive, DATASET_JSON):
        read_dataset_info(paths.dataset_json)
    for config in manifest.model_configurations:
        with _member(archive, model_member(config, MODEL_PLANS)):
            Plans.load(paths.model_dir(config) / MODEL_PLANS).configuration(config)
        with _member(archive, model_member(config, MODEL_DATASET_JSON)):
            read_dataset_info(paths.model_dir(config) / MODEL_DATASET_JSON)
    with _member(archive, POSTPROCESSING):
        postprocessing = Postprocessing.load(paths.postprocessing_json)
    selection = None
    if SELECTION in manifest.members:
        with _member(archive, SELECTION):
            selection = Selection.load(paths.selection_json)
            if selection.configurations != manifest.configurations or not set(
                selection.folds
            ) <= set(manifest.folds):
                raise ToolkitError(
                    f"names {selection.configurations} folds {selection.folds}, not the "
                    f"archive's {manifest.configurations} folds {manifest.folds}"
                )
    return postprocessing, selection


def _destination(paths: DatasetPaths, member: str, source: Path) -> Path:
    """Where a member goes in the dataset folder (names were checked safe by the reader)."""
    if member == PLANS:
        return paths.plans_json
    if member == DATASET_JSON:
        return paths.dataset_json
    if member == POSTPROCESSING:
        return paths.postprocessing_json
    if member == SELECTION:
        return paths.selection_json
    folder, _, rest = member.partition("/")
    if folder == MODELS and rest.count("/") in (1, 2):
        return paths.models / rest
    if folder == EXAMPLE and rest.count("/") == 1:
        kind, _, file_name = rest.partition("/")
        if kind == paths.images_tr.name:
            return paths.images_tr / file_name
        if kind == paths.labels_tr.name:
            return paths.labels_tr / file_name
    raise ToolkitError(f"holds a member this toolkit does not know: {member}", source)
