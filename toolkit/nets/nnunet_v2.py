"""Models trained by nnU-Net v2, read into our :class:`Plans` and networks.

An nnU-Net v2 model folder (``<Trainer>__<Plans>__<configuration>/``) holds ``plans.json``,
``dataset.json``, ``dataset_fingerprint.json`` and ``fold_k/checkpoint_final.pth``. Its
``PlainConvUNet`` is the same network as ours (strided-conv encoder, transposed-conv decoder,
conv -> instance norm -> leaky ReLU blocks, one 1x1 head per decoder stage); only the names
of the parameters differ, so its weights are renamed key by key and loaded strictly. Its
``ResidualEncoderUNet`` (the ResEnc M/L/XL plans, ``nnUNetResEncUNet{M,L,XL}Plans``) is our
``residual_encoder`` network, with the same parameter names.

Its ``plans.json`` maps onto ours: the configuration's spacing, patch, network topology,
per-channel normalization (every scheme of nnU-Net v2: ``CTNormalization`` with the plan's
foreground intensity statistics, ``ZScoreNormalization`` with or without the non-zero mask,
``NoNormalization``, ``RescaleTo01Normalization``, ``RGBTo01Normalization``; the table is
:mod:`toolkit.core.normalization`'s) and resampling orders. Anything our pipeline would compute
differently (another network class, region-based labels, other resampling functions, an image
reader other than SimpleITK's or the 2D natural-image one) is refused with an error that names
it, rather than predicted wrongly.

Its checkpoints and their weights are read by :mod:`toolkit.nets.nnunet_v2_weights`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from toolkit.core.constants import ANISOTROPY_THRESHOLD, INSTANCE_NORM_EPS, LEAKY_RELU_SLOPE
from toolkit.core.labels import label_model
from toolkit.core.normalization import NNUNET_CLASS_NAMES, scheme_of_nnunet_class
from toolkit.core.plans import (
    Architecture,
    Configuration,
    Normalization,
    Plans,
    Resampling,
    check_folder_names,
    deep_supervision_scales,
)
from toolkit.errors import ToolkitError
from toolkit.io.json_files import read_json
from toolkit.nets.nnunet_v2_weights import NNUNET_CHECKPOINT_SUFFIX

PLANS_FILE = "plans.json"
DATASET_FILE = "dataset.json"
FINGERPRINT_FILE = "dataset_fingerprint.json"
# nnU-Net's network classes -> our network families
SUPPORTED_NETWORKS = {"PlainConvUNet": "plain", "ResidualEncoderUNet": "residual_encoder"}
SUPPORTED_RESAMPLING = "resample_data_or_seg_to_shape"
# readers whose arrays are in our axis order (NaturalImage2DIO: (c, 1, y, x), spacing 999, 1, 1)
SUPPORTED_READERS = ("SimpleITKIO", "SimpleITKIOWithReorient", "NaturalImage2DIO")


# --------------------------------------------------------------------------- detection


def is_nnunet_v2_model_dir(path: str | Path) -> bool:
    """An nnU-Net v2 model folder: its plans (with ``plans_name``), dataset.json and ``fold_*/*.pth``."""
    path = Path(path)
    plans = path / PLANS_FILE
    if not plans.is_file() or not (path / DATASET_FILE).is_file():
        return False
    try:
        data = json.loads(plans.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if not isinstance(data, dict) or "plans_name" not in data or "format_version" in data:
        return False
    return any(path.glob(f"fold_*/*{NNUNET_CHECKPOINT_SUFFIX}"))


# --------------------------------------------------------------------------- plans


def _resolve(configurations: Mapping[str, Any], name: str, source: Path | None) -> dict[str, Any]:
    """A configuration with its ``inherits_from`` chain applied."""
    seen: list[str] = []
    chain = []
    current: str | None = name
    while current is not None:
        if current in seen:
            raise ToolkitError(
                f"configuration {name!r} inherits in a circle ({' -> '.join([*seen, current])})",
                source,
            )
        if current not in configurations:
            raise ToolkitError(
                f"configuration {current!r} is not in the plans (available: {', '.join(configurations)})",
                source,
            )
        seen.append(current)
        chain.append(configurations[current])
        current = configurations[current].get("inherits_from")
    merged: dict[str, Any] = {}
    for part in reversed(chain):
        merged.update(part)
    merged.pop("inherits_from", None)
    return merged


