"""From a fingerprint to ``plans.json``: the 2d, 3d_fullres, 3d_lowres and 3d_cascade_fullres configurations.

The default reproduces nnU-Net v2 (2.8.1)'s ``ExperimentPlanner`` for the same fingerprint,
the ``resenc-m|l|xl`` planners its ``nnUNetPlannerResEnc{M,L,XL}`` (``planners.py``): same
order of decisions, same numbers. Several planners plan side by side into one plan, each
into its own configurations (``3d_fullres``, ``3d_fullres-resenc-l``, ...). Options (a
preset, explicit limits, a memory budget, the calibrated memory model) are recorded in
``Plans.planner``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

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
    feature_map_voxels,
    parameter_count,
    residual_feature_map_voxels,
    residual_parameter_count,
)
from toolkit.planning.options import PRESETS, PlannerOptions, preset
from toolkit.planning.planners import PLANNERS, NetworkPlanner, get_planner
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

__all__ = [
    "PLANNERS",
    "PRESETS",
    "NetworkPlan",
    "PlannerOptions",
    "plan_experiment",
    "plan_network",
    "preset",
]

REFERENCE = "nnU-Net v2 2.8.1"
INITIAL_PATCH_VOLUME = {3: 256**3, 2: 2048**2}
LOWRES_THRESHOLD = 0.25  # 3d_lowres when the full-res patch covers less of the median image
LOWRES_SPACING_STEP = 1.03
LOWRES_MIN_SHRINK = 2.0  # drop 3d_lowres unless it shrinks the data at least this much


@dataclass(frozen=True)
class NetworkPlan:
    """What the patch/topology search settles on for one configuration."""

    patch_size: list[int]
    batch_size: int
    architecture: Architecture
    feature_voxels: int  # the reference's estimate for one sample


def _architecture(
    topology, dims: int, options: PlannerOptions, planner: NetworkPlanner
) -> Architecture:
    n = topology.n_stages
    if n > len(planner.blocks_encoder):
        raise ToolkitError(
            f"the {planner.name} planner plans at most {len(planner.blocks_encoder)} stages, this patch needs {n}"
        )
    residual = planner.network == "residual_encoder"
    blocks = planner.encoder_blocks(n)
    return Architecture(
        features_per_stage=features_per_stage(n, options.features_base, options.max_features(dims)),
        kernel_sizes=[list(k) for k in topology.kernel_sizes],
        strides=[list(s) for s in topology.strides],
        n_conv_per_stage=[] if residual else blocks,
        n_conv_per_stage_decoder=planner.decoder_blocks(n),
        network=planner.network,
        n_blocks_per_stage=blocks if residual else [],
    )


def network_cost(patch, arch: Architecture, in_channels: int, num_classes: int) -> tuple[int, int]:
    """The reference's feature-map voxels of one sample, and the parameters, of either family."""
    residual = arch.network == "residual_encoder"
    count_voxels = residual_feature_map_voxels if residual else feature_map_voxels
    count_parameters = residual_parameter_count if residual else parameter_count
    voxels = count_voxels(
        patch,
        arch.strides,
        arch.features_per_stage,
        arch.encoder_blocks,
        arch.n_conv_per_stage_decoder,
        num_classes,
    )
    params = count_parameters(
        in_channels,
        num_classes,
        arch.features_per_stage,
        arch.kernel_sizes,
        arch.strides,
        arch.encoder_blocks,
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
    planner: NetworkPlanner | None = None,
) -> NetworkPlan:
    """Patch size, topology and batch size for one configuration (2 or 3 spatial axes).

    Start from the aspect ratio of ``1 / spacing`` at a large volume clipped to the median
    shape; while the network does not fit the budget (or a patch limit), shrink the axis with
    the largest patch / median ratio by one pooling step and recompute the topology.
    """
    dims = len(spacing)
    planner = planner or PLANNERS["default"]
    memory_gb = options.memory_gb(planner.name)
    budget = MemoryBudget(
        dims,
        memory_gb,
        options.memory_model,
        calibration,
        reference=planner.reference_value(dims),
        reference_gb=planner.reference_gb,
        fit_at_min_batch=planner.fit_at_min_batch,
    )
    max_voxels = options.max_patch_voxels(dims)
    patch0 = initial_patch_size(spacing, median_shape, INITIAL_PATCH_VOLUME[dims])
    topology = pool_and_conv_props(spacing, patch0, MIN_FEATURE_MAP, UNLIMITED_POOLS)
    patch = topology.patch_size
    arch = _architecture(topology, dims, options, planner)
    voxels, params = network_cost(patch, arch, in_channels, num_classes)

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
                f"no patch fits the budget ({memory_gb:g} GB, at most {max_voxels} patch voxels): "
                "raise --gpu-memory or --max-patch-voxels"
            )
        patch = list(patch)
        patch[axis] -= step
        topology = pool_and_conv_props(spacing, patch, MIN_FEATURE_MAP, UNLIMITED_POOLS)
        patch = topology.patch_size
        arch = _architecture(topology, dims, options, planner)
        voxels, params = network_cost(patch, arch, in_channels, num_classes)

    batch = budget.batch_size(voxels, params)
    covered = round(dataset_voxels * planner.max_dataset_covered / math.prod(patch))
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
    planner: NetworkPlanner


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
        ctx.planner,
    )
    return Configuration(
        name=ctx.planner.configuration_name(name),
        data_identifier=ctx.planner.data_identifier(data_identifier),
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
        planner=ctx.planner.name,
    )


