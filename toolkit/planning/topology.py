"""Network topology from spacing and patch size: poolings per axis, strides, kernel sizes.

The method's rule (nnU-Net v2's ``get_pool_and_conv_props``), step by step:

* an axis may be pooled while its feature map is at least ``2 * min_feature_map`` voxels and
  its current spacing is within 2x of the finest current spacing among such axes;
* when only one axis qualifies it must be at least ``3 * min_feature_map`` voxels, else stop;
* before each pooling, an axis's kernel becomes 3 once its spacing is within 2x of the
  finest spacing (and stays 3); until then it is 1 (no mixing across thick slices);
* pooling doubles the spacing and halves (rounding up) the size of the pooled axes;
* the bottleneck gets a kernel of 3 on every axis;
* the patch is padded up to a multiple of ``2 ** poolings`` per axis.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

MIN_FEATURE_MAP = 4  # smallest edge of a bottleneck feature map
UNLIMITED_POOLS = 999_999


@dataclass(frozen=True)
class Topology:
    pools_per_axis: list[int]
    strides: list[list[int]]  # per stage; stage 0 is all ones
    kernel_sizes: list[list[int]]  # per stage
    patch_size: list[int]  # the input patch, padded to a multiple of `divisor`
    divisor: list[int]  # 2 ** pools_per_axis

    @property
    def n_stages(self) -> int:
        return len(self.strides)


def pad_to_multiple(shape: Sequence[float], divisor: Sequence[int]) -> list[int]:
    """Round each size up to a multiple of its divisor (sizes may be fractional medians)."""
    out = []
    for s, d in zip(shape, divisor, strict=True):
        remainder = s % d
        out.append(int(s + d - remainder - (d if remainder == 0 else 0)))
    return out


def pool_and_conv_props(
    spacing: Sequence[float],
    patch_size: Sequence[float],
    min_feature_map: int = MIN_FEATURE_MAP,
    max_pools: int = UNLIMITED_POOLS,
) -> Topology:
    dim = len(spacing)
    current_spacing = [float(s) for s in spacing]
    current_size = [float(s) for s in patch_size]
    strides: list[list[int]] = [[1] * dim]
    kernels: list[list[int]] = []
    pools = [0] * dim
    kernel = [1] * dim
    while True:
        candidates = [i for i in range(dim) if current_size[i] >= 2 * min_feature_map]
        if not candidates:
            break
        finest = min(current_spacing[i] for i in candidates)
        candidates = [i for i in candidates if current_spacing[i] / finest < 2]
        candidates = [i for i in candidates if pools[i] < max_pools]
        if len(candidates) == 1 and current_size[candidates[0]] < 3 * min_feature_map:
            break
        if not candidates:
            break
        finest_all = min(current_spacing)
        for d in range(dim):
            if kernel[d] != 3 and current_spacing[d] / finest_all < 2:
                kernel[d] = 3
        stride = [1] * dim
        for i in candidates:
            stride[i] = 2
            pools[i] += 1
            current_spacing[i] *= 2
            current_size[i] = math.ceil(current_size[i] / 2)
        strides.append(stride)
        kernels.append(list(kernel))
    kernels.append([3] * dim)
    divisor = [2**p for p in pools]
    return Topology(
        pools_per_axis=pools,
        strides=strides,
        kernel_sizes=kernels,
        patch_size=pad_to_multiple(patch_size, divisor),
        divisor=divisor,
    )


def features_per_stage(n_stages: int, base: int, maximum: int) -> list[int]:
    """``base`` features, doubling per stage, capped at ``maximum``."""
    return [min(maximum, base * 2**i) for i in range(n_stages)]
