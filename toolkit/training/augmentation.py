"""Data augmentation on batched tensors, on the training device.

Every transform is split in two (as in TorchIO's batched design):

* ``sample(rng, batch_size, num_channels)`` draws the concrete parameters on the CPU with
  the transform's own seeded ``numpy.random.Generator``: which samples (and channels) are
  transformed and with which numbers. ``None`` when no sample is.
* ``apply(batch, params)`` is deterministic and works on the whole batch at once, with
  tensors on the batch's device (GPU when training there, CPU threads otherwise).

A batch can thus be replayed from its recorded parameters, and a training run is
reproducible from its seed whatever thread produced the batch.

The nine transforms and their numbers are the method's (METHOD.md section 4; the
reference implementation's exact behaviour is noted per transform). Order: rotation and
scaling (one resampling, :mod:`toolkit.training.spatial`), Gaussian noise, Gaussian blur,
brightness, contrast, low-resolution simulation, inverted gamma, gamma, mirroring.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from toolkit.core.labels import one_hot_batch
from toolkit.training.spatial import SpatialRules, central_crop, sampling_matrix, warp


@dataclass
class Batch:
    """Images ``(B, C, *spatial)`` float32 and labels ``(B, S, *spatial)`` int16.

    Label channel 0 is the target (``-1`` outside the non-zero mask); a cascade's channel 1
    holds the previous stage's prediction, moved to one-hot image channels by
    :func:`finish`.
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


def below_or_above_one(rng: np.random.Generator, low: float, high: float, size) -> np.ndarray:
    """Half the draws uniform in [low, 1), half in [1, high] (the reference's contrast style)."""
    below = rng.random(size) < 0.5
    lower = rng.uniform(low, min(1.0, high), size)
    upper = rng.uniform(max(low, 1.0), high, size)
    return np.where(below & (low < 1.0), lower, upper)


@dataclass
class Selection:
    """Which samples of the batch a transform changes (indices, ascending)."""

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


# rotation + scaling -------------------------------------------------------------------------


@dataclass
class SpatialParams(Selection):
    matrices: np.ndarray  # (n, d, d): patch voxel offset -> crop voxel offset
    rotated: np.ndarray  # (n,) bool
    scaled: np.ndarray  # (n,) bool


class SpatialTransform(RandomTransform):
    """Rotation (p 0.2) and scaling (p 0.2, 0.7-1.4), one resampling from crop to patch.

    Applied to every batch: samples that are neither rotated nor scaled are cut out of the
    crop without interpolation.
    """

    name = "spatial"

    def __init__(
        self,
        rules: SpatialRules,
        p_rotation: float = 0.2,
        p_scaling: float = 0.2,
        scaling=(0.7, 1.4),
    ):
        super().__init__(1.0)
        self.rules = rules
        self.p_rotation = check_probability("spatial.p_rotation", p_rotation)
        self.p_scaling = check_probability("spatial.p_scaling", p_scaling)
        self.scaling = check_range("spatial.scaling", tuple(scaling), low=1e-3)

    def sample(self, rng, batch_size, num_channels):
        rotate = rng.random(batch_size) < self.p_rotation
        scale = rng.random(batch_size) < self.p_scaling
        angles = rng.uniform(
            -self.rules.rotation_limit,
            self.rules.rotation_limit,
            (batch_size, len(self.rules.rotation_axes)),
        )
        factors = rng.uniform(*self.scaling, batch_size)
        chosen = np.flatnonzero(rotate | scale)
        matrices = (
            np.stack(
                [
                    sampling_matrix(
                        self.rules, angles[b] * rotate[b], factors[b] if scale[b] else 1.0
                    )
                    for b in chosen
                ]
            )
            if chosen.size
            else np.zeros((0, self.rules.dims, self.rules.dims))
        )
        return SpatialParams(chosen, matrices, rotate[chosen], scale[chosen])

    def apply(self, batch: Batch, params: SpatialParams | None) -> Batch:
        patch = self.rules.patch_size
        image = central_crop(batch.image, patch).contiguous()
        labels = central_crop(batch.labels, patch).contiguous()
        if params is not None and params.samples.size:
            idx = params.index(batch.image.device)
            warped, warped_labels = warp(
                batch.image.index_select(0, idx),
                batch.labels.index_select(0, idx),
                torch.from_numpy(params.matrices),
                patch,
            )
            image[idx] = warped
            labels[idx] = warped_labels
        return Batch(image, labels)