def plan_experiment(
    fingerprint: Fingerprint,
    options: PlannerOptions | None = None,
    calibration: Calibration | None = None,
) -> Plans:
    """The plans for a dataset (pure: no disk access): every planner of ``options.planners``
    plans its configurations from the same spacing, axis order and normalization."""
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

    fullres_spacing = target_spacing(spacings, shapes)
    forward, backward = transpose_axes(fullres_spacing)
    spacing_t = [fullres_spacing[a] for a in forward]
    median = median_resampled_shape(spacings, shapes, fullres_spacing)
    median_t = [median[a] for a in forward]
    n_train = fingerprint.num_training or len(fingerprint.cases)
    dataset_voxels = float(np.prod(median_t, dtype=np.float64) * n_train)

    configurations: dict[str, Configuration] = {}
    for name in options.planners:
        ctx = _Context(
            fingerprint,
            options,
            calibration,
            normalization,
            len(fingerprint.channel_names),
            num_classes,
            get_planner(name),
        )
        configurations.update(
            _planner_configurations(ctx, spacing_t, median_t, dataset_voxels, n_train)
        )

    planners = [get_planner(name) for name in options.planners]
    planner = {
        "reproduces": f"{REFERENCE} " + " + ".join(p.reproduces for p in planners),
        **asdict(options),
        "planners": list(options.planners),
        "memory_gb": {p.name: options.memory_gb(p.name) for p in planners},
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


def _planner_configurations(
    ctx: _Context,
    spacing_t: list[float],
    median_t: list[float],
    dataset_voxels: float,
    n_train: int,
) -> dict[str, Configuration]:
    """One planner's configurations, named by :func:`~toolkit.core.plans.configuration_name`."""
    name = ctx.planner.configuration_name
    configurations: dict[str, Configuration] = {}
    fullres = lowres = None
    if median_t[0] != 1:
        fullres = _configuration(
            ctx, "3d_fullres", "3d_fullres", 3, spacing_t, median_t, dataset_voxels, False
        )
        lowres = _plan_lowres(ctx, fullres, spacing_t, median_t, n_train)
        fullres.batch_dice = lowres is not None
    plan_2d = _configuration(ctx, "2d", "2d", 2, spacing_t, median_t, dataset_voxels, True)

    configurations[plan_2d.name] = plan_2d
    if lowres is not None:
        lowres.next_stage = name("3d_cascade_fullres")
        configurations[lowres.name] = lowres
    if fullres is not None:
        configurations[fullres.name] = fullres
        if lowres is not None:
            cascade = replace(
                fullres,
                name=name("3d_cascade_fullres"),
                previous_stage=lowres.name,
                next_stage=None,
            )
            configurations[cascade.name] = cascade
    return configurations


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
