"""Installing an archive of ``nnUNetv2_export_model_to_zip`` into a workspace.

Its layout: ``<DatasetXXX_Name>/<Trainer>__<Plans>__<config>/`` with ``plans.json``,
``dataset.json`` and ``fold_<k>/checkpoint_final.pth`` (and files the toolkit does not
need: logs, progress plots, ``crossval_results_*/postprocessing.pkl``). Each model folder is
converted into ours: its plans through :mod:`toolkit.nets.nnunet_v2`, its weights renamed
(checkpoints load with ``weights_only=True``), so that the dataset predicts and exports like
one the toolkit trained. Pickles are never unpickled: ``postprocessing.pkl`` is left out
and the import says so.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

from toolkit.core.checkpoint import KEY_MIRROR_AXES, network_checkpoint
from toolkit.core.plans import Plans
from toolkit.core.postprocessing import Postprocessing
from toolkit.errors import ToolkitError
from toolkit.io.atomic import write_with
from toolkit.io.confine import plain_name
from toolkit.io.dataset_json import read_dataset_info
from toolkit.modelzip.archive import ArchiveReader, check_member_name
from toolkit.modelzip.install import (
    ImportedModel,
    staged_install,
    write_member,
    write_record,
    write_selection,
)
from toolkit.modelzip.nnunet_postprocessing import convert_postprocessing
from toolkit.nets import nnunet_v2, nnunet_v2_weights
from toolkit.nets.unet import build_network
from toolkit.workspace import CHECKPOINT_FINAL, MODEL_DATASET_JSON, MODEL_PLANS, DatasetPaths

NNUNET_CHECKPOINT = "checkpoint_final.pth"
_FOLD = re.compile(
    r"^(?P<model>(?:[^/]+/)*?(?P<folder>[^/]+__[^/]+__(?P<config>[^/]+)))/fold_(?P<fold>\d+|all)/"
    + re.escape(NNUNET_CHECKPOINT)
    + "$"
)
_DATASET_FOLDER = re.compile(r"^Dataset\d{3}_[A-Za-z0-9_.-]+$")


@dataclass
class _ModelFolder:
    member_prefix: str  # "Dataset004_Hippocampus/nnUNetTrainer__nnUNetPlans__3d_fullres"
    configuration: str
    folds: list[int]
    fold_all: bool  # a model trained on every case (left out: the toolkit's folds are numbers)


def nnunet_models(reader: ArchiveReader) -> list[_ModelFolder]:
    """The model folders an nnU-Net v2 export holds (empty: not such an archive)."""
    folds: dict[tuple[str, str], list[str]] = defaultdict(list)
    for name in reader.names:
        match = _FOLD.match(name)
        if match:
            # folder names from the archive become folders here: confined first
            check_member_name(name, reader.path)
            plain_name(match["config"], what=f"{name}: the configuration", source=reader.path)
            folds[(match["model"], match["config"])].append(match["fold"])
    return [
        _ModelFolder(prefix, config, sorted(int(f) for f in found if f != "all"), "all" in found)
        for (prefix, config), found in folds.items()
    ]


def _dataset_name(models: list[_ModelFolder]) -> str | None:
    for model in models:
        for part in model.member_prefix.split("/")[:-1]:
            if _DATASET_FOLDER.match(part):
                return part
    return None


def install_nnunet_archive(
    reader: ArchiveReader,
    workspace: Path | None,
    name: str | None,
    force: bool,
    *,
    wait: bool = False,
) -> ImportedModel:
    models = nnunet_models(reader)
    by_config: dict[str, list[str]] = defaultdict(list)
    for model in models:
        by_config[model.configuration].append(model.member_prefix)
    doubled = {c: p for c, p in by_config.items() if len(p) > 1}
    if doubled:
        config, prefixes = next(iter(doubled.items()))
        raise ToolkitError(
            f"holds several models for {config} ({', '.join(prefixes)}): import one archive per "
            "trainer and plans",
            reader.path,
        )
    name = name or _dataset_name(models)
    if not name:
        raise ToolkitError("names no DatasetXXX_Name folder: give --name", reader.path)
    folds = sorted(set.intersection(*(set(m.folds) for m in models)))
    if not folds:
        fold_all = " (fold_all is not one: the toolkit's folds are numbered)"
        raise ToolkitError(
            f"its model folders share no fold{fold_all if any(m.fold_all for m in models) else ''}",
            reader.path,
        )
    notes = [f"{m.member_prefix}/fold_all left out" for m in models if m.fold_all]
    notes += [
        f"{n} left out: a pickle, never unpickled" for n in reader.names if n.endswith(".pkl")
    ]

    def fill(paths: DatasetPaths, dataset: str) -> None:
        first_plans = None
        for model in models:
            plans = _install_model(reader, model, folds, paths, dataset)
            first_plans = first_plans or plans
        assert first_plans is not None
        first_plans.save(paths.plans_json)
        member = f"{models[0].member_prefix}/{nnunet_v2.DATASET_FILE}"
        reader.copy(member, paths.dataset_json)
        try:
            read_dataset_info(paths.dataset_json)  # a dataset.json the toolkit reads
        except ToolkitError as exc:
            raise ToolkitError(f"member {member}: {exc.message}", reader.path) from None
        predicting = _predicting_configurations(models, first_plans)
        postprocessing = Postprocessing()
        if len(predicting) == 1:
            (chosen,) = [m for m in models if m.configuration == predicting[0]]
            postprocessing = _postprocessing(reader, chosen, folds, first_plans, notes)
            write_selection(paths, dataset, predicting, folds, postprocessing)
        postprocessing.save(paths.postprocessing_json)
        write_record(
            paths,
            {
                "archive": str(reader.path.resolve()),
                "kind": "nnU-Net v2",
                "model_folders": [m.member_prefix for m in models],
                "configurations": [m.configuration for m in models],
                "folds": folds,
                "notes": notes,
            },
        )

    paths = staged_install(workspace, name, force, fill, wait=wait)
    configurations = [m.configuration for m in models]
    if not paths.selection_json.is_file():
        notes.append(
            f"several configurations ({', '.join(configurations)}): choose with "
            f"`predict --dataset {paths.name} --config C`"
        )
    return ImportedModel(paths, "nnU-Net v2", configurations, folds, notes)


def _postprocessing(
    reader: ArchiveReader, model: _ModelFolder, folds: list[int], plans: Plans, notes: list[str]
) -> Postprocessing:
    """The model's cross-validation postprocessing for these folds, from its JSON (never the
    pickle); none when absent or not understood (a note says so)."""
    member = f"{model.member_prefix}/crossval_results_folds_{'_'.join(map(str, folds))}/postprocessing.json"
    if member not in reader.names:
        notes.append(f"no {member}: no postprocessing (give `predict --postprocess FILE`)")
        return Postprocessing()
    try:
        data = json.loads(reader.read(member).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        data = None
    labels = plans.label_model()
    converted = convert_postprocessing(
        data,
        labels.foreground_values,
        [t.values for t in labels.targets] if labels.has_regions else None,
    )
    if converted is None:
        notes.append(f"{member} not understood (regions or other steps): no postprocessing")
        return Postprocessing()
    notes.append(f"postprocessing from {member}: {converted.to_dict()}")
    return converted


def _predicting_configurations(models: list[_ModelFolder], plans: Plans) -> list[str]:
    """The configurations that predict: all but a cascade's first stage."""
    names = [m.configuration for m in models]
    first_stages = {
        c.previous_stage for n, c in plans.configurations.items() if n in names and c.previous_stage
    }
    return [n for n in names if n not in first_stages]


