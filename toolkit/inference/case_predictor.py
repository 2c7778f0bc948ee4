"""One case through a configuration's networks, whatever runs them: the part of a predictor
that imports no torch.

One case goes: raw ``(c, z, y, x)`` -> :func:`~toolkit.preprocessing.case.preprocess_case`
(exactly what training saw: crop, transpose, normalize, resample) -> for a cascade, the
previous stage's segmentation, preprocessed as a label map, as one-hot channels
(:mod:`toolkit.inference.first_stage`) -> sliding window over every fold at once
(:mod:`toolkit.inference.windows`: Gaussian-weighted mean of the folds' and the mirrored
copies' mean logits) -> back to the input's grid (:mod:`toolkit.inference.export`) -> label
map and, on request, probabilities.

:class:`CasePredictor` owns that flow once. A subclass says how the networks run, by its
:meth:`CasePredictor.predict_logits`: :class:`toolkit.inference.predictor.Predictor` with
torch (devices, autocast, torch.compile), :class:`toolkit.inference.runtime.RuntimePredictor`
with ONNX Runtime or OpenVINO on numpy arrays.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from toolkit.core.plans import Configuration, Plans
from toolkit.core.resampling import case_target_spacing
from toolkit.errors import ToolkitError
from toolkit.inference.export import Prediction, logits_to_original
from toolkit.inference.first_stage import channels_from_grid_labels, channels_from_segmentation
from toolkit.inference.options import ModelOptions
from toolkit.inference.windows import count_windows, mirror_combinations
from toolkit.io.images import Geometry
from toolkit.io.preprocessed import CaseProperties
from toolkit.preprocessing.case import preprocess_case


def default_mirror_axes(configuration: Configuration) -> tuple[int, ...]:
    """Axes of the preprocessed ``(z, y, x)`` volume to mirror when the model names none:
    every axis the network sees (a 2D network's are in-plane)."""
    return (0, 1, 2) if configuration.spatial_dims == 3 else (1, 2)


class CasePredictor(abc.ABC):
    """A configuration's networks (one per fold) with everything needed to predict raw images.

    ``options``: how the networks run (its ``folds`` and ``checkpoint`` are the loader's);
    ``mirror_axes``: the model's, default every axis the network sees.
    """

    def __init__(
        self,
        plans: Plans,
        configuration: Configuration | str,
        options: ModelOptions,
        *,
        mirror_axes: Sequence[int] | None,
        images_per_forward: int,
        previous_stage: CasePredictor | None,
        source: str,
    ):
        self.plans = plans
        self.configuration = (
            plans.configuration(configuration) if isinstance(configuration, str) else configuration
        )
        if not 0 < options.step_size <= 1:
            raise ToolkitError(f"--step must be in (0, 1], not {options.step_size}")
        self.options = options
        if mirror_axes is None:
            mirror_axes = default_mirror_axes(self.configuration)
        self.mirror_axes = tuple(mirror_axes) if options.use_mirroring else ()
        self.step_size = float(options.step_size)
        self.images_per_forward = images_per_forward
        if self.configuration.is_cascade and previous_stage is not None:
            if previous_stage.configuration.name != self.configuration.previous_stage:
                raise ValueError(
                    f"{self.configuration.name} needs {self.configuration.previous_stage} as its previous stage, not {previous_stage.configuration.name}"
                )
        self.previous_stage = previous_stage
        self.source = source

    # -- what a subclass supplies

    @property
    @abc.abstractmethod
    def fold_count(self) -> int: ...

    @abc.abstractmethod
    def runtime_description(self) -> str:
        """How the networks run, e.g. ``cpu bf16 (auto)`` or ``openvino CPU``."""

    @abc.abstractmethod
    def predict_logits(
        self, data: np.ndarray, on_windows: Callable[[int], None] | None = None
    ) -> list[Any]:
        """Per-class logits ``(z, y, x)`` of preprocessed data (cascade channels included):
        numpy arrays or torch tensors, which :func:`~toolkit.inference.export.logits_to_original`
        both takes."""

    # -- properties

    @property
    def num_classes(self) -> int:
        return self.plans.num_classes

    @property
    def num_input_channels(self) -> int:
        """Image channels a case must have (the cascade's extra channels are made here)."""
        return self.plans.num_input_channels

    @property
    def patch_size(self) -> tuple[int, int, int]:
        p = [int(v) for v in self.configuration.patch_size]
        return (1, p[0], p[1]) if self.configuration.spatial_dims == 2 else (p[0], p[1], p[2])

    def describe(self) -> str:
        folds = self.fold_count
        tta = (
            f"mirroring over {len(mirror_combinations(self.mirror_axes))} axis combinations"
            if self.mirror_axes
            else "no mirroring"
        )
        return (
            f"{self.configuration.name}, {folds} fold{'s' if folds != 1 else ''}, patch {'x'.join(map(str, self.configuration.patch_size))}, "
            f"step {self.step_size:g}, {tta}, {self.runtime_description()}"
        )

    # -- prediction

    def count_windows(self, props: CaseProperties) -> int:
        return count_windows(props.shape_after_resampling, self.patch_size, self.step_size)

    def predict_preprocessed(
        self,
        data: np.ndarray,
        props: CaseProperties,
        previous_stage: np.ndarray | None = None,
        with_probabilities: bool = True,
        on_windows: Callable[[int], None] | None = None,
    ) -> Prediction:
        """A preprocessed case (``CASE.npy`` and its properties) -> prediction on its original grid.

        ``previous_stage``: for a cascade, the first stage's labels on this grid (as training
        stores them in ``predicted_next_stage``).
        """
        if self.configuration.is_cascade:
            if previous_stage is None:
                raise ToolkitError(
                    f"{self.configuration.name} is a cascade: predicting a preprocessed case needs the first stage's labels"
                )
            data = np.concatenate(
                [
                    np.asarray(data, dtype=np.float32),
                    channels_from_grid_labels(self, props, previous_stage),
                ]
            )
        logits = self.predict_logits(data, on_windows)
        labels, probabilities = logits_to_original(
            logits, props, self.plans, self.configuration, with_probabilities
        )
        return Prediction(
            labels,
            props.original_geometry,
            probabilities,
            self.plans.label_model().regions_class_order,
        )

    def predict_case(
        self,
        image: np.ndarray,
        geometry: Geometry,
        previous_stage: np.ndarray | None = None,
        with_probabilities: bool = True,
        on_windows: Callable[[int], None] | None = None,
    ) -> Prediction:
        """A raw case ``(c, z, y, x)`` (as read) -> labels and probabilities in the original image's array shape.

        ``previous_stage``: for a cascade, the first stage's segmentation on the original grid
        ``(z, y, x)`` (as ``toolkit predict`` writes it); without it the first stage's model
        predicts it.
        """
        image = np.asarray(image)
        if image.ndim == 3:
            image = image[None]
        if image.shape[0] != self.num_input_channels:
            raise ToolkitError(
                f"the case has {image.shape[0]} channel(s) but the model needs {self.num_input_channels}"
            )
        if tuple(image.shape[1:]) != geometry.shape_zyx:
            raise ValueError(
                f"image of shape {image.shape[1:]} does not fit its geometry {geometry.shape_zyx}"
            )
        segmentation = None
        if self.configuration.is_cascade and previous_stage is not None:
            segmentation = np.asarray(previous_stage)
            if segmentation.shape[-3:] != image.shape[1:]:
                raise ToolkitError(
                    f"the previous stage's labels of shape {segmentation.shape} do not match the image {image.shape[1:]}"
                )
        data, _, props = preprocess_case(
            image.astype(np.float32, copy=False), geometry, self.plans, self.configuration
        )
        if self.configuration.is_cascade:
            data = np.concatenate(
                [
                    data,
                    channels_from_segmentation(
                        self, image, geometry, props, segmentation, on_windows
                    ),
                ]
            )
        logits = self.predict_logits(data, on_windows)
        del data
        labels, probabilities = logits_to_original(
            logits, props, self.plans, self.configuration, with_probabilities
        )
        return Prediction(
            labels, geometry, probabilities, self.plans.label_model().regions_class_order
        )

    def estimate_windows(self, image_shape: Sequence[int], geometry: Geometry) -> int:
        """Windows one case will take (progress), from its shape and spacing alone (cropping ignored)."""
        spacing_t = [geometry.spacing_zyx[a] for a in self.plans.transpose_forward]
        shape_t = [int(image_shape[a]) for a in self.plans.transpose_forward]
        target = case_target_spacing(self.configuration, spacing_t)
        grid = [
            max(1, round(s * sp / t)) for s, sp, t in zip(shape_t, spacing_t, target, strict=True)
        ]
        total = count_windows(grid, self.patch_size, self.step_size)
        if self.previous_stage is not None and self.configuration.is_cascade:
            total += self.previous_stage.estimate_windows(image_shape, geometry)
        return total
