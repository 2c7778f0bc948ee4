"""The cascade's input, one rule for training, validation and prediction.

The first stage's softmax probabilities, on its own preprocessed grid, are resampled to the
next stage's grid of the same case (linearly, nearest along a coarse axis), turned into labels
by argmax, and enter the next stage's network as one one-hot channel per foreground label
after the image channels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from toolkit.core.labels import foreground_labels, one_hot
from toolkit.core.plans import Configuration, Plans
from toolkit.core.resampling import case_target_spacing, resample_probabilities


def labels_on_next_grid(
    probabilities: np.ndarray,
    *,
    plans: Plans,
    configuration: Configuration,
    next_configuration: Configuration,
    spacing: Sequence[float],
    next_shape: Sequence[int],
) -> np.ndarray:
    """First-stage ``(classes, *grid)`` probabilities -> labels ``(*next_shape)`` on the next grid.

    ``spacing`` is the case's original spacing (before transposition).
    """
    spacing_t = [spacing[a] for a in plans.transpose_forward]
    upsampled = resample_probabilities(
        probabilities,
        next_shape,
        case_target_spacing(configuration, spacing_t),
        case_target_spacing(next_configuration, spacing_t),
        configuration.resampling,
    )
    return upsampled.argmax(0)


def cascade_channels(plans: Plans, previous_labels: np.ndarray) -> np.ndarray:
    """The first stage's labels ``(*grid)`` -> one-hot input channels ``(foreground, *grid)``."""
    return one_hot(previous_labels, foreground_labels(plans.labels))


def with_cascade_channels(
    plans: Plans, data: np.ndarray, previous_labels: np.ndarray
) -> np.ndarray:
    """The network input of a cascade stage: image channels, then the previous stage's."""
    return np.concatenate([data, cascade_channels(plans, previous_labels)])
