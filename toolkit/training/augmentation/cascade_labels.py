"""After augmentation: the network's input and target (:func:`finish`), and the cascade's two
random perturbations of the previous stage's one-hot channels, in the reference's order:

1. :class:`RandomBinaryOperator` (p 0.4 per sample, each label with p 0.5): dilate, erode,
   open or close with the reference's ball of a radius uniform in 1-8;
2. :class:`RandomComponentRemoval` (p 0.2 per sample, each label with p 0.5): delete one
   connected component (full connectivity) smaller than 15% of the patch.

Both run on the final patch, after the spatial and intensity transforms, the masking and the
one-hot encoding, as nnU-Net v2 does (its cascade transforms come last in its training
pipeline). :class:`CascadeAugmentation` holds the two in that order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage

from toolkit.core.labels import one_hot_batch
from toolkit.training.augmentation.framework import (
    Batch,
    RandomTransform,
    TransformParams,
    check_probability,
    check_range,
)

BINARY_OPERATOR_PROBABILITY = 0.4
BINARY_OPERATOR_RADIUS = (1.0, 8.0)
COMPONENT_REMOVAL_PROBABILITY = 0.2
COMPONENT_MAX_FRACTION = 0.15  # of the patch's voxels: larger components are kept
P_PER_LABEL = 0.5


# structuring element and morphology ------------------------------------------------------


def ball_footprint(radius: float, dims: int) -> np.ndarray:
    """The reference's structuring element for a real radius ``r`` (scikit-image's ``ball``
    in 3D, ``disk`` in 2D, called with the drawn float), reproduced to the bit:

    * 3D: ``int(2r + 1)`` points per axis spread evenly over ``[-r, r]``, kept where their
      squared norm is at most ``r * r``. The grid is stretched, so the shape is that of a
      ball of radius ``int(2r) / 2`` voxels (even-sized when ``int(2r)`` is odd), and float
      rounding drops some of the points that lie exactly on the sphere.
    * 2D: the points ``-r, -r + 1, ...`` below ``r + 1`` on each axis, kept within ``r``: a
      disk whose centre is off the grid for a non-integer ``r``.
    """
    r = float(radius)
    if r < 1.0:
        raise ValueError(f"`binary_operator.radius` must be at least 1, not {radius!r}")
    if dims == 3:
        n = int(2 * r + 1)
        axis = np.arange(n, dtype=np.float64) * ((r + r) / (n - 1)) - r
        sq = axis * axis
        norm = (sq[None, None, :] + sq[None, :, None]) + sq[:, None, None]
    elif dims == 2:
        axis = np.arange(-r, r + 1)
        sq = axis * axis
        norm = sq[:, None] + sq[None, :]
    else:
        raise ValueError(f"a footprint has 2 or 3 dimensions, not {dims}")
    return norm <= r * r


def _runs(footprint: np.ndarray) -> list[tuple[tuple[int, ...], int, int]]:
    """The footprint as runs along its last axis: (offsets on the other axes, first, last)."""
    runs = []
    for lead in np.ndindex(footprint.shape[:-1]):
        row = footprint[lead].astype(np.int8)
        edges = np.flatnonzero(np.diff(np.concatenate(([0], row, [0]))))
        runs += [(lead, int(a), int(b) - 1) for a, b in zip(edges[::2], edges[1::2], strict=True)]
    return runs


def dilate(mask: torch.Tensor, footprint: np.ndarray) -> torch.Tensor:
    """Binary dilation as the reference computes it (a thresholded correlation): voxel ``i``
    is set when some footprint point ``j`` has ``mask[i + j - o]`` set, with the origin
    ``o = (size - 1) // 2`` on each axis (with an even size, a set voxel spreads one voxel
    farther towards lower indices than towards higher ones); outside counts as unset.

    Exact, on the mask's device: a sliding sum along the last axis for each run of the
    footprint along that axis, then one shifted OR per run.
    """
    if footprint.ndim != mask.dim():
        raise ValueError(f"a {footprint.ndim}D footprint for a {mask.dim()}D mask")
    size = footprint.shape
    origin = [(k - 1) // 2 for k in size]
    padded = mask.new_zeros(tuple(n + k - 1 for n, k in zip(mask.shape, size, strict=True)))
    padded[tuple(slice(o, o + n) for o, n in zip(origin, mask.shape, strict=True))] = mask
    sums = torch.cumsum(padded, dim=-1, dtype=torch.int32)
    sums = torch.cat([sums.new_zeros((*sums.shape[:-1], 1)), sums], dim=-1)
    width = mask.shape[-1]
    out = torch.zeros_like(mask, dtype=torch.bool)
    windows: dict[tuple[int, int], torch.Tensor] = {}
    for lead, first, last in _runs(footprint):
        if (first, last) not in windows:
            upper = sums[..., last + 1 : last + 1 + width]
            windows[first, last] = (upper - sums[..., first : first + width]) > 0
        shifted = windows[first, last][
            tuple(slice(o, o + n) for o, n in zip(lead, mask.shape[:-1], strict=True))
        ]
        out |= shifted
    return out


def morphology(mask: torch.Tensor, op: str, radius: float) -> torch.Tensor:
    """``op`` (dilate, erode, open, close) of a boolean mask with :func:`ball_footprint`.

    Erosion is the complement's dilation, so the outside never erodes the mask. The work is
    done on the mask's bounding box grown by twice the footprint: the footprint holds its
    origin, so nothing changes farther out.
    """
    if op not in RandomBinaryOperator.operations:
        raise ValueError(f"unknown binary operation {op!r}")
    footprint = ball_footprint(radius, mask.dim())
    where = torch.nonzero(mask)
    if where.numel() == 0:
        return mask.clone()  # every operation keeps an empty mask empty
    margin = 2 * max(footprint.shape)
    box = tuple(
        slice(max(int(a) - margin, 0), int(b) + margin + 1)
        for a, b in zip(where.min(0).values, where.max(0).values, strict=True)
    )
    grow = lambda m: dilate(m, footprint)  # noqa: E731
    shrink = lambda m: ~dilate(~m, footprint)  # noqa: E731
    steps = {"dilate": (grow,), "erode": (shrink,), "open": (shrink, grow), "close": (grow, shrink)}
    part = mask[box]
    for step in steps[op]:
        part = step(part)
    out = torch.zeros_like(mask)
    out[box] = part
    return out


# the two random transforms -----------------------------------------------------------------


def _labels_per_sample(rng: np.random.Generator, num_labels: int, p_per_label: float) -> np.ndarray:
    """Which label channels a chosen sample changes: a random order, each kept with
    ``p_per_label`` (the reference shuffles the channels, then draws one number each)."""
    order = rng.permutation(num_labels)
    return order[rng.random(num_labels) < p_per_label]


@dataclass
class BinaryOperatorParams(TransformParams):
    operations: list[list[tuple[int, str, float]]]  # per sample: (label channel, op, radius)


class RandomBinaryOperator(RandomTransform):
    """Cascade only: per sample with p 0.4, each label channel (in random order) with p 0.5
    is dilated, eroded, opened or closed (uniformly) with the reference's ball of a radius
    uniform in 1-8 (a real number, see :func:`ball_footprint`); voxels a label gains are
    removed from the other labels."""

    name = "binary_operator"
    operations = ("dilate", "erode", "open", "close")

    def __init__(
        self,
        probability: float = BINARY_OPERATOR_PROBABILITY,
        p_per_label: float = P_PER_LABEL,
        radius=BINARY_OPERATOR_RADIUS,
    ):
        super().__init__(probability)
        self.p_per_label = check_probability(f"{self.name}.p_per_label", p_per_label)
        self.radius = check_range(f"{self.name}.radius", tuple(radius), low=1.0)

    def make_params(self, rng, samples, num_channels):
        operations = []
        for _ in samples:
            labels = _labels_per_sample(rng, num_channels, self.p_per_label)
            ops = rng.integers(len(self.operations), size=labels.size)
            radii = rng.uniform(*self.radius, size=labels.size)
            operations.append(
                [
                    (int(c), self.operations[int(o)], float(r))
                    for c, o, r in zip(labels, ops, radii, strict=True)
                ]
            )
        return BinaryOperatorParams(samples, operations)

    def apply_to_onehot(self, onehot: torch.Tensor, params: BinaryOperatorParams) -> torch.Tensor:
        for b, ops in zip(params.samples, params.operations, strict=True):
            for channel, op, radius in ops:
                before = onehot[b, channel] > 0
                after = morphology(before, op, radius)
                gained = after & ~before
                others = [c for c in range(onehot.shape[1]) if c != channel]
                if others and bool(gained.any()):
                    onehot[b, others] = onehot[b, others].masked_fill(gained, 0)
                onehot[b, channel] = after.to(onehot.dtype)
        return onehot


@dataclass
class ComponentRemovalParams(TransformParams):
    # per sample: (label channel, u in [0, 1) picking one of the eligible components)
    removals: list[list[tuple[int, float]]]


class RandomComponentRemoval(RandomTransform):
    """Cascade only: per sample with p 0.2, each label channel with p 0.5 loses one of its
    connected components (full connectivity: faces, edges and corners), chosen uniformly
    among those smaller than 15% of the patch, as if the first stage had missed it.

    The labelling runs with scipy on the CPU (a channel's mask goes there and back when
    training on a GPU), as the reference's does."""

    name = "component_removal"

    def __init__(
        self,
        probability: float = COMPONENT_REMOVAL_PROBABILITY,
        p_per_label: float = P_PER_LABEL,
        max_fraction: float = COMPONENT_MAX_FRACTION,
    ):
        super().__init__(probability)
        self.p_per_label = check_probability(f"{self.name}.p_per_label", p_per_label)
        self.max_fraction = check_probability(f"{self.name}.max_fraction", max_fraction)

    def make_params(self, rng, samples, num_channels):
        removals = []
        for _ in samples:
            labels = _labels_per_sample(rng, num_channels, self.p_per_label)
            picks = rng.random(labels.size)
            removals.append([(int(c), float(u)) for c, u in zip(labels, picks, strict=True)])
        return ComponentRemovalParams(samples, removals)

    def apply_to_onehot(self, onehot: torch.Tensor, params: ComponentRemovalParams) -> torch.Tensor:
        for b, removals in zip(params.samples, params.removals, strict=True):
            for channel, pick in removals:
                mask = (onehot[b, channel] > 0).cpu().numpy()
                component = removable_component(mask, self.max_fraction, pick)
                if component is not None:
                    gone = torch.from_numpy(component).to(onehot.device)
                    onehot[b, channel] = onehot[b, channel].masked_fill(gone, 0)
        return onehot


