"""``toolkit export-model`` and ``toolkit import-model``: a trained model as one file.

Export: the selection's (or the given) configurations and folds of a workspace dataset, as
network weights only (or ONNX graphs, ``--format onnx``; also of a model folder that ``predict
--model`` reads, nnU-Net v2's included), with plans, dataset.json, postprocessing, one example case and a
manifest of sha256 checksums (:mod:`toolkit.modelzip.archive`). Import: such an archive, or
one written by ``nnUNetv2_export_model_to_zip`` (converted to the toolkit's model folders),
installed as a workspace dataset that ``toolkit predict --dataset NAME`` and ``toolkit
export-container NAME`` use. A damaged or foreign archive is a one-line error naming it.
"""

from __future__ import annotations

from pathlib import Path

from toolkit.errors import ToolkitError
from toolkit.modelzip.archive import MANIFEST, ArchiveReader
from toolkit.modelzip.export import (
    ModelExport,
    ModelExportOptions,
    export_model,
    export_model_folder,
)
from toolkit.modelzip.install import ImportedModel
from toolkit.modelzip.nnunet_archive import install_nnunet_archive, nnunet_models
from toolkit.modelzip.toolkit_archive import install_toolkit_archive

__all__ = [
    "ImportedModel",
    "ModelExport",
    "ModelExportOptions",
    "export_model",
    "export_model_folder",
    "import_model",
]


def import_model(
    archive: Path,
    workspace: Path | None = None,
    name: str | None = None,
    force: bool = False,
    *,
    wait: bool = False,
) -> ImportedModel:
    """Install ``archive`` as the dataset ``name`` (default: the archive's) of the workspace,
    holding that dataset's writer lock (``wait``: for another writer to end)."""
    with ArchiveReader(Path(archive)) as reader:
        if MANIFEST in reader.names:
            return install_toolkit_archive(reader, workspace, name, force, wait=wait)
        if nnunet_models(reader):
            return install_nnunet_archive(reader, workspace, name, force, wait=wait)
        raise ToolkitError(
            f"is not a model archive: no {MANIFEST} (toolkit export-model) and no "
            "Trainer__Plans__config/fold_K/checkpoint_final.pth (nnUNetv2_export_model_to_zip)",
            reader.path,
        )
