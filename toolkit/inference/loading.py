"""A model folder -> its plans and networks (one per fold), ready for a predictor.

A model folder is either ours (``models/<config>/`` with ``plans.json``, ``dataset.json`` and
``fold_k/checkpoint_final.pt``, read with :func:`toolkit.core.checkpoint.load_checkpoint`) or
one trained by nnU-Net v2 (detected by its files; see :mod:`toolkit.nets.nnunet_v2`). Nothing
outside the folder is read, except for a cascade the first stage's folder beside it, which is
loaded with the same :class:`~toolkit.inference.options.ModelOptions`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from toolkit.core.checkpoint import KEY_CONFIGURATION, KEY_MIRROR_AXES, KEY_NETWORK, load_checkpoint
from toolkit.core.plans import Configuration, Plans
from toolkit.errors import ToolkitError
from toolkit.inference.folds import FOLD_PREFIX
from toolkit.inference.folds import fold_dirs as _fold_dirs
from toolkit.inference.options import ModelOptions
from toolkit.nets import nnunet_v2, nnunet_v2_weights
from toolkit.nets.unet import build_network
from toolkit.workspace import (
    CHECKPOINT_BEST,
    CHECKPOINT_FINAL,
    CHECKPOINT_LATEST,
    MODEL_PLANS,
    DatasetPaths,
)

CHECKPOINTS = {"final": CHECKPOINT_FINAL, "best": CHECKPOINT_BEST, "latest": CHECKPOINT_LATEST}


@dataclass(frozen=True)
class LoadedModel:
    """A model folder's plans, configuration and networks (evaluation mode not yet set)."""

    plans: Plans
    configuration: Configuration
    networks: list[nn.Module]  # one per fold, in fold order
    # axes of the preprocessed (z, y, x) volume to mirror; None: the checkpoint names none
    mirror_axes: tuple[int, ...] | None
    source: Path  # the model folder
    first_stage: LoadedModel | None  # a cascade's first stage, from the folder beside it
    folds: tuple[str, ...] = ()  # the fold of each network: ``fold_<f>``'s ``f``


