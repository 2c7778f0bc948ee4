"""The cascade's input, one owner for training, validation and prediction (nnU-Net v2's rules).

The first stage's labels reach the next stage's preprocessed grid of a case in one of two ways:

- for training (:func:`next_stage_labels`; the stored out-of-fold ``predicted_next_stage``
  predictions, which validation reads too): the first stage's *logits* on its own preprocessed
  grid are resampled straight to the next stage's grid with the probability resampler
  (linear, nearest along a coarse axis), then argmaxed. Whether an axis is coarse is decided
  on one spacing, the first stage's, given as both the current and the new spacing.
- for prediction (:func:`segmentation_on_grid`): the first stage's segmentation exported to
  the case's original geometry, as any prediction (resampled logits, argmax, pasted into the
  uncropped extent), is preprocessed as a label map is: cropped to the case's box, transposed,
  resampled with the label resampler from the case's spacing to the next stage's.

Either way the labels enter the next stage's network as one one-hot channel per foreground
label after the image channels (:func:`cascade_channels`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from toolkit.core.cropping import box_slices
from toolkit.core.labels import label_volume, one_hot, storage_dtype
from toolkit.core.plans import Configuration, Plans
from toolkit.core.resampling import (
    case_target_spacing,
    resample_labels,
    resample_probabilities,
    transpose_spatial,
)
from toolkit.io.preprocessed import CaseProperties


def next_stage_labels(
    logits: Sequence[np.ndarray],
    *,
    plans: Plans,
    configuration: Configuration,
    spacing: Sequence[float],
    next_shape: Sequence[int],
) -> np.ndarray:
    """First-stage logits, one ``(*grid)`` array per class -> labels ``(*next_shape)``, in the
    stored label type (:func:`~toolkit.core.labels.storage_dtype`).

    ``configuration`` is the first stage's; ``spacing`` the case's original spacing (before
    transposition; a 2D first stage keeps its slice spacing). One class is resampled at a
    time, keeping a running maximum: the argmax of the resampled logits, ties to the lower
    class. For regions, each region's value (``regions_class_order``) where its resampled
    logit is above 0, later regions written over earlier ones.
    """
    model = plans.label_model()
    spacing_t = [spacing[a] for a in plans.transpose_forward]
    own = case_target_spacing(configuration, spacing_t)
    shape = [int(s) for s in next_shape]
    best = labels = None
    top = max(model.regions_class_order or (plans.num_classes,))
    for c, class_logits in enumerate(logits):
        values = resample_probabilities(
            np.asarray(class_logits, dtype=np.float32)[None],
            shape,
            own,
            own,
            configuration.resampling,
        )[0]
        if model.has_regions:
            if labels is None:
                labels = np.zeros(shape, dtype=storage_dtype(top))
            labels[values > 0] = model.regions_class_order[c]
            continue
        if best is None:
            best, labels = values, np.zeros(shape, dtype=storage_dtype(top))
            continue
        better = values > best
        labels[better] = c
        np.maximum(best, values, out=best)
    if labels is None:
        raise ValueError("no logits given")
    return labels


def segmentation_on_grid(
    segmentation: np.ndarray,
    *,
    plans: Plans,
    configuration: Configuration,
    props: CaseProperties,
) -> np.ndarray:
    """A segmentation in the case's original geometry ``(z, y, x)`` (or ``(1, z, y, x)``) ->
    labels on ``configuration``'s preprocessed grid of the case (``props``), ``(*grid)``.

    Preprocessing marks voxels outside the non-zero mask ``-1``; that marker changes no
    foreground channel (labels are resampled in ascending order, foreground last), so it is
    left out and those voxels stay background.
    """
    volume = label_volume(
        segmentation, props.shape_before_cropping, f"segmentation of case {props.case!r}"
    )
    cropped = transpose_spatial(volume[box_slices(props.crop_bbox)][None], plans.transpose_forward)
    spacing_t = [props.spacing[a] for a in plans.transpose_forward]
    return resample_labels(
        cropped,
        props.shape_after_resampling,
        spacing_t,
        case_target_spacing(configuration, spacing_t),
        configuration.resampling,
    )[0]


def input_channels(plans: Plans, configuration: Configuration) -> int:
    """A network's input channels: the image's, plus for a cascade stage one one-hot channel per
    foreground label value of the first stage (also with regions)."""
    extra = len(plans.label_model().foreground_values) if configuration.is_cascade else 0
    return plans.num_input_channels + extra


def cascade_channels(plans: Plans, previous_labels: np.ndarray) -> np.ndarray:
    """The first stage's labels ``(*grid)`` -> one-hot input channels ``(foreground, *grid)``."""
    return one_hot(previous_labels, plans.label_model().foreground_values)


def with_cascade_channels(
    plans: Plans, data: np.ndarray, previous_labels: np.ndarray
) -> np.ndarray:
    """The network input of a cascade stage: image channels, then the previous stage's."""
    return np.concatenate([data, cascade_channels(plans, previous_labels)])