# intensity ---------------------------------------------------------------------------------


@dataclass
class NoiseParams(Selection):
    std: np.ndarray  # (n,)
    seed: int


class GaussianNoise(RandomTransform):
    """Additive noise (p 0.1), standard deviation uniform in 0-0.1, one field for all channels.

    The reference calls the range a variance but uses it as the standard deviation; so do we.
    """

    name = "noise"

    def __init__(self, probability: float = 0.1, std=(0.0, 0.1)):
        super().__init__(probability)
        self.std = check_range("noise.std", tuple(std))

    def make_params(self, rng, samples, num_channels):
        return NoiseParams(samples, rng.uniform(*self.std, samples.size), int(rng.integers(2**62)))

    def apply(self, batch, params: NoiseParams):
        image = batch.image
        device = image.device
        gen = torch.Generator(device=device).manual_seed(params.seed)
        shape = (params.samples.size, 1, *image.shape[2:])
        noise = torch.randn(shape, generator=gen, device=device, dtype=image.dtype)
        std = torch.as_tensor(params.std, dtype=image.dtype, device=device).view(
            -1, *[1] * (image.dim() - 1)
        )
        idx = params.index(device)
        image[idx] = image[idx] + noise * std
        return batch


@dataclass
class BlurParams(Selection):
    channels: np.ndarray  # (n, C) bool
    sigmas: np.ndarray  # (n, C, dims)


def gaussian_kernels(sigmas: torch.Tensor, radius: int) -> torch.Tensor:
    """Normalised 1D Gaussian kernels ``(k, 2 * radius + 1)``, one per sigma."""
    x = torch.arange(-radius, radius + 1, dtype=sigmas.dtype, device=sigmas.device)
    k = torch.exp(-0.5 * (x[None, :] / sigmas[:, None]) ** 2)
    return k / k.sum(dim=1, keepdim=True)


class GaussianBlur(RandomTransform):
    """Gaussian smoothing (p 0.2), each channel with p 0.5, sigma per axis uniform in 0.5-1.

    Separable, all selected (sample, channel) pairs at once as one grouped convolution per
    axis, reflecting at the border.
    """

    name = "blur"
    truncate = 3.0

    def __init__(self, probability: float = 0.2, p_per_channel: float = 0.5, sigma=(0.5, 1.0)):
        super().__init__(probability)
        self.p_per_channel = check_probability("blur.p_per_channel", p_per_channel)
        self.sigma = check_range("blur.sigma", tuple(sigma), low=1e-3)

    def sample(self, rng, batch_size, num_channels):
        params = super().sample(rng, batch_size, num_channels)
        if params is None or not params.channels.any():
            return None
        return params

    def make_params(self, rng, samples, num_channels):
        channels = rng.random((samples.size, num_channels)) < self.p_per_channel
        return BlurParams(
            samples, channels, rng.uniform(*self.sigma, (samples.size, num_channels, 3))
        )

    def apply(self, batch, params: BlurParams):
        image = batch.image
        dims = batch.spatial_dims
        device = image.device
        pairs = np.argwhere(params.channels)  # (k, 2): row in samples, channel
        sample_idx = torch.as_tensor(params.samples[pairs[:, 0]], device=device)
        channel_idx = torch.as_tensor(pairs[:, 1], device=device)
        x = image[sample_idx, channel_idx][None]  # (1, k, *spatial): each pair is a group
        radius = int(np.ceil(self.truncate * self.sigma[1]))
        sig = torch.as_tensor(
            params.sigmas[pairs[:, 0], pairs[:, 1]], dtype=torch.float32, device=device
        )
        conv = F.conv3d if dims == 3 else F.conv2d
        k = len(pairs)
        for axis in range(dims):
            size = x.shape[2 + axis]
            r = min(radius, size - 1)
            if r < 1:
                continue
            kernel = gaussian_kernels(sig[:, axis], r).to(x.dtype)
            shape = [k, 1] + [1] * dims
            shape[2 + axis] = 2 * r + 1
            pad = [0] * (2 * dims)
            pad[2 * (dims - 1 - axis)] = r
            pad[2 * (dims - 1 - axis) + 1] = r
            x = conv(F.pad(x, pad, mode="reflect"), kernel.view(shape), groups=k)
        image[sample_idx, channel_idx] = x[0]
        return batch


@dataclass
class ChannelFactors(Selection):
    factors: np.ndarray  # (n, C)


