"""``toolkit plan DATASET --like SOURCE``: another dataset's plans, moved onto this one.

As nnU-Net v2's ``nnUNetv2_move_plans_between_datasets``: what defines the network and how
the data is sampled for it comes from the source (configurations, target spacings, axis
order, kernels, strides, features, patch and batch sizes, resampling, deep supervision, the
cascade); what is measured on the data comes from this dataset's fingerprint (normalization
and its intensity statistics per channel, labels and so the output layer, channel names,
median spacing and shapes). Unlike nnU-Net, which keeps the source's intensity statistics,
CT normalization here uses this dataset's own. Two datasets share a network only with the
same number of input channels, and a 3D plan does not fit 2D images.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from toolkit.core.fingerprint import Fingerprint
from toolkit.core.plans import Configuration, Plans, dataset_plans
from toolkit.errors import ToolkitError
from toolkit.io.json_files import read_json
from toolkit.nets import nnunet_v2
from toolkit.planning.rules import dataset_normalization, median_resampled_shape
from toolkit.workspace import MODEL_PLANS, DatasetPaths


def transfer_plans(source: Plans, fingerprint: Fingerprint, source_label: str) -> Plans:
    """``source``'s plans for the dataset ``fingerprint`` measured (pure: no disk access)."""
    target = fingerprint.dataset_name
    if len(source.channel_names) != len(fingerprint.channel_names):
        raise ToolkitError(
            f"{source_label} and {target} cannot share a network: {source_label} has "
            f"{len(source.channel_names)} input channel(s) ({_names(source.channel_names)}), "
            f"{target} has {len(fingerprint.channel_names)} ({_names(fingerprint.channel_names)})"
        )
    planned_3d = sorted(n for n, c in source.configurations.items() if c.spatial_dims == 3)
    if fingerprint.is_2d and planned_3d:
        raise ToolkitError(
            f"{source_label} and {target} cannot share a network: {source_label} is planned for "
            f"3D images ({', '.join(planned_3d)}), {target}'s images are 2D"
        )
    if not fingerprint.cases:
        raise ToolkitError("the fingerprint holds no cases")
    normalization = dataset_normalization(fingerprint)
    configurations = {
        name: _transferred(config, fingerprint, source.transpose_forward, normalization)
        for name, config in source.configurations.items()
    }
    spacings = np.asarray(fingerprint.spacings, dtype=np.float64)
    shapes = np.asarray(fingerprint.shapes_after_crop, dtype=np.float64)
    return Plans(
        dataset_name=target,
        channel_names=dict(fingerprint.channel_names),
        labels=dict(fingerprint.labels),
        regions_class_order=fingerprint.regions_class_order,
        transpose_forward=list(source.transpose_forward),
        transpose_backward=list(source.transpose_backward),
        original_median_spacing=[float(v) for v in np.median(spacings, axis=0)],
        original_median_shape=[int(round(v)) for v in np.median(shapes, axis=0)],
        configurations=configurations,
        planner={
            "transferred_from": source_label,
            "source_dataset": source.dataset_name,
            "source_channel_names": dict(source.channel_names),
            "source_labels": dict(source.labels),
            "source_planner": dict(source.planner),
        },
    )


def _transferred(
    config: Configuration, fingerprint: Fingerprint, forward: list[int], normalization: list
) -> Configuration:
    """The source's configuration with this dataset's normalization and median shape."""
    spacing = [0.0] * 3
    for i, axis in enumerate(forward):
        spacing[axis] = config.target_spacing[i]
    median = median_resampled_shape(fingerprint.spacings, fingerprint.shapes_after_crop, spacing)
    return replace(
        config,
        median_shape=[int(round(median[a])) for a in forward],
        normalization=list(normalization),
    )


def _names(channels: dict[str, str]) -> str:
    return ", ".join(channels.values())


def source_plans_file(source: str, workspace: str | Path | None) -> Path:
    """The file ``--like`` reads its plans from (its content keys run-all's plan stage)."""
    path = Path(source).expanduser()
    if path.is_dir() and (path / MODEL_PLANS).is_file():
        return path / MODEL_PLANS
    if path.is_file():
        return path
    return DatasetPaths.open(workspace, source).plans_json


def source_plans(source: str, workspace: str | Path | None) -> tuple[Plans, str]:
    """``--like``'s plans and how to name them: a plans file (ours or nnU-Net v2's, with its
    dataset.json beside it), a folder holding one (a dataset or a model folder), or a dataset
    name in the workspace."""
    path = Path(source).expanduser()
    if path.is_dir() and (path / MODEL_PLANS).is_file():
        path = path / MODEL_PLANS
    if path.is_file():
        return _plans_file(path), str(path)
    return dataset_plans(DatasetPaths.open(workspace, source)), source


def _plans_file(path: Path) -> Plans:
    data = read_json(path, what="plans")
    if "plans_name" not in data or "format_version" in data:
        return Plans.load(path)
    dataset_json = path.parent / nnunet_v2.DATASET_FILE
    if not dataset_json.is_file():
        raise ToolkitError(
            f"is nnU-Net v2 plans: its {nnunet_v2.DATASET_FILE} (channels, labels) must lie beside it",
            path,
        )
    dataset = read_json(dataset_json, what="dataset.json")
    try:
        return nnunet_v2.convert_plans(data, dataset, path)
    except (KeyError, TypeError, ValueError) as exc:
        raise ToolkitError(f"malformed nnU-Net v2 plans ({exc})", path) from None
