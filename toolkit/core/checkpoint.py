"""The checkpoint format: one ``torch.save`` dict, loadable with ``weights_only=True``.

Keys (spelled once, here): ``network`` is the U-Net's state dict (plain tensors, the
contract with inference); ``configuration`` the configuration's name and ``plans_configuration``
its plan entry; ``epoch`` the number of completed epochs and ``iteration`` the training
iterations already done in the next one (a checkpoint taken mid-epoch); the rest is the
state ``--resume`` needs to continue the exact schedule: optimizer, gradient scaler, random
number generator states (as tensors and plain numbers, no pickled objects), the epoch
history, the pseudo-Dice averages and the losses of a partly done epoch. Training builds
them (:mod:`toolkit.training.checkpoint`); inference and the container export read them here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from toolkit.errors import ToolkitError
from toolkit.io.atomic import write_with

CHECKPOINT_FORMAT = 1

KEY_FORMAT = "format_version"
KEY_NETWORK = "network"
KEY_CONFIGURATION = "configuration"
KEY_PLANS_CONFIGURATION = "plans_configuration"
KEY_MIRROR_AXES = "mirror_axes"  # optional: axes test-time mirroring may use
KEY_EPOCH = "epoch"
KEY_ITERATION = "iteration"
KEY_FINISHED = "finished"
KEY_OPTIMIZER = "optimizer"
KEY_SCALER = "grad_scaler"
KEY_RNG = "rng"
KEY_HISTORY = "history"
KEY_EMA = "ema_pseudo_dice"
KEY_BEST_EMA = "best_ema_pseudo_dice"
KEY_PARTIAL_LOSSES = "partial_train_losses"
KEY_RUN = "run"  # seed, schedule and precision the run was started with


def save_checkpoint(path: Path, checkpoint: dict[str, Any]) -> None:
    """Written to a temporary file and renamed: a kill leaves the old or the new file."""
    write_with(path, lambda tmp: torch.save(checkpoint, tmp))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A toolkit checkpoint of the supported format; anything else is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise ToolkitError("checkpoint not found", path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged or foreign file: name it, whatever torch raised
        first_line = (str(exc).splitlines() or [""])[0][:200]
        raise ToolkitError(
            f"cannot be loaded as a checkpoint ({type(exc).__name__}: {first_line})", path
        ) from None
    if not isinstance(checkpoint, dict) or KEY_NETWORK not in checkpoint:
        raise ToolkitError(f"is not a toolkit checkpoint (no '{KEY_NETWORK}' entry)", path)
    version = checkpoint.get(KEY_FORMAT)
    if version != CHECKPOINT_FORMAT:
        raise ToolkitError(
            f"checkpoint format {version} is not supported (expected {CHECKPOINT_FORMAT})", path
        )
    return checkpoint


def _holds_tensor(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, dict):
        return any(_holds_tensor(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_holds_tensor(v) for v in value)
    return False


def weights_only(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The network's weights and the small metadata beside them, without training state."""
    return {k: v for k, v in checkpoint.items() if k == KEY_NETWORK or not _holds_tensor(v)}


def network_checkpoint(
    network_state: dict[str, torch.Tensor], configuration_name: str
) -> dict[str, Any]:
    """The smallest checkpoint inference loads: the weights and the configuration they are for."""
    return {
        KEY_FORMAT: CHECKPOINT_FORMAT,
        KEY_NETWORK: network_state,
        KEY_CONFIGURATION: configuration_name,
    }
