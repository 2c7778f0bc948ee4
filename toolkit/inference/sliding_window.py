"""The sliding window on torch tensors: :mod:`toolkit.inference.windows`'s sweep with torch's arrays.

The rules (the window grid, the Gaussian importance map, mirroring, the mean over folds and
mirrored copies, the accumulation and the final division) are :mod:`.windows`'s; this module
supplies what is torch's: :class:`TorchOps` (padding with ``F.pad``, the compute device and
the accumulation device, which may differ: a GPU runs the networks while the accumulators
live on the CPU), each network's forward (deep-supervision outputs dropped, a 2D network fed
one slice), autocast for the precision and inference mode.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from toolkit.core.constants import STEP_SIZE
from toolkit.core.device import PRECISIONS, autocast
from toolkit.inference.windows import (
    Forward,
    mean_window_logits,
    slice_forward,
    sweep_logits,
)


@dataclass(frozen=True)
class WindowSettings:
    """How one volume is swept.

    ``patch_size`` has three entries on the ``(z, y, x)`` grid of the preprocessed volume (a
    2D configuration's is ``(1, py, px)``); ``mirror_axes`` are axes of that grid (0, 1, 2);
    ``images_per_forward`` bounds the batch of one forward pass (windows times mirrored
    copies).
    """

    patch_size: tuple[int, int, int]
    step_size: float = STEP_SIZE
    mirror_axes: tuple[int, ...] = ()
    images_per_forward: int = 1
    precision: str = "fp32"  # fp32, bf16 (autocast) or fp16 (autocast)

    def __post_init__(self) -> None:
        if len(self.patch_size) != 3:
            raise ValueError(f"patch_size needs 3 entries (z, y, x), got {self.patch_size}")
        if not 0 < self.step_size <= 1:
            raise ValueError(f"step_size must be in (0, 1], not {self.step_size}")
        if any(a not in (0, 1, 2) for a in self.mirror_axes):
            raise ValueError(f"mirror_axes must be among 0, 1, 2, not {self.mirror_axes}")
        if self.images_per_forward < 1:
            raise ValueError(
                f"images_per_forward must be at least 1, not {self.images_per_forward}"
            )
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {self.precision!r}")


def _network_output(network: nn.Module) -> Forward:
    def forward(x: torch.Tensor) -> torch.Tensor:
        out = network(x)
        out = out[0] if isinstance(out, list | tuple) else out
        return out.float()

    return slice_forward(forward, getattr(network, "spatial_dims", 3))


def forward_logits(network: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits of ``x`` ``(b, c, z, y, x)``; a 2D network sees the single slice ``(b, c, y, x)``."""
    return _network_output(network)(x)


@dataclass(frozen=True)
class TorchOps:
    """:class:`~toolkit.inference.windows.ArrayOps` for torch: networks on ``device``, the
    padded volume and the accumulators on ``accumulate_device``."""

    device: torch.device
    accumulate_device: torch.device

    def padded(self, data: torch.Tensor, pads: Sequence[tuple[int, int]]) -> torch.Tensor:
        data = data.to(self.accumulate_device, torch.float32)
        if any(p != (0, 0) for p in pads):
            flat = [v for pair in reversed(pads) for v in pair]  # F.pad wants the last axis first
            data = F.pad(data, flat, mode="constant", value=0.0)
        return data

    def zeros(self, shape: Sequence[int]) -> torch.Tensor:
        return torch.zeros(tuple(shape), dtype=torch.float32, device=self.accumulate_device)

    def batch(self, windows: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.stack(list(windows)).to(self.device, non_blocking=True)

    def stack(self, arrays: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.stack(list(arrays))

    def flip(self, array: torch.Tensor, axes: Sequence[int]) -> torch.Tensor:
        return torch.flip(array, list(axes))

    def on_compute(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(array, dtype=np.float32)).to(self.device)

    def on_accumulation(self, array: torch.Tensor | np.ndarray) -> torch.Tensor:
        if isinstance(array, np.ndarray):
            array = torch.from_numpy(np.asarray(array, dtype=np.float32))
        return array.to(self.accumulate_device)

    def copy(self, array: torch.Tensor) -> torch.Tensor:
        return array.clone()


def predict_windows(
    networks: Sequence[nn.Module],
    x: torch.Tensor,
    mirror_axes: Sequence[int],
    images_per_forward: int,
    precision: str = "fp32",
) -> torch.Tensor:
    """Mean logits (float32) of a batch of windows over every network and mirrored copy
    (:func:`~toolkit.inference.windows.mean_window_logits`); ``x`` is ``(b, c, z, y, x)`` on
    the compute device."""
    ops = TorchOps(x.device, x.device)
    with autocast(x.device, precision):
        return mean_window_logits(
            [_network_output(n) for n in networks], x, mirror_axes, images_per_forward, ops
        )


@torch.inference_mode()
def sliding_window_logits(
    networks: Sequence[nn.Module],
    data: torch.Tensor,
    num_classes: int,
    settings: WindowSettings,
    device: torch.device,
    accumulate_device: torch.device,
    on_windows: Callable[[int], None] | None = None,
) -> list[torch.Tensor]:
    """Gaussian-weighted mean logits of ``data`` ``(c, z, y, x)``: one ``(z, y, x)`` float32 tensor per class.

    ``device`` runs the networks; ``accumulate_device`` holds the (padded) input and the
    accumulators (the GPU when they fit there, else the CPU, which the caller decides).
    ``on_windows(n)`` is called after every batch of ``n`` windows (progress).
    """
    with autocast(device, settings.precision):
        return sweep_logits(
            [_network_output(n) for n in networks],
            data,
            num_classes,
            patch_size=settings.patch_size,
            step_size=settings.step_size,
            mirror_axes=settings.mirror_axes,
            images_per_forward=settings.images_per_forward,
            ops=TorchOps(device, accumulate_device),
            on_windows=on_windows,
        )