def _install_model(
    reader: ArchiveReader, model: _ModelFolder, folds: list[int], paths: DatasetPaths, dataset: str
) -> Plans:
    """One nnU-Net model folder as ours: converted plans, dataset.json, weights per fold."""
    with tempfile.TemporaryDirectory(prefix="toolkit-nnunet-") as tmp:
        folder = Path(tmp)
        for file_name in (nnunet_v2.PLANS_FILE, nnunet_v2.DATASET_FILE):
            member = check_member_name(f"{model.member_prefix}/{file_name}", reader.path)
            reader.copy(member, folder / file_name)
        plans = nnunet_v2.load_nnunet_plans(folder)
        if model.configuration not in plans.configurations:
            reason = plans.planner.get("not_converted", {}).get(model.configuration)
            raise ToolkitError(
                f"{model.member_prefix}: configuration {model.configuration} cannot be used: "
                f"{reason or 'not in its plans'}",
                reader.path,
            )
        configuration = plans.configuration(model.configuration)
        target = paths.model_dir(model.configuration)
        plans.dataset_name = dataset
        plans.save(target / MODEL_PLANS)
        write_member(target / MODEL_DATASET_JSON, (folder / nnunet_v2.DATASET_FILE).read_bytes())
        for fold in folds:
            member = f"{model.member_prefix}/fold_{fold}/{NNUNET_CHECKPOINT}"
            path = folder / f"fold_{fold}.pth"
            reader.copy(check_member_name(member, reader.path), path)
            checkpoint = nnunet_v2_weights.load_nnunet_checkpoint(path)
            network = build_network(plans, configuration, deep_supervision=False)
            try:
                network.load_state_dict(checkpoint.state_dict, strict=True)
            except RuntimeError as exc:
                detail = " ".join(str(exc).split())[:200]
                raise ToolkitError(
                    f"{member}: weights do not fit its plans ({detail})", reader.path
                ) from None
            ours = network_checkpoint(checkpoint.state_dict, model.configuration)
            # nnU-Net counts mirroring axes of the network input; ours of the (z, y, x) volume
            offset = 1 if configuration.spatial_dims == 2 else 0
            axes = checkpoint.mirror_axes or ()
            ours[KEY_MIRROR_AXES] = [a + offset for a in axes]
            write_with(
                paths.fold_dir(model.configuration, fold) / CHECKPOINT_FINAL,
                lambda tmp, ours=ours: torch.save(ours, tmp),
            )
            path.unlink()  # one fold's weights on disk at a time
        return plans