def _untranspose(values: list, transpose_forward: list[int]) -> list:
    out = [None] * len(values)
    for i, axis in enumerate(transpose_forward):
        out[axis] = values[i]
    return out


def _normalizations(
    config: Mapping[str, Any], intensity: Mapping[str, Any], channels: int, source: Path | None
) -> list[Normalization]:
    schemes = config.get("normalization_schemes", [])
    masks = config.get("use_mask_for_norm", [False] * len(schemes))
    if len(schemes) != channels:
        raise ToolkitError(
            f"plans give {len(schemes)} normalization schemes for {channels} input channels", source
        )
    result = []
    for c, (scheme, mask) in enumerate(zip(schemes, masks, strict=True)):
        ours = scheme_of_nnunet_class(str(scheme))
        if ours is None:
            raise ToolkitError(
                f"channel {c} uses normalization {scheme!r}, which the toolkit does not implement (supported: {', '.join(NNUNET_CLASS_NAMES.values())})",
                source,
            )
        if ours == "ct":
            props = intensity.get(str(c))
            if props is None:
                raise ToolkitError(
                    f"CTNormalization of channel {c} needs foreground_intensity_properties_per_channel['{c}']",
                    source,
                )
            result.append(
                Normalization(
                    "ct",
                    use_nonzero_mask=bool(mask),
                    mean=float(props["mean"]),
                    std=float(props["std"]),
                    lower_bound=float(props["percentile_00_5"]),
                    upper_bound=float(props["percentile_99_5"]),
                )
            )
        else:
            result.append(Normalization(ours, use_nonzero_mask=bool(mask)))  # type: ignore[arg-type]
    return result


def _resampling(config: Mapping[str, Any], source: Path | None) -> Resampling:
    for key in ("resampling_fn_data", "resampling_fn_seg", "resampling_fn_probabilities"):
        fn = config.get(key, SUPPORTED_RESAMPLING)
        if fn != SUPPORTED_RESAMPLING:
            raise ToolkitError(f"{key} is {fn!r}; only {SUPPORTED_RESAMPLING} is supported", source)
    data = config.get("resampling_fn_data_kwargs", {})
    seg = config.get("resampling_fn_seg_kwargs", {})
    prob = config.get("resampling_fn_probabilities_kwargs", {})
    for name, kwargs in (("data", data), ("seg", seg), ("probabilities", prob)):
        if kwargs.get("force_separate_z") is not None:
            raise ToolkitError(
                f"resampling_fn_{name}_kwargs forces separate z ({kwargs['force_separate_z']}); only the automatic rule is supported",
                source,
            )
    orders_z = {int(k.get("order_z", 0)) for k in (data, seg, prob)}
    if len(orders_z) != 1:
        raise ToolkitError(
            f"resampling uses different orders along the coarse axis {sorted(orders_z)}; one is supported",
            source,
        )
    return Resampling(
        image_order=int(data.get("order", 3)),
        label_order=int(seg.get("order", 1)),
        probability_order=int(prob.get("order", 1)),
        coarse_axis_order=orders_z.pop(),
        anisotropy_threshold=ANISOTROPY_THRESHOLD,
    )


