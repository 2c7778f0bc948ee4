"""From a fingerprint to ``plans.json``: the 2d, 3d_fullres, 3d_lowres and 3d_cascade_fullres configurations.

The default reproduces nnU-Net v2 (2.8.1)'s ``ExperimentPlanner`` for the same fingerprint:
same order of decisions, same numbers. Options (a preset, explicit limits, a memory budget,
the calibrated memory model) are recorded in ``Plans.planner``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Literal

import numpy as np

from toolkit.core.constants import ANISOTROPY_THRESHOLD
from toolkit.core.fingerprint import Fingerprint
from toolkit.core.plans import (
    Architecture,
    Configuration,
    Plans,
    Resampling,
    deep_supervision_scales,
)
from toolkit.errors import ToolkitError
from toolkit.planning.memory import (
    Calibration,
    MemoryBudget,
    MemoryModelName,
    feature_map_voxels,
    parameter_count,
)
from toolkit.planning.rules import (
    dataset_normalization,
    initial_patch_size,
    median_resampled_shape,
    target_spacing,
    transpose_axes,
)
from toolkit.planning.topology import (
    MIN_FEATURE_MAP,
    UNLIMITED_POOLS,
    features_per_stage,
    pool_and_conv_props,
)

REFERENCE_PLANNER = "nnU-Net v2 2.8.1 ExperimentPlanner (default plans)"
INITIAL_PATCH_VOLUME = {3: 256**3, 2: 2048**2}
MAX_DATASET_COVERED = 0.05  # one batch sees at most 5% of all training voxels
LOWRES_THRESHOLD = 0.25  # 3d_lowres when the full-res patch covers less of the median image
LOWRES_SPACING_STEP = 1.03
LOWRES_MIN_SHRINK = 2.0  # drop 3d_lowres unless it shrinks the data at least this much
CONV_PER_STAGE = 2

PresetName = Literal["default", "cpu"]


@dataclass(frozen=True)
class PlannerOptions:
    """Budgets and limits of the planner. The defaults are the method's."""

    preset: str = "default"
    gpu_memory_gb: float = 8.0
    memory_model: MemoryModelName = "reference"
    features_base: int = 32
    max_features_3d: int = 320
    max_features_2d: int = 512
    max_patch_voxels_3d: int | None = None  # extra limit on top of the memory budget
    max_patch_voxels_2d: int | None = None
    max_batch_size_3d: int | None = None
    max_batch_size_2d: int | None = None
    min_batch_size: int = 2

    def check(self) -> PlannerOptions:
        def positive(name: str, value, allow_none: bool = True) -> None:
            if value is None and allow_none:
                return
            if value is None or value <= 0:
                raise ToolkitError(
                    f"planner option `{name}` must be a positive number, not {value!r}"
                )

        positive("gpu_memory_gb", self.gpu_memory_gb, allow_none=False)
        positive("features_base", self.features_base, allow_none=False)
        positive("max_features_3d", self.max_features_3d, allow_none=False)
        positive("max_features_2d", self.max_features_2d, allow_none=False)
        for name in (
            "max_patch_voxels_3d",
            "max_patch_voxels_2d",
            "max_batch_size_3d",
            "max_batch_size_2d",
        ):
            positive(name, getattr(self, name))
        positive("min_batch_size", self.min_batch_size, allow_none=False)
        if self.memory_model not in ("reference", "calibrated"):
            raise ToolkitError(
                f"memory model must be 'reference' or 'calibrated', not {self.memory_model!r}"
            )
        for dims in (2, 3):
            cap = self.max_batch_size(dims)
            if cap is not None and cap < self.min_batch_size:
                raise ToolkitError(
                    f"max batch size {cap} is below the minimum batch size {self.min_batch_size}"
                )
        return self

    def max_features(self, dims: int) -> int:
        return self.max_features_3d if dims == 3 else self.max_features_2d

    def max_patch_voxels(self, dims: int) -> int | None:
        return self.max_patch_voxels_3d if dims == 3 else self.max_patch_voxels_2d

    def max_batch_size(self, dims: int) -> int | None:
        return self.max_batch_size_3d if dims == 3 else self.max_batch_size_2d


PRESETS: dict[str, PlannerOptions] = {
    "default": PlannerOptions(),
    # a plan a CPU trains in minutes: narrow network, small patches and batches
    "cpu": PlannerOptions(
        preset="cpu",
        features_base=16,
        max_features_3d=128,
        max_features_2d=128,
        max_patch_voxels_3d=40_000,
        max_patch_voxels_2d=96 * 96,
        max_batch_size_3d=2,
        max_batch_size_2d=12,
    ),
}


def preset(name: str, **overrides) -> PlannerOptions:
    """A named preset with explicit options on top (``None`` overrides are ignored)."""
    if name not in PRESETS:
        raise ToolkitError(f"unknown preset {name!r} (available: {', '.join(PRESETS)})")
    changes = {k: v for k, v in overrides.items() if v is not None}
    return replace(PRESETS[name], **changes).check()


