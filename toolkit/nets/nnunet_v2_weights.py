"""Weights of nnU-Net v2 models: its checkpoints read, its parameter names mapped onto ours.

Its ``PlainConvUNet`` is the same network as :class:`~toolkit.nets.unet.UNet`; only the
parameter names differ, so the weights are renamed key by key and loaded strictly. Its
``ResidualEncoderUNet`` has the names of :class:`~toolkit.nets.residual_unet.ResidualEncoderUNet`
already: only the alias names are dropped (a state dict with ``encoder.stem.*`` is one).
nnU-Net checkpoints are pickles holding numpy scalars next to the weights; they are loaded
with ``weights_only=True`` and only those numpy types allowed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from toolkit.errors import ToolkitError

NNUNET_CHECKPOINT_SUFFIX = ".pth"


_ENCODER = re.compile(r"^encoder\.stages\.(\d+)\.(\d+)\.convs\.(\d+)\.(conv|norm)\.(weight|bias)$")
_DECODER = re.compile(r"^decoder\.stages\.(\d+)\.convs\.(\d+)\.(conv|norm)\.(weight|bias)$")
_TRANSPOSED = re.compile(r"^decoder\.transpconvs\.(\d+)\.(weight|bias)$")
_HEAD = re.compile(r"^decoder\.seg_layers\.(\d+)\.(weight|bias)$")
# duplicates of the same tensors under a second name (a Sequential of the block's modules,
# and the encoder referenced from the decoder)
_ALIASES = re.compile(r"(\.all_modules\.\d+\.|^decoder\.encoder\.)")


def drop_aliases(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict without DDP / torch.compile prefixes and without the alias names."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.").removeprefix("_orig_mod.")  # DDP / torch.compile wrappers
        if not _ALIASES.search(key):
            out[key] = value
    return out


def is_residual_encoder(state: Mapping[str, torch.Tensor]) -> bool:
    """A ``ResidualEncoderUNet``'s state dict (its encoder has a stem; the plain one's has none)."""
    return any(
        k.removeprefix("module.").removeprefix("_orig_mod.").startswith("encoder.stem.")
        for k in state
    )


def convert_state_dict(
    state: Mapping[str, torch.Tensor], source: Path | None = None
) -> dict[str, torch.Tensor]:
    """A ``PlainConvUNet`` state dict renamed to :class:`~toolkit.nets.unet.UNet`'s parameter
    names; a ``ResidualEncoderUNet``'s keeps its names, without the aliases."""
    if is_residual_encoder(state):
        return drop_aliases(state)
    out: dict[str, torch.Tensor] = {}
    for key, value in drop_aliases(state).items():
        if m := _ENCODER.match(key):
            stage, position, block, kind, param = m.groups()
            if position != "0":
                raise ToolkitError(
                    f"parameter {key!r}: encoder stages with pooling layers are not supported",
                    source,
                )
            out[f"encoder.{stage}.{block}.{kind}.{param}"] = value
        elif m := _DECODER.match(key):
            stage, block, kind, param = m.groups()
            out[f"decoder.{stage}.{block}.{kind}.{param}"] = value
        elif m := _TRANSPOSED.match(key):
            out[f"upsamples.{m.group(1)}.{m.group(2)}"] = value
        elif m := _HEAD.match(key):
            out[f"heads.{m.group(1)}.{m.group(2)}"] = value
        else:
            raise ToolkitError(
                f"parameter {key!r} has no counterpart in the toolkit's U-Net", source
            )
    return out


def _numpy_safe_globals() -> list:
    try:
        from numpy._core.multiarray import scalar  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    dtypes = {
        type(np.dtype(t))
        for t in (np.float16, np.float32, np.float64, np.int32, np.int64, np.uint8, np.bool_)
    }
    return [scalar, np.dtype, *dtypes]


@dataclass
class NnUNetCheckpoint:
    state_dict: dict[str, torch.Tensor]  # already renamed to our network's names
    configuration: str
    trainer_name: str
    mirror_axes: (
        tuple[int, ...] | None
    )  # spatial axes of the network input; None = no mirroring allowed


def load_nnunet_checkpoint(path: str | Path) -> NnUNetCheckpoint:
    """An nnU-Net v2 ``checkpoint_*.pth``: its weights renamed, its configuration and mirroring axes."""
    path = Path(path)
    if not path.is_file():
        raise ToolkitError("checkpoint not found", path)
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged or foreign file: torch raises many kinds
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ToolkitError(
            f"cannot be loaded as an nnU-Net v2 checkpoint ({first[:200]})", path
        ) from None
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
        raise ToolkitError("is not an nnU-Net v2 checkpoint (no 'network_weights')", path)
    init_args = checkpoint.get("init_args") or {}
    axes = checkpoint.get("inference_allowed_mirroring_axes")
    return NnUNetCheckpoint(
        state_dict=convert_state_dict(checkpoint["network_weights"], path),
        configuration=str(init_args.get("configuration", "")),
        trainer_name=str(checkpoint.get("trainer_name", "")),
        mirror_axes=None if axes is None else tuple(int(a) for a in axes),
    )


def checkpoint_file_name(checkpoint: str) -> str:
    """``final`` -> ``checkpoint_final.pth`` (a full file name is kept)."""
    return (
        checkpoint
        if checkpoint.endswith(NNUNET_CHECKPOINT_SUFFIX)
        else f"checkpoint_{checkpoint}{NNUNET_CHECKPOINT_SUFFIX}"
    )