def _architecture(config: Mapping[str, Any], source: Path | None) -> Architecture:
    arch = config.get("architecture")
    if not isinstance(arch, dict):
        raise ToolkitError(
            "configuration has no 'architecture' (nnU-Net < 2.4 plans are not supported)", source
        )
    cls = str(arch.get("network_class_name", ""))
    network = SUPPORTED_NETWORKS.get(cls.rsplit(".", 1)[-1])
    if network is None:
        raise ToolkitError(
            f"network {cls!r} is not supported; only {' and '.join(SUPPORTED_NETWORKS)} map onto the toolkit's networks",
            source,
        )
    kw = arch["arch_kwargs"]
    problems = []
    if kw.get("block") is not None and not str(kw["block"]).endswith("BasicBlockD"):
        problems.append(f"block {kw['block']}")
    if kw.get("bottleneck_channels") is not None:
        problems.append("bottleneck channels")
    if kw.get("stem_channels") not in (None, kw["features_per_stage"][0]):
        problems.append(f"stem_channels {kw['stem_channels']}")
    if kw.get("nonlin_first"):
        problems.append("nonlin before norm")
    if not kw.get("conv_bias", False):
        problems.append("conv_bias is false")
    if "InstanceNorm" not in str(kw.get("norm_op", "")):
        problems.append(f"norm_op {kw.get('norm_op')}")
    if not (kw.get("norm_op_kwargs") or {}).get("affine", False):
        problems.append("instance norm without affine parameters")
    if "LeakyReLU" not in str(kw.get("nonlin", "")):
        problems.append(f"nonlin {kw.get('nonlin')}")
    slope = (kw.get("nonlin_kwargs") or {}).get("negative_slope", LEAKY_RELU_SLOPE)
    if abs(float(slope) - LEAKY_RELU_SLOPE) > 1e-12:
        problems.append(f"leaky ReLU slope {slope}")
    if kw.get("dropout_op"):
        problems.append("dropout")
    eps = float((kw.get("norm_op_kwargs") or {}).get("eps", INSTANCE_NORM_EPS))
    if abs(eps - INSTANCE_NORM_EPS) > 1e-12:
        problems.append(f"norm eps {eps}")
    if problems:
        raise ToolkitError(
            f"{cls.rsplit('.', 1)[-1]} differs from the toolkit's network: {', '.join(problems)}",
            source,
        )
    n = int(kw["n_stages"])

    def per_stage(key: str, count: int) -> list[int]:
        value = kw[key]
        return [int(c) for c in (value if isinstance(value, list | tuple) else [value] * count)]

    residual = network == "residual_encoder"
    blocks = per_stage("n_blocks_per_stage" if residual else "n_conv_per_stage", n)
    try:
        return Architecture(
            features_per_stage=[int(f) for f in kw["features_per_stage"]],
            kernel_sizes=[[int(k) for k in ks] for ks in kw["kernel_sizes"]],
            strides=[[int(s) for s in st] for st in kw["strides"]],
            n_conv_per_stage=[] if residual else blocks,
            n_conv_per_stage_decoder=per_stage("n_conv_per_stage_decoder", n - 1),
            network=network,  # type: ignore[arg-type]
            n_blocks_per_stage=blocks if residual else [],
        ).check()
    except ValueError as exc:
        raise ToolkitError(str(exc), source) from None


def _labels(
    dataset: Mapping[str, Any], source: Path | None
) -> tuple[dict[str, int | list[int]], list[int] | None]:
    """``labels`` (regions kept as lists, in their order) and ``regions_class_order``, checked
    by :func:`toolkit.core.labels.label_model` as for our own datasets."""
    labels = dataset.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise ToolkitError("dataset.json has no 'labels'", source)
    if all(isinstance(v, str) for v in labels.values()):  # old style: value -> name
        labels = {name: int(value) for value, name in labels.items()}
    converted: dict[str, int | list[int]] = {
        str(k): [int(x) for x in v] if isinstance(v, list | tuple) else int(v)
        for k, v in labels.items()
    }
    order = dataset.get("regions_class_order")
    order = None if order is None else [int(v) for v in order]
    model = label_model(converted, order, source)
    if not model.has_regions:
        order = None  # nnU-Net v2 ignores it without regions
        converted = dict(sorted(converted.items(), key=lambda kv: kv[1]))
    return converted, order


