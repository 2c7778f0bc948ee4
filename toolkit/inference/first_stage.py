"""A cascade stage's extra input at prediction time: the first stage's labels on its grid.

The labels are given (a preprocessed case's ``predicted_next_stage`` labels, or a label map
the caller passes) or predicted by the first stage's own predictor on the raw image, as
training's cascade export makes them (:func:`toolkit.core.cascade.labels_on_next_grid`:
probabilities resampled from the first stage's grid to the next stage's, then the argmax).
They enter the network as one-hot channels after the image's
(:func:`toolkit.core.cascade.cascade_channels`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch

from toolkit.core.cascade import cascade_channels, labels_on_next_grid
from toolkit.core.plans import Configuration, Plans
from toolkit.errors import ToolkitError
from toolkit.io.images import Geometry
from toolkit.io.preprocessed import CaseProperties
from toolkit.preprocessing.case import preprocess_case


class CascadeStage(Protocol):
    """What this module needs of a stage's :class:`~toolkit.inference.predictor.Predictor`."""

    @property
    def plans(self) -> Plans: ...

    @property
    def configuration(self) -> Configuration: ...

    @property
    def previous_stage(self) -> CascadeStage | None: ...

    def predict_logits(
        self, data: np.ndarray | torch.Tensor, on_windows: Callable[[int], None] | None = None
    ) -> list[torch.Tensor]: ...


def cascade_input_channels(
    stage: CascadeStage,
    image: np.ndarray | None,
    geometry: Geometry | None,
    props: CaseProperties,
    first_stage_labels: np.ndarray | None,
    on_windows: Callable[[int], None] | None,
) -> np.ndarray:
    """One-hot foreground channels of the first stage's labels on ``stage``'s grid.

    ``first_stage_labels``: the labels on that grid; without them ``stage``'s first stage
    predicts them from the raw ``image``.
    """
    if first_stage_labels is None:
        if stage.previous_stage is None:
            raise ToolkitError(
                f"{stage.configuration.name} is a cascade: it needs the {stage.configuration.previous_stage} model or its prediction"
            )
        if image is None or geometry is None:
            raise ValueError("the cascade's first stage needs the raw image")
        first_stage_labels = predict_first_stage_labels(
            stage.previous_stage, image, geometry, props, stage.configuration, on_windows
        )
    labels = np.asarray(first_stage_labels)
    if labels.ndim == 4:
        labels = labels[0]
    if tuple(labels.shape) != tuple(props.shape_after_resampling):
        raise ValueError(
            f"previous stage labels of shape {labels.shape} are not on the grid {tuple(props.shape_after_resampling)}"
        )
    return cascade_channels(stage.plans, labels)


def predict_first_stage_labels(
    first_stage: CascadeStage,
    image: np.ndarray,
    geometry: Geometry,
    next_props: CaseProperties,
    next_configuration: Configuration,
    on_windows: Callable[[int], None] | None = None,
) -> np.ndarray:
    """The first stage's labels of a raw case on the next stage's preprocessed grid, as
    training's cascade export makes them.

    Probabilities are resampled from the first stage's grid to the next stage's, then the
    argmax.
    """
    data, _, props = preprocess_case(image, geometry, first_stage.plans, first_stage.configuration)
    if first_stage.configuration.is_cascade:
        data = np.concatenate(
            [data, cascade_input_channels(first_stage, image, geometry, props, None, on_windows)]
        )
    logits = first_stage.predict_logits(data, on_windows)
    probabilities = torch.softmax(torch.stack([t.float().cpu() for t in logits]), dim=0).numpy()
    del logits
    return labels_on_next_grid(
        probabilities,
        plans=first_stage.plans,
        configuration=first_stage.configuration,
        next_configuration=next_configuration,
        spacing=props.spacing,
        next_shape=next_props.shape_after_resampling,
    )
