"""Label logic, one owner: which values are foreground, one-hot maps, labels from probabilities.

Every stage asks here (preprocessing's oversampling locations, the loss, validation, the
cascade input, evaluation), so a new kind of label (regions, an ignore value) changes one
module. Label values are those of ``dataset.json``; 0 is background.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch

BACKGROUND = 0


def foreground_labels(labels: Mapping[str, int] | Iterable[int]) -> list[int]:
    """The foreground label values, ascending: a ``{name: value}`` mapping or the values."""
    values = labels.values() if isinstance(labels, Mapping) else labels
    return sorted({int(v) for v in values if int(v) != BACKGROUND})


def one_hot(labels: np.ndarray, values: Sequence[int]) -> np.ndarray:
    """``(*spatial)`` labels -> ``(len(values), *spatial)`` float32, one channel per value."""
    return np.stack([labels == v for v in values]).astype(np.float32)


def one_hot_batch(labels: torch.Tensor, values: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """``(B, *spatial)`` labels -> ``(B, len(values), *spatial)`` of ``dtype``."""
    return torch.stack([(labels == v) for v in values], dim=1).to(dtype)


def storage_dtype(top: int) -> np.dtype:
    """Smallest signed integer type for a stored label map whose values go up to ``top`` (and
    down to -1, the mark outside the non-zero mask)."""
    if top <= 127:
        return np.dtype(np.int8)
    return np.dtype(np.int16) if top <= 32767 else np.dtype(np.int32)


def label_volume(labels: np.ndarray, shape: Sequence[int], what: str) -> np.ndarray:
    """``labels`` as one volume of ``shape`` (a leading channel axis of one is dropped);
    ``what`` names it in the error when it has another shape."""
    volume = np.asarray(labels)
    if volume.ndim == len(shape) + 1:
        volume = volume[0]
    if tuple(volume.shape) != tuple(shape):
        raise ValueError(f"{what} of shape {volume.shape} is not on the grid {tuple(shape)}")
    return volume