class Brightness(RandomTransform):
    """Multiply each channel (p 0.15) by a factor in 0.75-1.25 (half below 1, half above)."""

    name = "brightness"

    def __init__(self, probability: float = 0.15, multiplier=(0.75, 1.25)):
        super().__init__(probability)
        self.multiplier = check_range("brightness.multiplier", tuple(multiplier))

    def make_params(self, rng, samples, num_channels):
        return ChannelFactors(
            samples, below_or_above_one(rng, *self.multiplier, (samples.size, num_channels))
        )

    def apply(self, batch, params: ChannelFactors):
        image = batch.image
        idx = params.index(image.device)
        f = torch.as_tensor(params.factors, dtype=image.dtype, device=image.device)
        image[idx] = image[idx] * f.view(*f.shape, *[1] * batch.spatial_dims)
        return batch


def _reduce_spatial(x: torch.Tensor, how: str) -> torch.Tensor:
    flat = x.flatten(2)
    if how == "mean":
        out = flat.mean(2)
    elif how == "std":
        out = flat.std(2)
    elif how == "min":
        out = flat.amin(2)
    else:
        out = flat.amax(2)
    return out.view(*out.shape, *[1] * (x.dim() - 2))


class Contrast(RandomTransform):
    """Stretch each channel about its mean (p 0.15) by 0.75-1.25, clipped to its old range."""

    name = "contrast"

    def __init__(self, probability: float = 0.15, factor=(0.75, 1.25)):
        super().__init__(probability)
        self.factor = check_range("contrast.factor", tuple(factor))

    def make_params(self, rng, samples, num_channels):
        return ChannelFactors(
            samples, below_or_above_one(rng, *self.factor, (samples.size, num_channels))
        )

    def apply(self, batch, params: ChannelFactors):
        image = batch.image
        idx = params.index(image.device)
        x = image[idx]
        f = torch.as_tensor(params.factors, dtype=x.dtype, device=x.device).view(
            *params.factors.shape, *[1] * batch.spatial_dims
        )
        mean, lo, hi = (
            _reduce_spatial(x, "mean"),
            _reduce_spatial(x, "min"),
            _reduce_spatial(x, "max"),
        )
        image[idx] = torch.minimum(torch.maximum((x - mean) * f + mean, lo), hi)
        return batch


@dataclass
class LowResParams(Selection):
    channels: np.ndarray  # (n, C) bool
    zoom: np.ndarray  # (n, C)


class LowResolution(RandomTransform):
    """Simulate a coarser scan (p 0.25), each channel with p 0.5: zoom 0.5-1 (all axes alike),
    nearest-neighbour down, (bi/tri)linear back up. A slice stack keeps its first axis."""

    name = "low_resolution"

    def __init__(
        self, probability: float = 0.25, p_per_channel: float = 0.5, zoom=(0.5, 1.0), ignore_axes=()
    ):
        super().__init__(probability)
        self.p_per_channel = check_probability("low_resolution.p_per_channel", p_per_channel)
        self.zoom = check_range("low_resolution.zoom", tuple(zoom), low=1e-3)
        self.ignore_axes = tuple(ignore_axes)

    def sample(self, rng, batch_size, num_channels):
        params = super().sample(rng, batch_size, num_channels)
        if params is None or not params.channels.any():
            return None
        return params

    def make_params(self, rng, samples, num_channels):
        channels = rng.random((samples.size, num_channels)) < self.p_per_channel
        return LowResParams(
            samples, channels, rng.uniform(*self.zoom, (samples.size, num_channels))
        )

    def apply(self, batch, params: LowResParams):
        image = batch.image
        shape = list(image.shape[2:])
        mode = "trilinear" if batch.spatial_dims == 3 else "bilinear"
        for row, channel in np.argwhere(params.channels):
            b = int(params.samples[row])
            zoom = float(params.zoom[row, channel])
            small = [
                s if a in self.ignore_axes else max(1, round(s * zoom)) for a, s in enumerate(shape)
            ]
            x = image[b : b + 1, channel : channel + 1]
            down = F.interpolate(x, size=small, mode="nearest-exact")
            image[b : b + 1, channel : channel + 1] = F.interpolate(
                down, size=shape, mode=mode, align_corners=False
            )
        return batch


