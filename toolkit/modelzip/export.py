"""``toolkit export-model``: a workspace's chosen model into one zip (see :mod:`.archive`).

``network_format`` ``torch`` stores each fold's weights (a slim checkpoint); ``onnx`` stores
each fold's inference graph and its description instead (:mod:`.onnx_export`), which the
torch-free predictor and the lean container image run.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from toolkit import __version__
from toolkit.core.checkpoint import (
    KEY_CONFIGURATION,
    KEY_MIRROR_AXES,
    KEY_NETWORK,
    load_checkpoint,
    network_checkpoint,
)
from toolkit.core.plans import Plans
from toolkit.core.postprocessing import Postprocessing
from toolkit.core.selection import Selection
from toolkit.errors import MissingStageError, ToolkitError
from toolkit.inference.loading import LoadedModel
from toolkit.io.atomic import to_jsonable
from toolkit.io.dataset_json import load_dataset_info, training_cases
from toolkit.modelzip.archive import (
    DATASET_JSON,
    EXAMPLE,
    NETWORK_FORMATS,
    PLANS,
    POSTPROCESSING,
    SELECTION,
    Manifest,
    Member,
    fold_member,
    model_member,
    write_archive,
)
from toolkit.nets.onnx_export import network_spec, onnx_bytes, require_onnx
from toolkit.workspace import (
    CHECKPOINT_FINAL,
    MODEL_DATASET_JSON,
    MODEL_PLANS,
    NETWORK_JSON,
    NETWORK_ONNX,
    DatasetPaths,
)


@dataclass(frozen=True, kw_only=True)
class ModelExportOptions:
    """What goes in: default the selection's configurations, folds and postprocessing."""

    configurations: Sequence[str] | None = None
    folds: Sequence[int] | None = None
    example: bool = True  # one training case, so that the receiver can test-run an export
    network_format: str = NETWORK_FORMATS[0]  # torch (checkpoints) or onnx (graphs)

    def __post_init__(self) -> None:
        if self.network_format not in NETWORK_FORMATS:
            raise ToolkitError(
                f"--format must be one of {', '.join(NETWORK_FORMATS)}, not {self.network_format!r}"
            )


@dataclass(frozen=True)
class ModelExport:
    path: Path
    manifest: Manifest
    size_bytes: int


def slim_checkpoint(path: Path, target: Path) -> Path:
    """A fold's checkpoint as network weights only (no optimizer, scaler, RNG or history),
    saved to ``target``."""
    checkpoint = load_checkpoint(path)
    config = checkpoint.get(KEY_CONFIGURATION)
    if not isinstance(config, str):
        raise ToolkitError("checkpoint does not name its configuration", path)
    slim = network_checkpoint(checkpoint[KEY_NETWORK], config)
    if checkpoint.get(KEY_MIRROR_AXES) is not None:
        slim[KEY_MIRROR_AXES] = [int(a) for a in checkpoint[KEY_MIRROR_AXES]]
    torch.save(slim, target)
    return target


def _choice(
    paths: DatasetPaths, options: ModelExportOptions
) -> tuple[list[str], list[int], Postprocessing, Selection | None]:
    selection = Selection.load(paths.selection_json) if paths.selection_json.is_file() else None
    if options.configurations:
        configurations = list(options.configurations)
    elif selection is not None:
        configurations = list(selection.configurations)
    else:
        raise MissingStageError(
            paths.selection_json, f"toolkit select {paths.name}` or give `--config"
        )
    same = selection is not None and configurations == list(selection.configurations)
    if options.folds:
        folds = list(options.folds)
    elif same:
        folds = list(selection.folds)  # type: ignore[union-attr]
    else:
        folds = sorted(
            int(d.name.removeprefix("fold_"))
            for d in paths.model_dir(configurations[0]).glob("fold_*")
            if d.name.removeprefix("fold_").isdigit() and (d / CHECKPOINT_FINAL).is_file()
        )
        if not folds:
            raise MissingStageError(
                paths.fold_dir(configurations[0], 0) / CHECKPOINT_FINAL,
                f"toolkit train {paths.name} {configurations[0]} FOLD",
            )
    # the selection's postprocessing goes with its configurations (whatever the folds); its
    # evidence (selection.json) with its configurations and folds only
    postprocessing = selection.postprocessing if same else Postprocessing()  # type: ignore[union-attr]
    evidence = selection if same and folds == list(selection.folds) else None  # type: ignore[union-attr]
    return configurations, folds, postprocessing, evidence


def _model_configurations(paths: DatasetPaths, configurations: list[str]) -> list[str]:
    """The configurations and, before each cascade, its first stage."""
    ordered: list[str] = []
    for config in configurations:
        plans_path = paths.model_dir(config) / MODEL_PLANS
        if not plans_path.is_file():
            raise MissingStageError(plans_path, f"toolkit train {paths.name} {config} FOLD")
        previous = Plans.load(plans_path).configuration(config).previous_stage
        for name in (previous, config):
            if name and name not in ordered:
                ordered.append(name)
    return ordered


def _example_members(paths: DatasetPaths) -> tuple[str | None, list[Member]]:
    cases = training_cases(paths, load_dataset_info(paths))
    if not cases:
        return None, []
    case = cases[0]
    files = [*case.images, *([case.label] if case.label and case.label.is_file() else [])]
    members = [Member(f"{EXAMPLE}/{f.parent.name}/{f.name}", f) for f in files]
    return case.case, members


