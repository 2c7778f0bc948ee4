"""The model folder of an algorithm image: the ensemble's plans, dataset.json and each fold's
network, as weights without training state (torch) or as ONNX graphs (a lean runtime)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from toolkit.container.spec import EnsembleSpec
from toolkit.core.checkpoint import load_checkpoint, weights_only
from toolkit.errors import MissingStageError, ToolkitError
from toolkit.inference.runtime import is_onnx_model_dir
from toolkit.io.atomic import atomic_path, write_bytes, write_json
from toolkit.workspace import (
    CHECKPOINT_FINAL,
    MODEL_DATASET_JSON,
    MODEL_PLANS,
    NETWORK_JSON,
    NETWORK_ONNX,
    DatasetPaths,
)


def copy_checkpoint(source: Path, target: Path) -> int:
    checkpoint = load_checkpoint(source)
    with atomic_path(target) as tmp:
        torch.save(weights_only(checkpoint), tmp)
    return target.stat().st_size


def copy_onnx_networks(source: Path, target: Path, folds: list[int | str]) -> int:
    """A model folder's folds as ONNX networks: copied when they are ONNX already (an imported
    ``export-model --format onnx`` archive), else exported from the checkpoints."""
    total = 0
    if is_onnx_model_dir(source):
        for fold in folds:
            for name in (NETWORK_ONNX, NETWORK_JSON):
                path = source / f"fold_{fold}" / name
                if not path.is_file():
                    raise ToolkitError(f"fold {fold} has no {name}", path.parent)
                (target / f"fold_{fold}").mkdir(exist_ok=True)
                shutil.copyfile(path, target / f"fold_{fold}" / name)
                total += path.stat().st_size
        return total
    from toolkit.inference.loading import load_model
    from toolkit.inference.options import ModelOptions
    from toolkit.nets.onnx_export import network_spec, onnx_bytes, require_onnx

    require_onnx()
    model = load_model(source, ModelOptions(folds=list(folds), device="cpu"))
    spec = network_spec(model.plans, model.configuration, model.mirror_axes)
    for fold, network in zip(model.folds, model.networks, strict=True):
        (target / f"fold_{fold}").mkdir(exist_ok=True)
        write_bytes(target / f"fold_{fold}" / NETWORK_ONNX, onnx_bytes(network, spec))
        write_json(target / f"fold_{fold}" / NETWORK_JSON, spec.to_dict())
        total += (target / f"fold_{fold}" / NETWORK_ONNX).stat().st_size
    return total


def copy_models(
    paths: DatasetPaths, ensemble: EnsembleSpec, model_root: Path, runtime: str = "torch"
) -> int:
    """Plans, dataset.json and final checkpoints (ONNX networks for a lean ``runtime``) of the
    ensemble's configurations and folds.

    ``model_root`` gets the workspace's layout (``models/<config>/fold_<k>/``), which is what
    the predictor expects, a cascade's first stage beside its second.
    """
    bundle = DatasetPaths(model_root)
    total = 0
    for config in ensemble.model_configurations:
        source = paths.model_dir(config)
        target = bundle.model_dir(config)
        target.mkdir(parents=True, exist_ok=True)
        for name in (MODEL_PLANS, MODEL_DATASET_JSON):
            if not (source / name).is_file():
                raise MissingStageError(source / name, f"toolkit train {paths.name} {config}")
            shutil.copyfile(source / name, target / name)
            total += (target / name).stat().st_size
        if runtime != "torch":
            total += copy_onnx_networks(source, target, list(ensemble.folds))
            continue
        if is_onnx_model_dir(source):
            raise ToolkitError(
                "holds ONNX networks (an `export-model --format onnx` archive): give "
                "--runtime openvino or --runtime onnxruntime",
                source,
            )
        for fold in ensemble.folds:
            checkpoint = paths.fold_dir(config, fold) / CHECKPOINT_FINAL
            if not checkpoint.is_file():
                raise MissingStageError(checkpoint, f"toolkit train {paths.name} {config} {fold}")
            bundle.fold_dir(config, fold).mkdir(exist_ok=True)
            total += copy_checkpoint(checkpoint, bundle.fold_dir(config, fold) / CHECKPOINT_FINAL)
    return total