@dataclass(frozen=True)
class NetworkPlan:
    """What the patch/topology search settles on for one configuration."""

    patch_size: list[int]
    batch_size: int
    architecture: Architecture
    feature_voxels: int  # the reference's estimate for one sample


def _architecture(topology, dims: int, options: PlannerOptions) -> Architecture:
    n = topology.n_stages
    return Architecture(
        features_per_stage=features_per_stage(n, options.features_base, options.max_features(dims)),
        kernel_sizes=[list(k) for k in topology.kernel_sizes],
        strides=[list(s) for s in topology.strides],
        n_conv_per_stage=[CONV_PER_STAGE] * n,
        n_conv_per_stage_decoder=[CONV_PER_STAGE] * (n - 1),
    )


def _cost(patch, arch: Architecture, in_channels: int, num_classes: int) -> tuple[int, int]:
    voxels = feature_map_voxels(
        patch,
        arch.strides,
        arch.features_per_stage,
        arch.n_conv_per_stage,
        arch.n_conv_per_stage_decoder,
        num_classes,
    )
    params = parameter_count(
        in_channels,
        num_classes,
        arch.features_per_stage,
        arch.kernel_sizes,
        arch.strides,
        arch.n_conv_per_stage,
        arch.n_conv_per_stage_decoder,
    )
    return voxels, params


def plan_network(
    spacing: list[float],
    median_shape: list[float],
    dataset_voxels: float,
    in_channels: int,
    num_classes: int,
    options: PlannerOptions,
    calibration: Calibration | None = None,
) -> NetworkPlan:
    """Patch size, topology and batch size for one configuration (2 or 3 spatial axes).

    Start from the aspect ratio of ``1 / spacing`` at a large volume clipped to the median
    shape; while the network does not fit the budget (or a patch limit), shrink the axis with
    the largest patch / median ratio by one pooling step and recompute the topology.
    """
    dims = len(spacing)
    budget = MemoryBudget(dims, options.gpu_memory_gb, options.memory_model, calibration)
    max_voxels = options.max_patch_voxels(dims)
    patch0 = initial_patch_size(spacing, median_shape, INITIAL_PATCH_VOLUME[dims])
    topology = pool_and_conv_props(spacing, patch0, MIN_FEATURE_MAP, UNLIMITED_POOLS)
    patch = topology.patch_size
    arch = _architecture(topology, dims, options)
    voxels, params = _cost(patch, arch, in_channels, num_classes)

    def too_large() -> bool:
        if max_voxels is not None and math.prod(patch) > max_voxels:
            return True
        return not budget.fits(voxels, params, options.min_batch_size)

    while too_large():
        ratios = [p / m for p, m in zip(patch, median_shape, strict=True)]
        axis = max(i for i, r in enumerate(ratios) if r == max(ratios))  # ties: the last axis
        # step by the divisor of the smaller patch, so that no valid size is skipped
        trial = list(patch)
        trial[axis] -= topology.divisor[axis]
        step = pool_and_conv_props(spacing, trial, MIN_FEATURE_MAP, UNLIMITED_POOLS).divisor[axis]
        if patch[axis] - step < 1:
            raise ToolkitError(
                f"no patch fits the budget ({options.gpu_memory_gb} GB, at most {max_voxels} patch voxels): "
                "raise --gpu-memory or --max-patch-voxels"
            )
        patch = list(patch)
        patch[axis] -= step
        topology = pool_and_conv_props(spacing, patch, MIN_FEATURE_MAP, UNLIMITED_POOLS)
        patch = topology.patch_size
        arch = _architecture(topology, dims, options)
        voxels, params = _cost(patch, arch, in_channels, num_classes)

    batch = budget.batch_size(voxels, params)
    covered = round(dataset_voxels * MAX_DATASET_COVERED / math.prod(patch))
    batch = max(min(batch, covered), options.min_batch_size)
    cap = options.max_batch_size(dims)
    if cap is not None:
        batch = min(batch, cap)
    return NetworkPlan(
        patch_size=[int(p) for p in patch],
        batch_size=int(batch),
        architecture=arch,
        feature_voxels=voxels,
    )


@dataclass
class _Context:
    fingerprint: Fingerprint
    options: PlannerOptions
    calibration: Calibration | None
    normalization: list
    in_channels: int
    num_classes: int


def _configuration(
    ctx: _Context,
    name: str,
    data_identifier: str,
    spatial_dims: int,
    spacing3: list[float],
    median3: list[float],
    dataset_voxels: float,
    batch_dice: bool,
) -> Configuration:
    spacing = spacing3[3 - spatial_dims :]
    median = median3[3 - spatial_dims :]
    net = plan_network(
        spacing,
        median,
        dataset_voxels,
        ctx.in_channels,
        ctx.num_classes,
        ctx.options,
        ctx.calibration,
    )
    return Configuration(
        name=name,
        data_identifier=data_identifier,
        spatial_dims=spatial_dims,  # type: ignore[arg-type]
        target_spacing=[float(s) for s in spacing3],
        median_shape=[int(round(m)) for m in median3],
        patch_size=net.patch_size,
        batch_size=net.batch_size,
        architecture=net.architecture,
        normalization=list(ctx.normalization),
        resampling=Resampling(anisotropy_threshold=ANISOTROPY_THRESHOLD),
        batch_dice=batch_dice,
        deep_supervision_scales=deep_supervision_scales(net.architecture.strides),
    )


