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
from collections.abc import Mapping, Sequence
from dataclasses import asdict

import numpy as np

from toolkit.core.cropping import box_slices, crop_to_nonzero
from toolkit.core.labels import target_mask
from toolkit.core.normalization import Normalization, normalize_channel
from toolkit.core.plans import Configuration, Plans
from toolkit.core.resampling import (
    case_target_spacing,
    compute_new_shape,
    resample,
    resample_labels,
    resample_probabilities,
    transpose_spatial,
)
from toolkit.errors import ToolkitError
from toolkit.io.images import Geometry
from toolkit.io.preprocessed import CaseProperties

# bump when the preprocessing of a case changes, so stored cases are recomputed
PREPROCESSING_VERSION = 1
# oversampling locations: at most this many per class, but at least this share of the class
MAX_LOCATIONS_PER_CLASS = 10_000
MIN_LOCATION_COVERAGE = 0.01
LOCATIONS_SEED = 1234
_LOCATION_BLOCK = 1 << 24  # voxels searched at a time for the locations


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


def _normalized(
    image: np.ndarray, norm: Normalization, inside: np.ndarray, channel: int, case: str
) -> np.ndarray:
    try:
        return normalize_channel(image, norm, inside)
    except ToolkitError as exc:  # the data does not suit the scheme: say which case and channel
        raise ToolkitError(f"case {case or '?'}, channel {channel}: {exc.message}") from None


# oversampling locations ----------------------------------------------------------------


def _indices_of(flat: np.ndarray, values: tuple[int, ...]) -> np.ndarray:
    """Ascending flat indices of the voxels holding one of ``values``, searched a block at a
    time: no mask as large as the case."""
    block = _LOCATION_BLOCK
    found = [
        np.flatnonzero(target_mask(flat[start : start + block], values)) + start
        for start in range(0, flat.size, block)
    ]
    return np.concatenate(found) if found else np.empty(0, dtype=np.intp)


def sample_class_locations(
    seg: np.ndarray,
    groups: Mapping[str, Sequence[int]] | Sequence[int],
    seed: int = LOCATIONS_SEED,
) -> dict[str, list[list[int]]]:
    """Per group (a foreground class, a region, the annotated voxels; see
    :meth:`toolkit.core.labels.LabelModel.location_groups`), a seeded sample of the indices of
    the voxels of ``seg`` ``(1, *spatial)`` holding one of its values. A plain list of label
    values means one group per value, keyed by the value.

    At most ``MAX_LOCATIONS_PER_CLASS``, but never fewer than ``MIN_LOCATION_COVERAGE`` of the
    group, so large structures are still covered. Absent groups get an empty list.
    """
    if not isinstance(groups, Mapping):
        groups = {str(v): (v,) for v in sorted({int(v) for v in groups})}
    volume = seg[0]
    rng = np.random.default_rng(seed)
    flat = volume.ravel()
    result: dict[str, list[list[int]]] = {}
    for key, values in groups.items():
        present = _indices_of(flat, tuple(int(v) for v in values))
        total = int(present.size)
        if total == 0:
            result[key] = []
            continue
        take = max(min(MAX_LOCATIONS_PER_CLASS, total), math.ceil(total * MIN_LOCATION_COVERAGE))
        chosen = np.sort(present[rng.choice(total, size=take, replace=False)])
        coords = np.stack(np.unravel_index(chosen, volume.shape), axis=1)
        result[key] = coords.astype(int).tolist()
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
        data = _normalized(cropped[0], norms[0], inside, 0, case)[None]
    else:
        data = np.empty(cropped.shape, dtype=np.float32)
        for c, norm in enumerate(norms):
            data[c] = _normalized(cropped[c], norm, inside, c, case)
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
        locations = sample_class_locations(out_seg, plans.label_model().location_groups())

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
