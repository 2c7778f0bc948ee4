"""What every augmentation transform shares: the batch, parameter checks, the call sequence.

Every transform is split in two (as in TorchIO's batched design):

* ``sample(rng, batch_size, num_channels)`` draws the concrete parameters on the CPU with
  the transform's own seeded ``numpy.random.Generator``: which samples (and channels) are
  transformed and with which numbers. ``None`` when no sample is.
* ``apply(batch, params)`` is deterministic and works on the whole batch at once, with
  tensors on the batch's device (GPU when training there, CPU threads otherwise).

A batch can thus be replayed from its recorded parameters, and a training run is
reproducible from its seed whatever thread produced the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Batch:
    """Images ``(B, C, *spatial)`` float32 and labels ``(B, S, *spatial)`` int16.

    Label channel 0 is the target (``-1`` outside the non-zero mask); a cascade's channel 1
    holds the previous stage's prediction, moved to one-hot image channels by
    :func:`~toolkit.training.augmentation.cascade_labels.finish`.
    """

    image: torch.Tensor
    labels: torch.Tensor

    @property
    def batch_size(self) -> int:
        return int(self.image.shape[0])

    @property
    def num_channels(self) -> int:
        return int(self.image.shape[1])

    @property
    def spatial_dims(self) -> int:
        return self.image.dim() - 2


def check_range(name: str, value: tuple[float, float], low: float = 0.0) -> tuple[float, float]:
    """The one place transform parameters are validated; the message names the parameter."""
    ok = (
        isinstance(value, tuple | list)
        and len(value) == 2
        and all(isinstance(v, int | float) for v in value)
    )
    if not ok or not (low <= value[0] <= value[1]):
        raise ValueError(
            f"`{name}` must be a pair (low, high) with {low} <= low <= high, not {value!r}"
        )
    return float(value[0]), float(value[1])


def check_probability(name: str, value: float) -> float:
    if not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ValueError(f"`{name}` must be a probability between 0 and 1, not {value!r}")
    return float(value)


@dataclass
class TransformParams:
    """What a transform drew for one batch: at least which samples it changes (indices,
    ascending); each transform's subclass adds its numbers."""

    samples: np.ndarray

    def index(self, device: torch.device) -> torch.Tensor:
        return torch.as_tensor(self.samples, dtype=torch.long, device=device)


class RandomTransform:
    """Owns the call sequence: draw which samples are transformed, then their numbers."""

    name = "transform"

    def __init__(self, probability: float):
        self.probability = check_probability(f"{self.name}.probability", probability)

    def sample(self, rng: np.random.Generator, batch_size: int, num_channels: int):
        chosen = np.flatnonzero(rng.random(batch_size) < self.probability)
        if chosen.size == 0:
            return None
        return self.make_params(rng, chosen, num_channels)

    def make_params(self, rng: np.random.Generator, samples: np.ndarray, num_channels: int):
        """Concrete numbers for the chosen ``samples`` (plain numbers, on the CPU).

        Subclasses implement this, or override :meth:`sample` as a whole (the spatial
        transform draws its own per-sample choices).
        """
        raise TypeError(f"{type(self).__name__} must implement make_params or sample")

    def apply(self, batch: Batch, params) -> Batch:
        """Apply ``params`` to the batch on its device (transforms of image batches)."""
        raise TypeError(f"{type(self).__name__} does not transform image batches")