def removable_component(mask: np.ndarray, max_fraction: float, pick: float) -> np.ndarray | None:
    """The component ``pick`` (in [0, 1)) selects among those of ``mask`` (full
    connectivity) with fewer than ``max_fraction`` of its voxels; None when there is none."""
    if not mask.any():
        return None
    components, _ = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
    sizes = np.bincount(components.ravel())[1:]
    eligible = np.flatnonzero(sizes < max_fraction * mask.size) + 1
    if eligible.size == 0:
        return None
    return components == eligible[min(int(pick * eligible.size), eligible.size - 1)]


@dataclass
class CascadeParams:
    """What the cascade's perturbations drew for one batch, by transform name."""

    by_transform: dict[str, object] = field(default_factory=dict)


class CascadeAugmentation:
    """The binary operator, then the component removal, on the previous stage's one-hot
    channels (the reference's order; each transform draws from its own child generator)."""

    def __init__(
        self,
        binary_operator: RandomBinaryOperator | None = None,
        component_removal: RandomComponentRemoval | None = None,
    ):
        self.transforms = (
            binary_operator or RandomBinaryOperator(),
            component_removal or RandomComponentRemoval(),
        )

    def sample(self, rng: np.random.Generator, batch_size: int, num_labels: int) -> CascadeParams:
        children = rng.spawn(len(self.transforms))
        return CascadeParams(
            {
                t.name: t.sample(child, batch_size, num_labels)
                for t, child in zip(self.transforms, children, strict=True)
            }
        )

    def apply_to_onehot(self, onehot: torch.Tensor, params: CascadeParams) -> torch.Tensor:
        for t in self.transforms:
            drawn = params.by_transform.get(t.name)
            if drawn is not None:
                onehot = t.apply_to_onehot(onehot, drawn)
        return onehot


def finish(
    batch: Batch,
    foreground_labels: list[int],
    masked_channels: list[int],
    cascade: CascadeAugmentation | None = None,
    cascade_params: CascadeParams | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Network input and target from an (augmented) batch, in the reference's order.

    * Channels normalised inside the non-zero mask are set to 0 outside it again (the
      spatial transforms may have moved intensities there), as the reference does.
    * Target ``-1`` (outside the non-zero mask, or padding) becomes background 0: the
      network must predict background there at inference, so it is trained to (the
      reference does the same rather than ignoring those voxels).
    * A cascade's previous-stage prediction (label channel 1) becomes one one-hot image
      channel per foreground label, then goes through the cascade's perturbations when
      given (training).

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
        if cascade is not None and cascade_params is not None:
            onehot = cascade.apply_to_onehot(onehot, cascade_params)
        image = torch.cat([image, onehot], dim=1)
    return image, target
