"""Intensity transforms: Gaussian noise, Gaussian blur, brightness, contrast, low-resolution
simulation and gamma (plain and inverted), in the method's numbers (METHOD.md section 4;
the reference implementation's exact behaviour is noted per transform).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from toolkit.training.augmentation.framework import (
    RandomTransform,
    TransformParams,
    check_probability,
    check_range,
)


def below_or_above_one(rng: np.random.Generator, low: float, high: float, size) -> np.ndarray:
    """Half the draws uniform in [low, 1), half in [1, high] (the reference's contrast style)."""
    below = rng.random(size) < 0.5
    lower = rng.uniform(low, min(1.0, high), size)
    upper = rng.uniform(max(low, 1.0), high, size)
    return np.where(below & (low < 1.0), lower, upper)


@dataclass
class NoiseParams(TransformParams):
    std: np.ndarray  # (n,): one per sample, all its channels
    seed: int


class GaussianNoise(RandomTransform):
    """Additive noise (p 0.1): one standard deviation per sample, uniform in 0-0.1, shared by
    its channels; the noise itself drawn independently for every channel and voxel.

    The reference (``GaussianNoiseTransform`` with ``synchronize_channels``) calls the range a
    variance but uses it as the standard deviation; so do we.
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
        shape = (params.samples.size, *image.shape[1:])
        noise = torch.randn(shape, generator=gen, device=device, dtype=image.dtype)
        std = torch.as_tensor(params.std, dtype=image.dtype, device=device).view(
            -1, *[1] * (image.dim() - 1)
        )
        idx = params.index(device)
        image[idx] = image[idx] + noise * std
        return batch


@dataclass
class BlurParams(TransformParams):
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
class ChannelFactors(TransformParams):
    factors: np.ndarray  # (n, C)


class ChannelFactorTransform(RandomTransform):
    """A transform drawing one factor per sample and channel in ``factor_range``, half of the
    draws below 1 and half above (the reference's rule for brightness and contrast)."""

    def __init__(self, probability: float, factor_range: tuple[float, float]):
        super().__init__(probability)
        self.factor_range = factor_range  # checked by the subclass, under its parameter's name

    def make_params(self, rng, samples, num_channels):
        return ChannelFactors(
            samples, below_or_above_one(rng, *self.factor_range, (samples.size, num_channels))
        )


class Brightness(ChannelFactorTransform):
    """Multiply each channel (p 0.15) by a factor in 0.75-1.25 (half below 1, half above)."""

    name = "brightness"

    def __init__(self, probability: float = 0.15, multiplier=(0.75, 1.25)):
        self.multiplier = check_range("brightness.multiplier", tuple(multiplier))
        super().__init__(probability, self.multiplier)

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


class Contrast(ChannelFactorTransform):
    """Stretch each channel about its mean (p 0.15) by 0.75-1.25, clipped to its old range."""

    name = "contrast"

    def __init__(self, probability: float = 0.15, factor=(0.75, 1.25)):
        self.factor = check_range("contrast.factor", tuple(factor))
        super().__init__(probability, self.factor)

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
class LowResParams(TransformParams):
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
