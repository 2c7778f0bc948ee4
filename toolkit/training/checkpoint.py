"""Training's side of a checkpoint: the state ``--resume`` needs, built and read back.

The format (keys, versioned save and load) is :mod:`toolkit.core.checkpoint`'s.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from toolkit.core.checkpoint import (
    CHECKPOINT_FORMAT,
    KEY_BEST_EMA,
    KEY_CONFIGURATION,
    KEY_EMA,
    KEY_EPOCH,
    KEY_FINISHED,
    KEY_FORMAT,
    KEY_HISTORY,
    KEY_ITERATION,
    KEY_NETWORK,
    KEY_OPTIMIZER,
    KEY_PARTIAL_LOSSES,
    KEY_PLANS_CONFIGURATION,
    KEY_RNG,
    KEY_RUN,
    KEY_SCALER,
)


@dataclass
class TrainingState:
    """Everything besides the weights and the optimiser that a resumed run needs."""

    epoch: int = 0  # completed epochs
    iteration: int = 0  # training iterations done in epoch ``epoch`` (mid-epoch checkpoint)
    partial_train_losses: list[float] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    ema_pseudo_dice: float | None = None
    best_ema_pseudo_dice: float | None = None
    finished: bool = False


def rng_state() -> dict[str, Any]:
    """Global generator states as tensors and plain numbers."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def build_checkpoint(
    network_state: dict[str, torch.Tensor],
    configuration_name: str,
    plans_configuration: dict[str, Any],
    optimizer_state: dict[str, Any],
    scaler_state: dict[str, Any] | None,
    state: TrainingState,
    run: dict[str, Any],
) -> dict[str, Any]:
    return {
        KEY_FORMAT: CHECKPOINT_FORMAT,
        KEY_NETWORK: {k: v.detach().cpu().clone() for k, v in network_state.items()},
        KEY_CONFIGURATION: configuration_name,
        KEY_PLANS_CONFIGURATION: plans_configuration,
        KEY_EPOCH: state.epoch,
        KEY_ITERATION: state.iteration,
        KEY_FINISHED: state.finished,
        KEY_OPTIMIZER: optimizer_state,
        KEY_SCALER: scaler_state,
        KEY_RNG: rng_state(),
        KEY_HISTORY: state.history,
        KEY_EMA: state.ema_pseudo_dice,
        KEY_BEST_EMA: state.best_ema_pseudo_dice,
        KEY_PARTIAL_LOSSES: list(state.partial_train_losses),
        KEY_RUN: run,
    }


def training_state(checkpoint: dict[str, Any]) -> TrainingState:
    return TrainingState(
        epoch=int(checkpoint[KEY_EPOCH]),
        iteration=int(checkpoint.get(KEY_ITERATION, 0)),
        partial_train_losses=[float(v) for v in checkpoint.get(KEY_PARTIAL_LOSSES, [])],
        history=list(checkpoint.get(KEY_HISTORY, [])),
        ema_pseudo_dice=checkpoint.get(KEY_EMA),
        best_ema_pseudo_dice=checkpoint.get(KEY_BEST_EMA),
        finished=bool(checkpoint.get(KEY_FINISHED, False)),
    )


# fields the plans gained later, left out at their defaults: a configuration planned before
# they existed keeps its dict, so run-all's training keys stay and nothing trains again
_LATER_FIELDS = {"planner": "default"}
_LATER_ARCHITECTURE_FIELDS = {"network": "plain", "n_blocks_per_stage": []}


def plans_configuration_dict(configuration) -> dict[str, Any]:
    data = dataclasses.asdict(configuration)
    for fields, where in (
        (_LATER_FIELDS, data),
        (_LATER_ARCHITECTURE_FIELDS, data["architecture"]),
    ):
        for name, default in fields.items():
            if where.get(name) == default:
                where.pop(name)
    return data
