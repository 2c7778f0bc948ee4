"""``--pretrained SOURCE``: a new training's network starts from another model's weights.

``SOURCE`` is a checkpoint file (ours, ``checkpoint_*.pt``, read with the versioned
:func:`toolkit.core.checkpoint.load_checkpoint`; or nnU-Net v2's, ``checkpoint_*.pth``, renamed
by :mod:`toolkit.nets.nnunet_v2_weights`), a fold folder holding a final checkpoint, or a
model folder (ours, ``models/<config>/``, or nnU-Net v2's), whose ``fold_all`` is taken, else
its first numbered fold (:func:`pretrained_file`).

Every tensor whose name and shape match the new network is copied into it; the others keep
their fresh initialisation (a segmentation head when the label count differs, the first
convolution when the channel count differs), and one line says which
(:meth:`PretrainedMatch.describe`). Only a training's start loads them: a resume restores its
own checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from toolkit.core.checkpoint import KEY_NETWORK, load_checkpoint
from toolkit.core.constants import FOLD_ALL
from toolkit.errors import ToolkitError
from toolkit.nets.nnunet_v2_weights import (
    NNUNET_CHECKPOINT_SUFFIX,
    checkpoint_file_name,
    load_nnunet_checkpoint,
)
from toolkit.workspace import CHECKPOINT_FINAL

FOLD_PREFIX = "fold_"
FINAL_CHECKPOINTS = (CHECKPOINT_FINAL, checkpoint_file_name("final"))
NAMES_SHOWN = 12  # names listed in the line about tensors not loaded


def pretrained_file(source: str | Path) -> Path:
    """The checkpoint file ``source`` names: itself, a fold folder's final checkpoint, or a
    model folder's ``fold_all`` (else first numbered fold) final checkpoint."""
    source = Path(source).expanduser()
    if source.is_file():
        return source
    if not source.is_dir():
        raise ToolkitError("pretrained weights not found", source)
    folds = sorted(
        (p for p in source.glob(f"{FOLD_PREFIX}*") if p.is_dir()),
        key=lambda p: (p.name != f"{FOLD_PREFIX}{FOLD_ALL}", _fold_number(p), p.name),
    )
    for folder in [source, *folds]:
        for name in FINAL_CHECKPOINTS:
            if (folder / name).is_file():
                return folder / name
    raise ToolkitError(
        "holds no final checkpoint: --pretrained takes a checkpoint file, a fold folder or a "
        "model folder (ours or nnU-Net v2's)",
        source,
    )


def _fold_number(path: Path) -> float:
    suffix = path.name[len(FOLD_PREFIX) :]
    return int(suffix) if suffix.isdigit() else float("inf")


def pretrained_weights(path: Path) -> dict[str, torch.Tensor]:
    """The network weights of a checkpoint file, under our U-Net's names; a missing or
    damaged file is a one-line error naming it."""
    if path.suffix == NNUNET_CHECKPOINT_SUFFIX:
        return load_nnunet_checkpoint(path).state_dict
    state = load_checkpoint(path)[KEY_NETWORK]
    if not isinstance(state, Mapping):
        raise ToolkitError(f"its '{KEY_NETWORK}' entry is not a state dict", path)
    return dict(state)


@dataclass(frozen=True)
class PretrainedMatch:
    """Which of the network's tensors came from the source, and why the others did not."""

    loaded: list[str]
    shape_differs: list[str]
    missing: list[str]  # the source has no tensor of that name

    @property
    def total(self) -> int:
        return len(self.loaded) + len(self.shape_differs) + len(self.missing)

    def describe(self, source: Path) -> str:
        skipped = [
            f"{_names(names)} ({why})"
            for names, why in ((self.shape_differs, "shape differs"), (self.missing, "missing"))
            if names
        ]
        return (
            f"pretrained: loaded {len(self.loaded)} of {self.total} tensors from {source}; "
            f"not loaded: {'; '.join(skipped) or 'none'}"
        )


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:NAMES_SHOWN])
    return shown + (f" ... and {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else "")


def load_matching(network: nn.Module, weights: Mapping[str, torch.Tensor]) -> PretrainedMatch:
    """Copy every tensor of ``weights`` whose name and shape match into ``network``."""
    own = network.state_dict()
    loaded, shape_differs, missing = [], [], []
    for name, tensor in own.items():
        if name not in weights:
            missing.append(name)
        elif tuple(weights[name].shape) != tuple(tensor.shape):
            shape_differs.append(name)
        else:
            loaded.append(name)
    with torch.no_grad():
        for name in loaded:
            own[name].copy_(weights[name])
    return PretrainedMatch(loaded, shape_differs, missing)
