"""After augmentation: the network's input and target (:func:`finish`), and the cascade's
random binary operator on the previous stage's one-hot channels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from toolkit.core.labels import one_hot_batch
from toolkit.training.augmentation.framework import (
    Batch,
    RandomTransform,
    TransformParams,
    check_range,
)


@dataclass
class BinaryOperatorParams(TransformParams):
    operations: list[
        list[tuple[int, str, int]]
    ]  # per sample: (class channel, op, radius), in order


class RandomBinaryOperator(RandomTransform):
    """Cascade only (p 0.4): dilate, erode, open or close each one-hot channel of the previous
    stage's prediction with a radius of 1-8 voxels, in random class order; a voxel a class
    gains is removed from the other classes. Cube-shaped structuring elements (separable max
    pooling) stand in for the reference's balls, so it stays cheap on the device."""

    name = "binary_operator"
    operations = ("dilate", "erode", "open", "close")

    def __init__(self, probability: float = 0.4, radius=(1, 8)):
        super().__init__(probability)
        self.radius = tuple(
            int(r) for r in check_range("binary_operator.radius", tuple(radius), low=1)
        )

    def make_params(self, rng, samples, num_channels):
        ops = []
        for _ in samples:
            order = rng.permutation(num_channels)
            ops.append(
                [
                    (
                        int(c),
                        str(self.operations[rng.integers(4)]),
                        int(rng.integers(self.radius[0], self.radius[1] + 1)),
                    )
                    for c in order
                ]
            )
        return BinaryOperatorParams(samples, ops)

    def apply_to_onehot(self, onehot: torch.Tensor, params: BinaryOperatorParams) -> torch.Tensor:
        for b, ops in zip(params.samples, params.operations, strict=True):
            for channel, op, radius in ops:
                before = onehot[b, channel] > 0
                after = morphology(before, op, radius)
                onehot[b, channel] = after.to(onehot.dtype)
                gained = after & ~before
                others = [c for c in range(onehot.shape[1]) if c != channel]
                if others and gained.any():
                    onehot[b, others] = onehot[b, others] * (~gained).to(onehot.dtype)
        return onehot


def _max_filter(mask: torch.Tensor, radius: int) -> torch.Tensor:
    x = mask.float()[None, None]
    dims = mask.dim()
    pool = F.max_pool3d if dims == 3 else F.max_pool2d
    for axis in range(dims):
        k = [1] * dims
        k[axis] = 2 * radius + 1
        pad = [0] * dims
        pad[axis] = radius
        x = pool(x, kernel_size=k, stride=1, padding=pad)
    return x[0, 0] > 0


def morphology(mask: torch.Tensor, op: str, radius: int) -> torch.Tensor:
    dilate = lambda m: _max_filter(m, radius)  # noqa: E731
    erode = lambda m: ~_max_filter(~m, radius)  # noqa: E731
    if op == "dilate":
        return dilate(mask)
    if op == "erode":
        return erode(mask)
    if op == "open":
        return dilate(erode(mask))
    if op == "close":
        return erode(dilate(mask))
    raise ValueError(f"unknown binary operation {op!r}")


def finish(
    batch: Batch,
    foreground_labels: list[int],
    masked_channels: list[int],
    binary_operator: RandomBinaryOperator | None = None,
    operator_params: BinaryOperatorParams | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Network input and target from an (augmented) batch.

    * Channels normalised inside the non-zero mask are set to 0 outside it again (the
      spatial transforms may have moved intensities there), as the reference does.
    * Target ``-1`` (outside the non-zero mask, or padding) becomes background 0: the
      network must predict background there at inference, so it is trained to (the
      reference does the same rather than ignoring those voxels).
    * A cascade's previous-stage prediction (label channel 1) becomes one one-hot image
      channel per foreground label, optionally perturbed by the random binary operator.

    Returns ``(input float32 (B, C'[, +K], *spatial), target int64 (B, 1, *spatial))``.
    """
    image, labels = batch.image, batch.labels
    target = labels[:, :1]
    if masked_channels:
        outside = (target < 0).expand(-1, len(masked_channels), *[-1] * batch.spatial_dims)
        idx = torch.as_tensor(masked_channels, device=image.device)
        image[:, idx] = image[:, idx].masked_fill(outside, 0.0)
    target = target.clamp_min(0).long()
    if labels.shape[1] > 1:
        previous = labels[:, 1]
        onehot = one_hot_batch(previous, foreground_labels, image.dtype)
        if binary_operator is not None and operator_params is not None:
            onehot = binary_operator.apply_to_onehot(onehot, operator_params)
        image = torch.cat([image, onehot], dim=1)
    return image, target