class Gamma(RandomTransform):
    """Gamma on each channel rescaled to [0, 1] (gamma 0.7-1.5, half below 1), mean and std
    kept. The inverted variant (p 0.1) negates the image around the operation; the plain one
    has p 0.3; both may hit the same sample."""

    name = "gamma"

    def __init__(self, probability: float = 0.3, gamma=(0.7, 1.5), invert: bool = False):
        self.name = "gamma_inverted" if invert else "gamma"
        super().__init__(probability)
        self.gamma = check_range(f"{self.name}.gamma", tuple(gamma), low=1e-3)
        self.invert = invert

    def make_params(self, rng, samples, num_channels):
        return ChannelFactors(
            samples, below_or_above_one(rng, *self.gamma, (samples.size, num_channels))
        )

    def apply(self, batch, params: ChannelFactors):
        image = batch.image
        idx = params.index(image.device)
        x = image[idx]
        if self.invert:
            x = -x
        g = torch.as_tensor(params.factors, dtype=x.dtype, device=x.device).view(
            *params.factors.shape, *[1] * batch.spatial_dims
        )
        mean, std = _reduce_spatial(x, "mean"), _reduce_spatial(x, "std")
        lo = _reduce_spatial(x, "min")
        span = _reduce_spatial(x, "max") - lo
        y = ((x - lo) / span.clamp_min(1e-7)).pow(g) * span + lo
        y = (y - _reduce_spatial(y, "mean")) * (
            std / _reduce_spatial(y, "std").clamp_min(1e-7)
        ) + mean
        image[idx] = -y if self.invert else y
        return batch


@dataclass
class MirrorParams:
    flips: np.ndarray  # (B, n_axes) bool
    axes: tuple[int, ...]


class Mirror(RandomTransform):
    """Flip each spatial axis with p 0.5, image and labels together."""

    name = "mirror"

    def __init__(self, axes: tuple[int, ...], probability: float = 0.5):
        super().__init__(probability)
        self.axes = tuple(axes)

    def sample(self, rng, batch_size, num_channels):
        flips = rng.random((batch_size, len(self.axes))) < self.probability
        return MirrorParams(flips, self.axes) if flips.any() else None

    def apply(self, batch, params: MirrorParams):
        for column, axis in enumerate(params.axes):
            rows = np.flatnonzero(params.flips[:, column])
            if rows.size == 0:
                continue
            idx = torch.as_tensor(rows, device=batch.image.device)
            dim = 2 + axis
            batch.image[idx] = batch.image[idx].flip(dim)
            batch.labels[idx] = batch.labels[idx].flip(dim)
        return batch


# the pipeline ------------------------------------------------------------------------------


@dataclass
class AugmentationParams:
    """Everything one batch's augmentation drew: replaying it gives the same batch."""

    by_transform: dict[str, object] = field(default_factory=dict)


class Augmenter:
    """The method's nine transforms in the reference's order, for one patch size."""

    def __init__(self, rules: SpatialRules):
        self.rules = rules
        ignore = (0,) if rules.slice_stack else ()
        self.spatial = SpatialTransform(rules)
        self.transforms: list[RandomTransform] = [
            GaussianNoise(),
            GaussianBlur(),
            Brightness(),
            Contrast(),
            LowResolution(ignore_axes=ignore),
            Gamma(probability=0.1, invert=True),
            Gamma(probability=0.3),
            Mirror(rules.mirror_axes),
        ]

    def sample(
        self, seed: np.random.SeedSequence, batch_size: int, num_channels: int
    ) -> AugmentationParams:
        """One child generator per transform, so each transform's draws are independent."""
        every = [self.spatial, *self.transforms]
        rngs = [np.random.default_rng(s) for s in seed.spawn(len(every))]
        return AugmentationParams(
            {
                t.name: t.sample(r, batch_size, num_channels)
                for t, r in zip(every, rngs, strict=True)
            }
        )

    def apply(self, batch: Batch, params: AugmentationParams) -> Batch:
        with torch.no_grad():
            batch = self.spatial.apply(batch, params.by_transform.get(self.spatial.name))
            for t in self.transforms:
                p = params.by_transform.get(t.name)
                if p is not None:
                    batch = t.apply(batch, p)
        return batch

    def __call__(self, batch: Batch, seed: np.random.SeedSequence) -> Batch:
        return self.apply(batch, self.sample(seed, batch.batch_size, batch.num_channels))


# after augmentation --------------------------------------------------------------------------


@dataclass
class BinaryOperatorParams(Selection):
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
