"""``toolkit export-model``: a workspace's chosen model into one zip (see :mod:`.archive`)."""

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
from toolkit.io.dataset_json import load_dataset_info, training_cases
from toolkit.modelzip.archive import (
    DATASET_JSON,
    EXAMPLE,
    PLANS,
    POSTPROCESSING,
    SELECTION,
    Manifest,
    Member,
    fold_member,
    model_member,
    write_archive,
)
from toolkit.workspace import CHECKPOINT_FINAL, MODEL_DATASET_JSON, MODEL_PLANS, DatasetPaths


@dataclass(frozen=True, kw_only=True)
class ModelExportOptions:
    """What goes in: default the selection's configurations, folds and postprocessing."""

    configurations: Sequence[str] | None = None
    folds: Sequence[int] | None = None
    example: bool = True  # one training case, so that the receiver can test-run an export


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
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{target.name}.", dir=target.parent) as scratch:
        for config in model_configurations:
            model = paths.model_dir(config)
            for name in (MODEL_PLANS, MODEL_DATASET_JSON):
                source = paths.require(model / name, f"toolkit train {paths.name} {config} FOLD")
                members.append(Member(model_member(config, name), source))
            for fold in folds:
                checkpoint = paths.require(
                    paths.fold_dir(config, fold) / CHECKPOINT_FINAL,
                    f"toolkit train {paths.name} {config} {fold}",
                )
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
        )
        write_archive(target, members, manifest)
    return ModelExport(target, manifest, target.stat().st_size)


def _json_bytes(data: object) -> bytes:
    return (json.dumps(data, indent=2) + "\n").encode("utf-8")