def load_model(model_dir: str | Path, options: ModelOptions) -> LoadedModel:
    """Load a model folder (ours or nnU-Net v2's) with ``options.folds`` (default: every fold
    present) and ``options.checkpoint``.

    For a cascade configuration, the first stage's model folder beside it is loaded too,
    with the same options.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ToolkitError("model folder not found", model_dir)
    return _load(model_dir, options)


def _load(model_dir: Path, options: ModelOptions) -> LoadedModel:
    if nnunet_v2.is_nnunet_v2_model_dir(model_dir):
        return _load_nnunet_v2(model_dir, options)
    return _load_toolkit(model_dir, options)


def _load_toolkit(model_dir: Path, options: ModelOptions) -> LoadedModel:
    plans_path = model_dir / MODEL_PLANS
    if not plans_path.is_file():
        raise ToolkitError(
            "is not a model folder (no plans.json; expected models/<config>/ of a trained dataset or an nnU-Net v2 model folder)",
            model_dir,
        )
    plans = Plans.load(plans_path)
    file_name = _checkpoint_name(options.checkpoint)
    fold_dirs = _fold_dirs(model_dir, options.folds, file_name)
    states, configuration_name, mirror_axes = [], None, None
    for fold_dir in fold_dirs:
        path = fold_dir / file_name
        ckpt = load_checkpoint(path)
        name = ckpt.get(KEY_CONFIGURATION)
        if configuration_name is None:
            configuration_name = name
            mirror_axes = ckpt.get(KEY_MIRROR_AXES)
        elif name != configuration_name:
            raise ToolkitError(
                f"holds configuration {name!r}, other folds {configuration_name!r}", path
            )
        states.append((path, ckpt[KEY_NETWORK]))
    if not isinstance(configuration_name, str):
        raise ToolkitError("checkpoint does not name its configuration", fold_dirs[0] / file_name)
    configuration = plans.configuration(configuration_name)
    networks = [_load_network(plans, configuration, state, path) for path, state in states]
    first_stage = None
    if configuration.previous_stage:
        # our layout: models/<config>/, the first stage beside it
        first_stage_dir = DatasetPaths(model_dir.parent.parent).model_dir(
            configuration.previous_stage
        )
        first_stage = _load_first_stage(first_stage_dir, configuration, options)
    return LoadedModel(
        plans,
        configuration,
        networks,
        mirror_axes=None if mirror_axes is None else tuple(int(a) for a in mirror_axes),
        source=model_dir,
        first_stage=first_stage,
        folds=tuple(d.name.removeprefix(FOLD_PREFIX) for d in fold_dirs),
    )


def _load_nnunet_v2(model_dir: Path, options: ModelOptions) -> LoadedModel:
    plans = nnunet_v2.load_nnunet_plans(model_dir)
    file_name = nnunet_v2_weights.checkpoint_file_name(options.checkpoint)
    fold_dirs = _fold_dirs(model_dir, options.folds, file_name)
    checkpoints = [nnunet_v2_weights.load_nnunet_checkpoint(d / file_name) for d in fold_dirs]
    names = {c.configuration for c in checkpoints}
    if len(names) != 1:
        raise ToolkitError(f"folds hold different configurations: {sorted(names)}", model_dir)
    name = names.pop()
    if name not in plans.configurations:
        reason = plans.planner.get("not_converted", {}).get(name)
        raise ToolkitError(
            f"configuration {name!r} cannot be used: {reason or 'not in the plans'}",
            model_dir / nnunet_v2.PLANS_FILE,
        )
    configuration = plans.configuration(name)
    networks = [
        _load_network(plans, configuration, c.state_dict, d / file_name)
        for c, d in zip(checkpoints, fold_dirs, strict=True)
    ]
    axes = checkpoints[0].mirror_axes
    if axes is None:
        mirror_axes: tuple[int, ...] = ()
    else:
        # nnU-Net counts axes of the network input; a 2D network's are the volume's last two
        offset = 1 if configuration.spatial_dims == 2 else 0
        mirror_axes = tuple(a + offset for a in axes)
    first_stage = None
    if configuration.previous_stage:
        first_stage_dir = nnunet_v2.sibling_model_dir(
            model_dir,
            checkpoints[0].trainer_name,
            str(plans.planner.get("plans_name")),
            configuration.previous_stage,
        )
        first_stage = _load_first_stage(first_stage_dir, configuration, options)
    return LoadedModel(
        plans,
        configuration,
        networks,
        mirror_axes=mirror_axes,
        source=model_dir,
        first_stage=first_stage,
        folds=tuple(d.name.removeprefix(FOLD_PREFIX) for d in fold_dirs),
    )


def _load_first_stage(
    first_stage_dir: Path, configuration: Configuration, options: ModelOptions
) -> LoadedModel:
    if not first_stage_dir.is_dir():
        raise ToolkitError(
            f"{configuration.name} is a cascade: its first stage {configuration.previous_stage} must be trained and lie beside it",
            first_stage_dir,
        )
    return _load(first_stage_dir, options)


def _checkpoint_name(checkpoint: str) -> str:
    """``final``, ``best`` or ``latest`` -> our checkpoint's file name; a ``*.pt`` name as is."""
    if checkpoint in CHECKPOINTS:
        return CHECKPOINTS[checkpoint]
    if checkpoint.endswith(".pt"):
        return checkpoint
    raise ToolkitError(f"--checkpoint must be one of {', '.join(CHECKPOINTS)}, not {checkpoint!r}")


def _load_network(plans: Plans, configuration: Configuration, state: dict, path: Path) -> nn.Module:
    network = build_network(plans, configuration, deep_supervision=False)
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise ToolkitError(
            f"weights do not fit the planned {configuration.name} network ({detail})", path
        ) from None
    return network