def export_model(paths: DatasetPaths, target: Path, options: ModelExportOptions) -> ModelExport:
    """Write ``target`` (atomically): plans, dataset.json, slim weights, postprocessing, manifest.

    Members stream from their files into the zip; the slim weights are saved one fold at a
    time into a temporary folder beside the target first, so no weights are held in memory
    together."""
    paths.require_raw()
    target = Path(target)
    configurations, folds, postprocessing, selection = _choice(paths, options)
    model_configurations = _model_configurations(paths, configurations)
    members: list[Member] = []
    first = paths.model_dir(configurations[0])
    plans_source = paths.plans_json if paths.plans_json.is_file() else first / MODEL_PLANS
    members.append(Member(PLANS, plans_source))
    members.append(Member(DATASET_JSON, first / MODEL_DATASET_JSON))
    members.append(Member(POSTPROCESSING, _json_bytes(postprocessing.to_dict())))
    if selection is not None:
        members.append(Member(SELECTION, paths.selection_json))
    if options.network_format == "onnx":
        require_onnx()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{target.name}.", dir=target.parent) as scratch:
        for config in model_configurations:
            model = paths.model_dir(config)
            for name in (MODEL_PLANS, MODEL_DATASET_JSON):
                source = paths.require(model / name, f"toolkit train {paths.name} {config} FOLD")
                members.append(Member(model_member(config, name), source))
            checkpoints = [
                paths.require(
                    paths.fold_dir(config, fold) / CHECKPOINT_FINAL,
                    f"toolkit train {paths.name} {config} {fold}",
                )
                for fold in folds  # every fold's checkpoint is there before anything is written
            ]
            if options.network_format == "onnx":
                members += onnx_members(load_for_export(model, folds), Path(scratch))
                continue
            for fold, checkpoint in zip(folds, checkpoints, strict=True):
                slim = slim_checkpoint(checkpoint, Path(scratch) / f"{len(members)}.pt")
                members.append(Member(fold_member(config, fold, CHECKPOINT_FINAL), slim))
        example_case, example = _example_members(paths) if options.example else (None, [])
        members += example
        manifest = Manifest(
            dataset=paths.name,
            configurations=configurations,
            model_configurations=model_configurations,
            folds=folds,
            toolkit_version=__version__,
            torch_version=str(torch.__version__),
            example_case=example_case,
            network_format=options.network_format,
        )
        write_archive(target, members, manifest)
    return ModelExport(target, manifest, target.stat().st_size)


def onnx_members(model: LoadedModel, scratch: Path) -> list[Member]:
    """A loaded model's folds as ``fold_<k>/network.onnx`` and ``network.json`` members; each
    graph is written to ``scratch`` as it is made, so no two are in memory together."""
    spec = network_spec(model.plans, model.configuration, model.mirror_axes)
    config = model.configuration.name
    members = []
    for fold, network in zip(model.folds, model.networks, strict=True):
        graph = Path(scratch) / f"{config}.{fold}.onnx"
        graph.write_bytes(onnx_bytes(network, spec))
        members.append(Member(fold_member(config, fold, NETWORK_ONNX), graph))
        members.append(Member(fold_member(config, fold, NETWORK_JSON), _json_bytes(spec.to_dict())))
    return members


def load_for_export(model_dir: Path, folds: Sequence[int | str] | None) -> LoadedModel:
    """A model folder's networks (ours or nnU-Net v2's), loaded as ``toolkit predict`` loads them."""
    from toolkit.inference.loading import load_model
    from toolkit.inference.options import ModelOptions

    return load_model(
        model_dir, ModelOptions(folds=None if folds is None else list(folds), device="cpu")
    )


def export_model_folder(
    model_dir: Path, target: Path, folds: Sequence[int] | None = None
) -> ModelExport:
    """A model folder as ``toolkit predict --model`` reads it (ours, or one nnU-Net v2 trained)
    as an archive of ONNX networks: its configuration and, for a cascade, its first stage from
    the folder beside it; no postprocessing (the folder holds none), no example case."""
    require_onnx()
    model = load_for_export(Path(model_dir), folds)
    if not all(f.isdigit() for f in model.folds):
        raise ToolkitError(
            f"an archive holds numbered folds only, not {', '.join(model.folds)}: give --folds",
            model_dir,
        )
    stages = [model] if model.first_stage is None else [model.first_stage, model]
    target = Path(target)
    dataset_json = paths_in(model.source, MODEL_DATASET_JSON).read_bytes()
    plans = _json_bytes(model.plans.to_dict())
    members = [
        Member(PLANS, plans),
        Member(DATASET_JSON, dataset_json),
        Member(POSTPROCESSING, _json_bytes(Postprocessing().to_dict())),
    ]
    manifest = Manifest(
        dataset=model.plans.dataset_name,
        configurations=[model.configuration.name],
        model_configurations=[s.configuration.name for s in stages],
        folds=[int(f) for f in model.folds],
        toolkit_version=__version__,
        torch_version=str(torch.__version__),
        network_format="onnx",
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{target.name}.", dir=target.parent) as scratch:
        for stage in stages:
            config = stage.configuration.name
            members.append(
                Member(model_member(config, MODEL_PLANS), _json_bytes(stage.plans.to_dict()))
            )
            members.append(Member(model_member(config, MODEL_DATASET_JSON), dataset_json))
            members += onnx_members(stage, Path(scratch))
        write_archive(target, members, manifest)
    return ModelExport(target, manifest, target.stat().st_size)


def paths_in(folder: Path, name: str) -> Path:
    path = Path(folder) / name
    if not path.is_file():
        raise ToolkitError(f"has no {name}", folder)
    return path


def _json_bytes(data: object) -> bytes:
    return (json.dumps(to_jsonable(data), indent=2) + "\n").encode("utf-8")
