"""How much memory a planned network needs for one training step.

Two models:

* ``reference`` (the default, the method's): the number of feature-map voxels the network
  produces for one sample (every conv output of the encoder and decoder, the transposed
  convolutions, the highest-resolution segmentation output), compared with a reference value
  that stands for 8 GB: 560e6 for 3D networks at batch 2, 85e6 for 2D at batch 12 (each
  planner of ``planners.py`` has its own values and budget). It is a proxy, not a memory
  figure, and it reproduces nnU-Net v2's plans. The residual encoder counts its stem, both
  convs of each block and the skips that project (``residual_feature_map_voxels``).
* ``calibrated`` (opt-in): bytes predicted from the same count and the parameter count by a
  linear fit against peak memory measured while running forward + backward of built networks
  (``bench/calibrate_memory.py`` writes ``memory_calibration.json`` beside this file).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from toolkit.errors import ToolkitError
from toolkit.io.json_files import read_contract

MemoryModelName = Literal["reference", "calibrated"]
CALIBRATION_FILE = Path(__file__).with_name("memory_calibration.json")

REFERENCE_GB = 8.0
REFERENCE_VALUE = {3: 560_000_000, 2: 85_000_000}
REFERENCE_BATCH = {3: 2, 2: 12}


def _prod(values: Sequence[int]) -> int:
    return math.prod(int(v) for v in values)


def stage_sizes(patch_size: Sequence[int], strides: Sequence[Sequence[int]]) -> list[list[int]]:
    """Feature-map size at each encoder stage (integer division by each stage's stride)."""
    size = [int(s) for s in patch_size]
    sizes = []
    for stride in strides:
        size = [a // b for a, b in zip(size, stride, strict=True)]
        sizes.append(size)
    return sizes


def feature_map_voxels(
    patch_size: Sequence[int],
    strides: Sequence[Sequence[int]],
    features: Sequence[int],
    n_conv_encoder: Sequence[int],
    n_conv_decoder: Sequence[int],
    num_classes: int,
    deep_supervision: bool = False,
) -> int:
    """Sum of the sizes (channels x voxels) of the feature maps of one sample.

    ``n_conv_decoder[s]`` is the number of convolutions of the decoder stage working at
    encoder stage ``s``'s resolution. The reference counts without deep supervision, so only
    the highest-resolution segmentation output.
    """
    sizes = stage_sizes(patch_size, strides)
    total = 0
    for s, size in enumerate(sizes):
        total += n_conv_encoder[s] * features[s] * _prod(size)
    return total + _decoder_voxels(sizes, features, n_conv_decoder, num_classes, deep_supervision)


def residual_feature_map_voxels(
    patch_size: Sequence[int],
    strides: Sequence[Sequence[int]],
    features: Sequence[int],
    n_blocks_encoder: Sequence[int],
    n_conv_decoder: Sequence[int],
    num_classes: int,
    deep_supervision: bool = False,
) -> int:
    """:func:`feature_map_voxels` of the residual-encoder U-Net.

    The stem's output; per residual block its two conv outputs, plus the skip's output in a
    block that strides or changes the channel count (counted once, as the reference does);
    the decoder as the plain one's.
    """
    sizes = stage_sizes(patch_size, strides)
    total = features[0] * _prod(patch_size)  # the stem
    for s, size in enumerate(sizes):
        voxels = features[s] * _prod(size)
        total += 2 * voxels * n_blocks_encoder[s]
        cin = features[s - 1] if s > 0 else features[0]
        if cin != features[s] or any(st != 1 for st in strides[s]):
            total += voxels
    return total + _decoder_voxels(sizes, features, n_conv_decoder, num_classes, deep_supervision)


def _decoder_voxels(sizes, features, n_conv_decoder, num_classes, deep_supervision) -> int:
    total = 0
    for s in range(len(sizes) - 2, -1, -1):
        voxels = _prod(sizes[s])
        total += n_conv_decoder[s] * features[s] * voxels  # conv blocks
        total += features[s] * voxels  # transposed convolution output
        if deep_supervision or s == 0:
            total += num_classes * voxels
    return total


def parameter_count(
    in_channels: int,
    num_classes: int,
    features: Sequence[int],
    kernel_sizes: Sequence[Sequence[int]],
    strides: Sequence[Sequence[int]],
    n_conv_encoder: Sequence[int],
    n_conv_decoder: Sequence[int],
) -> int:
    """Trainable parameters of the plain U-Net (conv weights and biases, instance-norm affines)."""
    total = 0
    cin = in_channels
    for s, f in enumerate(features):
        k = _prod(kernel_sizes[s])
        for i in range(n_conv_encoder[s]):
            total += (cin if i == 0 else f) * f * k + f + 2 * f
        cin = f
    return total + _decoder_parameters(num_classes, features, kernel_sizes, strides, n_conv_decoder)


def residual_parameter_count(
    in_channels: int,
    num_classes: int,
    features: Sequence[int],
    kernel_sizes: Sequence[Sequence[int]],
    strides: Sequence[Sequence[int]],
    n_blocks_encoder: Sequence[int],
    n_conv_decoder: Sequence[int],
) -> int:
    """Trainable parameters of the residual-encoder U-Net (its skip projections have no bias)."""
    total = in_channels * features[0] * _prod(kernel_sizes[0]) + 3 * features[0]  # the stem
    cin = features[0]
    for s, f in enumerate(features):
        k = _prod(kernel_sizes[s])
        for b in range(n_blocks_encoder[s]):
            block_in = cin if b == 0 else f
            total += block_in * f * k + 3 * f + f * f * k + 3 * f  # two conv blocks
            if block_in != f:
                total += block_in * f + 2 * f  # 1x1 projection (no bias) + norm
        cin = f
    return total + _decoder_parameters(num_classes, features, kernel_sizes, strides, n_conv_decoder)


def _decoder_parameters(num_classes, features, kernel_sizes, strides, n_conv_decoder) -> int:
    total = 0
    for s in range(len(features) - 2, -1, -1):
        f, below = features[s], features[s + 1]
        total += below * f * _prod(strides[s + 1]) + f  # transposed conv
        k = _prod(kernel_sizes[s])
        for i in range(n_conv_decoder[s]):
            total += (2 * f if i == 0 else f) * f * k + f + 2 * f
        total += f * num_classes + num_classes  # segmentation head
    return total


@dataclass(frozen=True)
class Calibration:
    """``peak_bytes = bytes_per_feature_voxel * voxels * batch + bytes_per_parameter * params + constant``."""

    bytes_per_feature_voxel: float
    bytes_per_parameter: float
    constant_bytes: float
    measured_on: str = ""  # device and method of the measurements
    num_measurements: int = 0
    relative_error: float = 0.0  # largest |predicted - measured| / measured over the fit

    def predicted_bytes(self, feature_voxels: int, parameters: int, batch_size: int) -> float:
        return (
            self.bytes_per_feature_voxel * feature_voxels * batch_size
            + self.bytes_per_parameter * parameters
            + self.constant_bytes
        )

    @classmethod
    def load(cls, path: Path = CALIBRATION_FILE) -> Calibration:
        if not Path(path).is_file():
            raise ToolkitError(
                "no memory calibration: run `python -m bench.calibrate_memory` or use --memory-model reference",
                path,
            )
        return read_contract(path, lambda data: cls(**data["fit"]), what="memory calibration")


@dataclass(frozen=True)
class MemoryBudget:
    """Decides whether a network fits and how large a batch the budget allows.

    The reference model compares the estimate with ``reference`` feature-map voxels, which
    stand for ``reference_gb`` (the default planner's 560e6 / 85e6 for 8 GB unless a planner
    says otherwise), scaled to ``gpu_memory_gb``. ``fit_at_min_batch``: the estimate is first
    rescaled from the reference batch to the minimum batch (the default planner's rule).
    """

    dims: int
    gpu_memory_gb: float = REFERENCE_GB
    model: MemoryModelName = "reference"
    calibration: Calibration | None = None
    reference: int | None = None
    reference_gb: float = REFERENCE_GB
    fit_at_min_batch: bool = True

    @property
    def reference_value(self) -> float:
        value = REFERENCE_VALUE[self.dims] if self.reference is None else self.reference
        return value * (self.gpu_memory_gb / self.reference_gb)

    @property
    def reference_batch(self) -> int:
        return REFERENCE_BATCH[self.dims]

    def fits(self, feature_voxels: int, parameters: int, min_batch_size: int) -> bool:
        if self.model == "reference":
            if not self.fit_at_min_batch:
                return feature_voxels <= self.reference_value
            # the reference value stands for `reference_batch` samples; we need `min_batch_size`
            return feature_voxels / self.reference_batch * min_batch_size <= self.reference_value
        cal = self._calibration()
        return (
            cal.predicted_bytes(feature_voxels, parameters, min_batch_size)
            <= self.gpu_memory_gb * 1e9
        )

    def batch_size(self, feature_voxels: int, parameters: int) -> int:
        """The largest batch the budget allows (before the dataset and minimum caps)."""
        if self.model == "reference":
            return round(self.reference_value / feature_voxels * self.reference_batch)
        cal = self._calibration()
        free = self.gpu_memory_gb * 1e9 - cal.bytes_per_parameter * parameters - cal.constant_bytes
        return max(0, math.floor(free / (cal.bytes_per_feature_voxel * feature_voxels)))

    def _calibration(self) -> Calibration:
        if self.calibration is None:
            raise ValueError("the calibrated memory model needs a Calibration")
        return self.calibration
