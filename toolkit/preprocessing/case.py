"""One case through preprocessing, and a network's output back to the original geometry.

Forward (:func:`preprocess_case`, pure: arrays in, arrays out):
crop to the non-zero region -> transpose (coarsest axis first) -> normalize -> resample to
the configuration's spacing. Normalizing before resampling keeps the non-zero mask exact.
Labels are cropped and resampled alongside; voxels outside the non-zero mask become ``-1``.

Backward (:func:`revert_to_original`, :func:`revert_labels`): resample to the cropped
shape, undo the transpose, paste into the uncropped extent. Inference uses them to bring
probabilities and label maps to the input image's grid.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict

import numpy as np

from toolkit.core.cropping import box_slices, crop_to_nonzero
from toolkit.core.labels import foreground_labels
from toolkit.core.plans import Configuration, Normalization, Plans
from toolkit.core.resampling import (
    case_target_spacing,
    compute_new_shape,
    resample,
    resample_labels,
    resample_probabilities,
    transpose_spatial,
)
from toolkit.io.images import Geometry
from toolkit.io.preprocessed import CaseProperties

# bump when the preprocessing of a case changes, so stored cases are recomputed
PREPROCESSING_VERSION = 1
# oversampling locations: at most this many per class, but at least this share of the class
MAX_LOCATIONS_PER_CLASS = 10_000
MIN_LOCATION_COVERAGE = 0.01
LOCATIONS_SEED = 1234
_LOCATION_BLOCK = 1 << 24  # voxels searched at a time for the locations
_EPS = 1e-8


# normalization -------------------------------------------------------------------------


def normalize_channel(
    image: np.ndarray, norm: Normalization, inside: np.ndarray | None
) -> np.ndarray:
    """One channel as float32. ``inside``: the non-zero mask, used when ``norm.use_nonzero_mask``."""
    image = image.astype(np.float32, copy=True)
    if norm.scheme == "ct":
        if None in (norm.mean, norm.std, norm.lower_bound, norm.upper_bound):
            raise ValueError(
                "CT normalization needs mean, std, lower_bound and upper_bound in the plans"
            )
        np.clip(image, norm.lower_bound, norm.upper_bound, out=image)
        image -= norm.mean
        image /= max(float(norm.std), _EPS)
        return image
    if norm.scheme == "zscore":
        if norm.use_nonzero_mask and inside is not None:
            values = image[inside]
            if values.size:
                mean, std = (
                    float(values.mean(dtype=np.float64)),
                    float(values.std(dtype=np.float64)),
                )
                image[inside] = (values - mean) / max(std, _EPS)
            return image
        mean, std = float(image.mean(dtype=np.float64)), float(image.std(dtype=np.float64))
        image -= mean
        image /= max(std, _EPS)
        return image
    if norm.scheme == "none":
        return image
    raise ValueError(f"unknown normalization scheme {norm.scheme!r}")


# geometry helpers ----------------------------------------------------------------------


def source_record(plans: Plans, configuration: Configuration) -> dict:
    """What a preprocessed case depends on, with a hash to detect stale cases."""
    relevant = {
        "version": PREPROCESSING_VERSION,
        "transpose_forward": list(plans.transpose_forward),
        "labels": dict(plans.labels),
        "channels": dict(plans.channel_names),
        "spatial_dims": configuration.spatial_dims,
        "target_spacing": [float(s) for s in configuration.target_spacing],
        "normalization": [asdict(n) for n in configuration.normalization],
        "resampling": asdict(configuration.resampling),
    }
    digest = hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]
    return {
        "configuration": configuration.name,
        "data_identifier": configuration.data_identifier,
        "hash": digest,
    }


# oversampling locations ----------------------------------------------------------------


def sample_class_locations(
    seg: np.ndarray, labels: Sequence[int], seed: int = LOCATIONS_SEED
) -> dict[str, list[list[int]]]:
    """Per foreground label, a seeded sample of voxel indices of ``seg`` ``(1, *spatial)``.

    At most ``MAX_LOCATIONS_PER_CLASS``, but never fewer than ``MIN_LOCATION_COVERAGE`` of the
    class, so large structures are still covered. Absent labels get an empty list.
    """
    volume = seg[0]
    rng = np.random.default_rng(seed)
    flat = volume.ravel()
    wanted = np.asarray(sorted(set(int(v) for v in labels)), dtype=np.int64)
    # voxels of a wanted label, found a block at a time: no mask as large as the case
    block = _LOCATION_BLOCK
    present_idx = np.concatenate(
        [
            np.flatnonzero(np.isin(flat[start : start + block], wanted)) + start
            for start in range(0, flat.size, block)
        ]
        or [np.empty(0, dtype=np.intp)]
    )
    present_val = flat[present_idx]
    order = np.argsort(present_val, kind="stable")
    present_idx, present_val = present_idx[order], present_val[order]
    result: dict[str, list[list[int]]] = {}
    for label in wanted:
        lo, hi = (
            np.searchsorted(present_val, label, "left"),
            np.searchsorted(present_val, label, "right"),
        )
        total = int(hi - lo)
        if total == 0:
            result[str(int(label))] = []
            continue
        take = max(min(MAX_LOCATIONS_PER_CLASS, total), math.ceil(total * MIN_LOCATION_COVERAGE))
        chosen = np.sort(present_idx[lo:hi][rng.choice(total, size=take, replace=False)])
        coords = np.stack(np.unravel_index(chosen, volume.shape), axis=1)
        result[str(int(label))] = coords.astype(int).tolist()
    return result


# the forward pipeline ------------------------------------------------------------------


def preprocess_case(
    image: np.ndarray,
    geometry: Geometry,
    plans: Plans,
    configuration: Configuration,
    seg: np.ndarray | None = None,
    case: str = "",
) -> tuple[np.ndarray, np.ndarray | None, CaseProperties]:
    """Crop, transpose, normalize and resample one case; no disk access.

    ``image``: ``(c, z, y, x)`` as read (:func:`toolkit.io.images.read_channels`); ``seg``:
    ``(1, z, y, x)`` or ``(z, y, x)`` integer labels, or ``None`` for a case to predict.
    Returns float32 data ``(c, *shape_after_resampling)`` in transposed axis order, int8/int16
    labels ``(1, ...)`` on the same grid (``None`` without labels) and the case's properties,
    with oversampling locations when labels were given.
    """
    if image.ndim != 4:
        raise ValueError(f"image must be (c, z, y, x), got shape {image.shape}")
    if len(configuration.normalization) != image.shape[0]:
        raise ValueError(
            f"configuration {configuration.name!r} normalizes {len(configuration.normalization)} channels, image has {image.shape[0]}"
        )
    if seg is not None:
        seg = np.asarray(seg)
        if seg.ndim == 3:
            seg = seg[None]
        if seg.shape[1:] != image.shape[1:]:
            raise ValueError(
                f"labels of shape {seg.shape[1:]} do not match the image's {image.shape[1:]}"
            )
    spacing = [float(s) for s in geometry.spacing_zyx]
    shape_before = [int(s) for s in image.shape[1:]]
    has_labels = seg is not None

    cropped, cropped_seg, box = crop_to_nonzero(image, seg)
    shape_after_crop = [int(s) for s in cropped.shape[1:]]
    inside = cropped_seg[0] >= 0
    # one channel at a time into one float32 array: no stacked copy of the whole case
    norms = configuration.normalization
    if len(norms) == 1:
        data = normalize_channel(cropped[0], norms[0], inside)[None]
    else:
        data = np.empty(cropped.shape, dtype=np.float32)
        for c, norm in enumerate(norms):
            data[c] = normalize_channel(cropped[c], norm, inside)
    del cropped, inside

    axes = plans.transpose_forward
    data = transpose_spatial(data, axes)
    cropped_seg = transpose_spatial(cropped_seg, axes)
    spacing_t = [spacing[a] for a in axes]
    target = case_target_spacing(configuration, spacing_t)
    new_shape = compute_new_shape(data.shape[1:], spacing_t, target)

    r = configuration.resampling
    data = resample(
        data,
        new_shape,
        spacing_t,
        target,
        r.image_order,
        r.coarse_axis_order,
        r.anisotropy_threshold,
    )
    out_seg = None
    locations: dict[str, list[list[int]]] = {}
    if has_labels:
        out_seg = resample_labels(cropped_seg, new_shape, spacing_t, target, r)
        locations = sample_class_locations(out_seg, foreground_labels(plans.labels))

    props = CaseProperties(
        case=case,
        geometry=geometry.to_dict(),
        spacing=spacing,
        shape_before_cropping=shape_before,
        crop_bbox=box,
        shape_after_cropping=shape_after_crop,
        shape_after_resampling=[int(s) for s in data.shape[1:]],
        class_locations=locations,
        source=source_record(plans, configuration),
    )
    return np.ascontiguousarray(data, dtype=np.float32), out_seg, props


# the way back --------------------------------------------------------------------------


def _back_to_crop_grid(props: CaseProperties, plans: Plans, configuration: Configuration):
    spacing_t = [props.spacing[a] for a in plans.transpose_forward]
    current = case_target_spacing(configuration, spacing_t)
    shape_t = [props.shape_after_cropping[a] for a in plans.transpose_forward]
    return shape_t, current, spacing_t


def _check_grid(array: np.ndarray, props: CaseProperties, what: str) -> None:
    if list(array.shape[1:]) != list(props.shape_after_resampling):
        raise ValueError(
            f"{what} of spatial shape {tuple(array.shape[1:])} is not on case {props.case!r}'s preprocessed grid {tuple(props.shape_after_resampling)}"
        )


def revert_to_original(
    probabilities: np.ndarray, props: CaseProperties, plans: Plans, configuration: Configuration
) -> np.ndarray:
    """Probabilities ``(k, *shape_after_resampling)`` -> ``(k, z, y, x)`` on the original image grid.

    Resampled to the cropped shape (linearly; nearest along a coarse axis), un-transposed
    and pasted into the uncropped extent, where background (class 0) has probability 1.
    Float32.
    """
    _check_grid(probabilities, props, "probabilities")
    shape_t, current, original = _back_to_crop_grid(props, plans, configuration)
    cropped = resample_probabilities(
        probabilities, shape_t, current, original, configuration.resampling
    )
    cropped = transpose_spatial(cropped, plans.transpose_backward)
    full = np.zeros((probabilities.shape[0], *props.shape_before_cropping), dtype=np.float32)
    full[0] = 1.0
    full[(slice(None), *box_slices(props.crop_bbox))] = cropped
    return full


def revert_labels(
    seg: np.ndarray, props: CaseProperties, plans: Plans, configuration: Configuration
) -> np.ndarray:
    """A label map on the preprocessed grid (``(1, ...)`` or spatial only) -> ``(z, y, x)`` uint8/uint16.

    Labels are resampled with the one-hot rule; ``-1`` (outside the non-zero mask) becomes 0.
    """
    volume = seg[None] if seg.ndim == len(props.shape_after_resampling) else seg
    _check_grid(volume, props, "label map")
    shape_t, current, original = _back_to_crop_grid(props, plans, configuration)
    cropped = resample_labels(volume, shape_t, current, original, configuration.resampling)
    cropped = transpose_spatial(cropped, plans.transpose_backward)[0]
    top = int(cropped.max(initial=0))
    out = np.zeros(props.shape_before_cropping, dtype=np.uint8 if top <= 255 else np.uint16)
    out[box_slices(props.crop_bbox)] = np.maximum(cropped, 0)
    return out