def convert_plans(
    plans: Mapping[str, Any], dataset: Mapping[str, Any], source: Path | None = None
) -> Plans:
    """nnU-Net v2's ``plans.json`` + ``dataset.json`` as our :class:`Plans`.

    Every configuration whose network maps onto ours is converted; the others are left out
    (asking for one of them raises the reason). Spatial lists stay in transposed order, as
    in both formats.
    """
    reader = str(plans.get("image_reader_writer", "SimpleITKIO"))
    if reader not in SUPPORTED_READERS:
        raise ToolkitError(
            f"images were read with {reader}; only {', '.join(SUPPORTED_READERS)} give the toolkit's axis order",
            source,
        )
    channels = dataset.get("channel_names", dataset.get("modality"))
    if not isinstance(channels, dict) or not channels:
        raise ToolkitError("dataset.json has no 'channel_names'", source)
    channel_names = {str(k): str(v) for k, v in sorted(channels.items(), key=lambda kv: int(kv[0]))}
    transpose_forward = [int(a) for a in plans["transpose_forward"]]
    transpose_backward = [int(a) for a in plans["transpose_backward"]]
    median_spacing_t = [float(s) for s in plans["original_median_spacing_after_transp"]]
    median_shape_t = [int(round(float(s))) for s in plans["original_median_shape_after_transp"]]
    intensity = plans.get("foreground_intensity_properties_per_channel", {})

    configurations: dict[str, Configuration] = {}
    skipped: dict[str, str] = {}
    for name in plans["configurations"]:
        try:
            config = _resolve(plans["configurations"], name, source)
            configurations[name] = _configuration(
                name,
                config,
                median_spacing_t,
                median_shape_t,
                intensity,
                len(channel_names),
                source,
            )
        except ToolkitError as exc:
            skipped[name] = exc.message
    labels, regions_class_order = _labels(dataset, source)
    return Plans(
        dataset_name=str(plans.get("dataset_name", dataset.get("name", ""))),
        channel_names=channel_names,
        labels=labels,
        regions_class_order=regions_class_order,
        transpose_forward=transpose_forward,
        transpose_backward=transpose_backward,
        original_median_spacing=[
            float(v) for v in _untranspose(median_spacing_t, transpose_forward)
        ],
        original_median_shape=[int(v) for v in _untranspose(median_shape_t, transpose_forward)],
        configurations=configurations,
        planner={
            "source": "nnU-Net v2",
            "plans_name": plans.get("plans_name"),
            "experiment_planner": plans.get("experiment_planner_used"),
            "not_converted": skipped,
        },
    )


def _configuration(
    name: str,
    config: Mapping[str, Any],
    median_spacing_t: list[float],
    median_shape_t: list[int],
    intensity: Mapping[str, Any],
    channels: int,
    source: Path | None,
) -> Configuration:
    patch = [int(p) for p in config["patch_size"]]
    dims = len(patch)
    if dims not in (2, 3):
        raise ToolkitError(f"configuration {name!r} has a {dims}D patch", source)
    spacing = [float(s) for s in config["spacing"]]
    median = [int(round(float(s))) for s in config["median_image_size_in_voxels"]]
    if dims == 2:
        # a 2D configuration keeps each case's own spacing along the slice axis
        spacing = [median_spacing_t[0], *spacing[-2:]]
        median = [median_shape_t[0], *median[-2:]]
    architecture = _architecture(config, source)
    next_stage = config.get("next_stage")
    if isinstance(next_stage, list):
        next_stage = next_stage[0] if next_stage else None
    return Configuration(
        name=name,
        data_identifier=str(config.get("data_identifier", name)),
        spatial_dims=dims,  # type: ignore[arg-type]
        target_spacing=spacing,
        median_shape=median,
        patch_size=patch,
        batch_size=int(config.get("batch_size", 2)),
        architecture=architecture,
        normalization=_normalizations(config, intensity, channels, source),
        resampling=_resampling(config, source),
        batch_dice=bool(config.get("batch_dice", False)),
        deep_supervision_scales=deep_supervision_scales(architecture.strides),
        previous_stage=config.get("previous_stage"),
        next_stage=next_stage,
    )


def load_nnunet_plans(model_dir: str | Path) -> Plans:
    """The plans of an nnU-Net v2 model folder, as ours."""
    model_dir = Path(model_dir)
    plans = read_json(model_dir / PLANS_FILE, what="nnU-Net v2 plans")
    dataset = read_json(model_dir / DATASET_FILE, what="dataset.json")
    try:
        return check_folder_names(convert_plans(plans, dataset, model_dir / PLANS_FILE))
    except (KeyError, TypeError, ValueError) as exc:
        raise ToolkitError(f"malformed nnU-Net v2 plans ({exc})", model_dir / PLANS_FILE) from None


def sibling_model_dir(
    model_dir: Path, trainer_name: str, plans_name: str, configuration: str
) -> Path:
    """The folder nnU-Net v2 gives the same trainer and plans for another configuration."""
    return model_dir.parent / f"{trainer_name}__{plans_name}__{configuration}"
