"""``plans.json``: the one contract between planning, preprocessing, training and inference.

A typed dataclass in code and plain, readable JSON on disk. Every stage after planning reads
its configuration from here and from nothing else.

Axis conventions: ``transpose_forward`` permutes the spatial axes of a ``(z, y, x)`` array
(SimpleITK order) so that the coarsest axis comes first; every spatial list in a
:class:`Configuration` (``target_spacing``, ``median_shape``, kernel sizes, strides) is in
that transposed order. 2D configurations work on slices along the first (transposed) axis:
their ``patch_size``, kernels and strides have two entries, for the last two axes.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from toolkit.core.constants import ANISOTROPY_THRESHOLD
from toolkit.core.labels import LabelModel, label_model
from toolkit.core.normalization import Normalization
from toolkit.errors import ToolkitError
from toolkit.io.atomic import write_json
from toolkit.io.confine import name_problem
from toolkit.io.json_files import read_contract
from toolkit.workspace import DatasetPaths

PLANS_FORMAT_VERSION = 1


@dataclass
class Resampling:
    """Interpolation orders; anisotropic cases resample in-plane only along the coarse axis."""

    image_order: int = 3
    label_order: int = 1  # applied to one-hot labels
    probability_order: int = 1  # network probabilities back to the original grid
    coarse_axis_order: int = 0  # order along the coarse axis of anisotropic data
    anisotropy_threshold: float = ANISOTROPY_THRESHOLD


NetworkFamily = Literal["plain", "residual_encoder"]
NETWORK_FAMILIES: tuple[str, ...] = typing.get_args(NetworkFamily)
DEFAULT_PLANNER = "default"
# the planners (planning/planners.py), cheapest network first: the order of simplicity
# among configurations of the same kind (model selection's tie rule)
PLANNER_NAMES = (DEFAULT_PLANNER, "resenc-m", "resenc-l", "resenc-xl")


@dataclass
class Architecture:
    """The U-Net of a configuration, as data.

    ``plain`` (nnU-Net's ``PlainConvUNet``): per encoder stage ``n_conv_per_stage`` blocks of
    conv -> instance norm -> leaky ReLU. ``residual_encoder`` (nnU-Net's
    ``ResidualEncoderUNet``): a stem conv block, then per encoder stage
    ``n_blocks_per_stage`` residual basic blocks (two conv blocks and a skip, see
    :mod:`toolkit.nets.residual_unet`); ``n_conv_per_stage`` stays empty. Both have the same
    plain decoder (``n_conv_per_stage_decoder`` conv blocks per stage).
    """

    features_per_stage: list[int]
    kernel_sizes: list[list[int]]
    strides: list[list[int]]  # stride of each stage's first conv; stage 0 is all ones
    n_conv_per_stage: list[int]
    n_conv_per_stage_decoder: list[int]
    network: NetworkFamily = "plain"
    n_blocks_per_stage: list[int] = field(default_factory=list)  # residual_encoder only

    @property
    def n_stages(self) -> int:
        return len(self.features_per_stage)

    @property
    def encoder_blocks(self) -> list[int]:
        """Blocks per encoder stage: conv blocks (plain) or residual blocks (residual encoder)."""
        return (
            self.n_blocks_per_stage if self.network == "residual_encoder" else self.n_conv_per_stage
        )

    def check(self) -> Architecture:
        """One entry per stage in every list, as the network family needs (``ValueError`` if not)."""
        n = self.n_stages
        if self.network not in NETWORK_FAMILIES:
            raise ValueError(
                f"network must be one of {', '.join(NETWORK_FAMILIES)}, not {self.network!r}"
            )
        if not (len(self.kernel_sizes) == len(self.strides) == len(self.encoder_blocks) == n):
            blocks = (
                "n_blocks_per_stage" if self.network == "residual_encoder" else "n_conv_per_stage"
            )
            raise ValueError(
                f"architecture: features_per_stage, kernel_sizes, strides and {blocks} need one entry per stage"
            )
        if self.network == "residual_encoder" and self.n_conv_per_stage:
            raise ValueError(
                "architecture: a residual encoder has n_blocks_per_stage, not n_conv_per_stage"
            )
        if len(self.n_conv_per_stage_decoder) != n - 1:
            raise ValueError(
                f"architecture: n_conv_per_stage_decoder needs {n - 1} entries, got {len(self.n_conv_per_stage_decoder)}"
            )
        return self


def deep_supervision_scales(strides: Sequence[Sequence[int]]) -> list[list[float]]:
    """Scale of the label for each decoder output, highest resolution first (all but the bottleneck)."""
    scales = []
    cumulative = [1] * len(strides[0])
    for stride in strides[:-1]:
        cumulative = [c * s for c, s in zip(cumulative, stride, strict=True)]
        scales.append([1.0 / c for c in cumulative])
    return scales


@dataclass
class Configuration:
    name: str
    data_identifier: (
        str  # folder under preprocessed/ (the cascade's full-res stage shares 3d_fullres's)
    )
    spatial_dims: Literal[2, 3]
    target_spacing: list[float]  # 3 values, transposed order
    median_shape: list[int]  # 3 values, voxels after resampling to target_spacing
    patch_size: list[int]  # spatial_dims values
    batch_size: int
    architecture: Architecture
    normalization: list[Normalization]  # one per input channel
    resampling: Resampling = field(default_factory=Resampling)
    batch_dice: bool = False
    # per decoder output, highest resolution first: the scale of the label for that output
    deep_supervision_scales: list[list[float]] = field(default_factory=list)
    previous_stage: str | None = None  # the cascade's low-res configuration
    next_stage: str | None = None
    # the planner that made it (planning/planners.py); other than the default, its name
    # ends the configuration's name: "3d_fullres-resenc-l" (see `configuration_name`)
    planner: str = DEFAULT_PLANNER

    @property
    def is_cascade(self) -> bool:
        return self.previous_stage is not None

    @property
    def base_name(self) -> str:
        """The name without its planner: "3d_fullres" for "3d_fullres-resenc-l"."""
        suffix = configuration_name("", self.planner)
        return self.name.removesuffix(suffix) if suffix else self.name


def configuration_name(base: str, planner: str) -> str:
    """A configuration's name in a plan holding several planners' configurations: the
    default planner's keep the method's names, another planner's end with ``-<planner>``
    ("3d_fullres-resenc-l"), so their model folders, candidates and ensembles sit side by
    side with the default ones."""
    return base if planner == DEFAULT_PLANNER else f"{base}-{planner}"


def split_configuration_name(name: str) -> tuple[str, str]:
    """``(base, planner)`` of a configuration name: the inverse of :func:`configuration_name`
    for the planners of ``PLANNER_NAMES`` (any other name is the default planner's)."""
    for planner in PLANNER_NAMES[1:]:
        suffix = configuration_name("", planner)
        if name.endswith(suffix) and len(name) > len(suffix):
            return name.removesuffix(suffix), planner
    return name, DEFAULT_PLANNER


@dataclass
class Plans:
    dataset_name: str
    channel_names: dict[str, str]  # {"0": "T2", ...}
    labels: dict[str, int | list[int]]  # {"background": 0, ...}; a region: name -> values
    transpose_forward: list[int]
    transpose_backward: list[int]
    original_median_spacing: list[float]  # (z, y, x), before transposing
    original_median_shape: list[int]  # after cropping, before resampling, (z, y, x)
    configurations: dict[str, Configuration]
    planner: dict[str, Any] = field(default_factory=dict)  # preset, memory budget, options used
    format_version: int = PLANS_FORMAT_VERSION
    regions_class_order: list[int] | None = None  # with regions: the value each one writes

    @property
    def num_input_channels(self) -> int:
        return len(self.channel_names)

    def label_model(self) -> LabelModel:
        """What the labels mean: classes or regions, the ignore label (:mod:`toolkit.core.labels`)."""
        return label_model(self.labels, self.regions_class_order)

    @property
    def num_classes(self) -> int:
        """Output channels of the network: one per region, or background plus every class."""
        return self.label_model().num_outputs

    def configuration(self, name: str) -> Configuration:
        try:
            return self.configurations[name]
        except KeyError:
            available = ", ".join(self.configurations) or "none"
            raise ToolkitError(
                f"configuration {name!r} is not in the plans (available: {available})"
            ) from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plans:
        return check_folder_names(_build(cls, data))

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Plans:
        return read_contract(
            path,
            cls.from_dict,
            what="plans",
            producer="toolkit plan",
            version_key="format_version",
            version=PLANS_FORMAT_VERSION,
        )


def check_folder_names(plans: Plans) -> Plans:
    """``plans`` when every name that becomes a folder (a configuration's, its stages', its
    data identifier) is one plain name; else ``ValueError`` (plans come from files, model
    archives included: ``models/<config>``, ``preprocessed/<data_identifier>`` stay inside)."""
    if not isinstance(plans, Plans) or not isinstance(plans.configurations, dict):
        raise TypeError("plans must be an object with 'configurations'")
    for key, config in plans.configurations.items():
        named = {"configuration": key, "its name": config.name}
        named |= {"data_identifier": config.data_identifier}
        named |= {"previous_stage": config.previous_stage, "next_stage": config.next_stage}
        for what, name in named.items():
            if name is None and what.endswith("_stage"):
                continue
            problem = name_problem(name)
            if problem is not None:
                raise ValueError(f"configuration {key!r}: {what} {name!r} {problem}")
    return plans


def dataset_plans(paths: DatasetPaths) -> Plans:
    """A workspace dataset's ``plans.json``; missing, it says to run ``toolkit plan``."""
    return Plans.load(paths.require(paths.plans_json, f"toolkit plan {paths.name}"))


def _build(tp: Any, value: Any) -> Any:
    """Rebuild nested dataclasses from JSON types, checking required fields."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            raise TypeError(f"{tp.__name__} must be an object, not {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        kwargs = {}
        for f in dataclasses.fields(tp):
            if f.name in value:
                kwargs[f.name] = _build(hints[f.name], value[f.name])
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise KeyError(f"{tp.__name__}.{f.name} is missing")
        return tp(**kwargs)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _build(args[0], value)
    if origin is dict:
        _, vt = typing.get_args(tp)
        return {str(k): _build(vt, v) for k, v in value.items()}
    if origin is list:
        (it,) = typing.get_args(tp)
        return [_build(it, v) for v in value]
    return value
