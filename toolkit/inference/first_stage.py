"""A cascade stage's extra input at prediction time, as nnU-Net v2's predictor makes it.

A raw case takes the first stage's segmentation in the case's original geometry: given by
the caller (nnU-Net's folder of previous-stage predictions), or predicted here by the first
stage's own predictor and exported as any prediction is (no postprocessing). It is brought to
the stage's preprocessed grid as a label map is preprocessed
(:func:`toolkit.core.cascade.segmentation_on_grid`). A preprocessed case takes labels already
on its grid (training's stored ``predicted_next_stage``). Either way they enter the network as
one-hot channels after the image's (:func:`toolkit.core.cascade.cascade_channels`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from toolkit.core.cascade import cascade_channels, segmentation_on_grid
from toolkit.core.labels import label_volume
from toolkit.core.plans import Configuration, Plans
from toolkit.errors import ToolkitError
from toolkit.io.images import Geometry
from toolkit.io.preprocessed import CaseProperties


class Segmentation(Protocol):
    labels: np.ndarray  # (z, y, x), the input's grid


class CascadeStage(Protocol):
    """What this module needs of a stage's :class:`~toolkit.inference.predictor.Predictor`."""

    @property
    def plans(self) -> Plans: ...

    @property
    def configuration(self) -> Configuration: ...

    @property
    def previous_stage(self) -> CascadeStage | None: ...

    def predict_case(
        self,
        image: np.ndarray,
        geometry: Geometry,
        previous_stage: np.ndarray | None = None,
        with_probabilities: bool = True,
        on_windows: Callable[[int], None] | None = None,
    ) -> Segmentation: ...


def channels_from_segmentation(
    stage: CascadeStage,
    image: np.ndarray,
    geometry: Geometry,
    props: CaseProperties,
    segmentation: np.ndarray | None,
    on_windows: Callable[[int], None] | None,
) -> np.ndarray:
    """One-hot foreground channels of the first stage's segmentation on ``stage``'s grid.

    ``segmentation``: the first stage's, in the raw ``image``'s geometry; without it
    ``stage``'s first stage predicts it from the image.
    """
    if segmentation is None:
        segmentation = first_stage_segmentation(stage, image, geometry, on_windows)
    on_grid = segmentation_on_grid(
        segmentation, plans=stage.plans, configuration=stage.configuration, props=props
    )
    return cascade_channels(stage.plans, on_grid)


def channels_from_grid_labels(
    stage: CascadeStage, props: CaseProperties, labels: np.ndarray
) -> np.ndarray:
    """One-hot foreground channels of first-stage labels already on ``stage``'s grid."""
    labels = label_volume(labels, props.shape_after_resampling, "previous stage labels")
    return cascade_channels(stage.plans, labels)


def first_stage_segmentation(
    stage: CascadeStage,
    image: np.ndarray,
    geometry: Geometry,
    on_windows: Callable[[int], None] | None = None,
) -> np.ndarray:
    """The segmentation ``(z, y, x)`` ``stage``'s first stage predicts for a raw case."""
    if stage.previous_stage is None:
        raise ToolkitError(
            f"{stage.configuration.name} is a cascade: it needs the {stage.configuration.previous_stage} model or its prediction"
        )
    prediction = stage.previous_stage.predict_case(
        image, geometry, with_probabilities=False, on_windows=on_windows
    )
    return prediction.labels