def plan_experiment(
    fingerprint: Fingerprint,
    options: PlannerOptions | None = None,
    calibration: Calibration | None = None,
) -> Plans:
    """The plans for a dataset (pure: no disk access)."""
    options = (options or PlannerOptions()).check()
    if options.memory_model == "calibrated" and calibration is None:
        raise ToolkitError(
            "the calibrated memory model needs a calibration (see bench/calibrate_memory.py)"
        )
    if not fingerprint.cases:
        raise ToolkitError("the fingerprint holds no cases")
    spacings, shapes = fingerprint.spacings, fingerprint.shapes_after_crop
    num_classes = len(fingerprint.labels)
    normalization = dataset_normalization(fingerprint)
    ctx = _Context(
        fingerprint,
        options,
        calibration,
        normalization,
        len(fingerprint.channel_names),
        num_classes,
    )

    fullres_spacing = target_spacing(spacings, shapes)
    forward, backward = transpose_axes(fullres_spacing)
    spacing_t = [fullres_spacing[a] for a in forward]
    median = median_resampled_shape(spacings, shapes, fullres_spacing)
    median_t = [median[a] for a in forward]
    n_train = fingerprint.num_training or len(fingerprint.cases)
    dataset_voxels = float(np.prod(median_t, dtype=np.float64) * n_train)

    configurations: dict[str, Configuration] = {}
    fullres = lowres = None
    if median_t[0] != 1:
        fullres = _configuration(
            ctx, "3d_fullres", "3d_fullres", 3, spacing_t, median_t, dataset_voxels, False
        )
        lowres = _plan_lowres(ctx, fullres, spacing_t, median_t, n_train)
        fullres.batch_dice = lowres is not None
    plan_2d = _configuration(ctx, "2d", "2d", 2, spacing_t, median_t, dataset_voxels, True)

    configurations["2d"] = plan_2d
    if lowres is not None:
        lowres.next_stage = "3d_cascade_fullres"
        configurations["3d_lowres"] = lowres
    if fullres is not None:
        configurations["3d_fullres"] = fullres
        if lowres is not None:
            cascade = replace(
                fullres, name="3d_cascade_fullres", previous_stage="3d_lowres", next_stage=None
            )
            configurations["3d_cascade_fullres"] = cascade

    planner = {
        "reproduces": REFERENCE_PLANNER,
        **asdict(options),
    }
    if calibration is not None and options.memory_model == "calibrated":
        planner["calibration"] = asdict(calibration)
    return Plans(
        dataset_name=fingerprint.dataset_name,
        channel_names=dict(fingerprint.channel_names),
        labels=dict(fingerprint.labels),
        regions_class_order=fingerprint.regions_class_order,
        transpose_forward=forward,
        transpose_backward=backward,
        original_median_spacing=[
            float(v) for v in np.median(np.asarray(spacings, dtype=np.float64), axis=0)
        ],
        original_median_shape=[
            int(round(v)) for v in np.median(np.asarray(shapes, dtype=np.float64), axis=0)
        ],
        configurations=configurations,
        planner=planner,
    )


def _plan_lowres(
    ctx: _Context,
    fullres: Configuration,
    spacing_t: list[float],
    median_t: list[float],
    n_train: int,
) -> Configuration | None:
    """Coarser spacing until the patch covers at least a quarter of the median image.

    Anisotropic axes grow first (those more than 2x finer than the coarsest), 3% per step.
    Dropped when it does not shrink the median image at least 2x.
    """
    fullres_spacing = np.asarray(spacing_t, dtype=np.float64)
    median = np.asarray(median_t, dtype=np.float64)
    median_voxels = float(np.prod(median, dtype=np.float64))
    patch_voxels = float(np.prod(fullres.patch_size, dtype=np.float64))
    spacing = fullres_spacing.copy()
    lowres = None
    while patch_voxels / median_voxels < LOWRES_THRESHOLD:
        coarsest = spacing.max()
        thin = coarsest / spacing > 2
        if np.any(thin):
            spacing[thin] *= LOWRES_SPACING_STEP
        else:
            spacing *= LOWRES_SPACING_STEP
        scaled = fullres_spacing / spacing * median
        median_voxels = float(np.prod(scaled, dtype=np.float64))
        lowres = _configuration(
            ctx,
            "3d_lowres",
            "3d_lowres",
            3,
            [float(s) for s in spacing],
            [float(round(v)) for v in scaled],
            median_voxels * n_train,
            False,
        )
        patch_voxels = float(np.prod(lowres.patch_size, dtype=np.float64))
    if float(np.prod(median, dtype=np.float64)) / median_voxels < LOWRES_MIN_SHRINK:
        return None
    return lowres
