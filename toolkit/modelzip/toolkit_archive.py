"""Installing a toolkit model archive (:mod:`.archive`) into a workspace."""

from __future__ import annotations

import json
from pathlib import Path

from toolkit.core.postprocessing import Postprocessing
from toolkit.errors import ToolkitError
from toolkit.modelzip.archive import (
    DATASET_JSON,
    EXAMPLE,
    MODELS,
    PLANS,
    POSTPROCESSING,
    SELECTION,
    ArchiveReader,
    Manifest,
)
from toolkit.modelzip.install import (
    ImportedModel,
    staged_install,
    write_member,
    write_record,
    write_selection,
)
from toolkit.workspace import DatasetPaths


def install_toolkit_archive(
    reader: ArchiveReader,
    workspace: Path | None,
    name: str | None,
    force: bool,
    *,
    wait: bool = False,
) -> ImportedModel:
    manifest: Manifest = reader.manifest()
    contents = reader.verified(manifest)  # every checksum before anything is written
    postprocessing = Postprocessing.from_dict(
        json.loads(contents[POSTPROCESSING].decode("utf-8")), reader.path
    )

    def fill(paths: DatasetPaths, dataset: str) -> None:
        for member, data in contents.items():
            if member not in (SELECTION, POSTPROCESSING):
                write_member(_destination(paths, member, reader.path), data)
        postprocessing.save(paths.postprocessing_json)
        write_selection(
            paths,
            dataset,
            manifest.configurations,
            manifest.folds,
            postprocessing,
            contents.get(SELECTION),
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


def _destination(paths: DatasetPaths, member: str, source: Path) -> Path:
    """Where a member goes in the dataset folder (names were checked safe by the reader)."""
    if member == PLANS:
        return paths.plans_json
    if member == DATASET_JSON:
        return paths.dataset_json
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
