"""The predictor: a configuration's networks applied to a case, results in the input's exact geometry.

One case goes: raw ``(c, z, y, x)`` -> :func:`~toolkit.preprocessing.case.preprocess_case`
(exactly what training saw: crop, transpose, normalize, resample) -> for a cascade, the
previous stage's segmentation, preprocessed as a label map, as one-hot channels
(:mod:`toolkit.inference.first_stage`) -> sliding
window over every fold at once (:mod:`toolkit.inference.sliding_window`: Gaussian-weighted mean
of the folds' and the mirrored copies' mean logits) -> back to the input's grid
(:mod:`toolkit.inference.export`) -> label map and, on request, softmax probabilities.

Its networks come from a model folder (:mod:`toolkit.inference.loading`, through
:meth:`Predictor.from_model_dir`) or from memory (validation at the end of training,
:meth:`Predictor.from_networks`); how they run is one
:class:`~toolkit.inference.options.ModelOptions`. Files and folders of cases, and ensembles of
configurations, are :mod:`toolkit.inference.files`'s.

Devices: ``auto`` picks CUDA when present. On CUDA the networks run under fp16 autocast and
the volume and its accumulators live on the GPU when they fit in its free memory (else on the
CPU, windows moving across); on the CPU under bf16 autocast where the CPU computes bf16
natively, else in float32 (``precision`` overrides either, :mod:`toolkit.core.device`). Everything runs in this process: no worker is started, none is left behind.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from toolkit.core.device import (
    cpu_has_native_bf16,
    describe_precision,
    resolve_device,
    resolve_precision,
)
from toolkit.core.plans import Configuration, Plans
from toolkit.core.resampling import case_target_spacing
from toolkit.errors import ToolkitError
from toolkit.inference.compiled import CompiledNetwork, compile_networks
from toolkit.inference.export import Prediction, logits_to_original
from toolkit.inference.first_stage import channels_from_grid_labels, channels_from_segmentation
from toolkit.inference.loading import LoadedModel, load_model
from toolkit.inference.options import ModelOptions
from toolkit.inference.sliding_window import (
    WindowSettings,
    count_windows,
    mirror_combinations,
    sliding_window_logits,
)
from toolkit.io.images import Geometry
from toolkit.io.preprocessed import CaseProperties
from toolkit.nets.unet import input_channels
from toolkit.preprocessing.case import preprocess_case
from toolkit.progress import info

# share of the GPU's free memory the volume and its accumulators may take; the rest is for
# the network's activations
GPU_ACCUMULATION_SHARE = 0.5


def accumulation_bytes(
    data_shape: Sequence[int], patch_size: Sequence[int], num_classes: int
) -> int:
    """Bytes of the padded float32 input ``(c, ...)`` and one float32 accumulator per class."""
    voxels = math.prod(max(int(s), int(p)) for s, p in zip(data_shape[1:], patch_size, strict=True))
    return (int(data_shape[0]) + num_classes) * voxels * 4


def fits_on_gpu(
    data_shape: Sequence[int], patch_size: Sequence[int], num_classes: int, free_bytes: int
) -> bool:
    """Whether the volume and its accumulators may live on the GPU: within
    ``GPU_ACCUMULATION_SHARE`` of its free memory, the rest left to the network's activations."""
    return (
        accumulation_bytes(data_shape, patch_size, num_classes)
        < GPU_ACCUMULATION_SHARE * free_bytes
    )


def default_images_per_forward(configuration: Configuration, device: torch.device) -> int:
    """Images per forward pass: a GPU takes every mirrored copy of a window at once."""
    if device.type == "cuda":
        return 8 if configuration.spatial_dims == 3 else 32
    return 1 if configuration.spatial_dims == 3 else 4


class Predictor:
    """A configuration's networks (one per fold) with everything needed to predict raw images."""

    def __init__(
        self,
        plans: Plans,
        configuration: Configuration | str,
        networks: Sequence[nn.Module],
        options: ModelOptions = ModelOptions(),
        *,
        mirror_axes: Sequence[int] | None = None,
        previous_stage: Predictor | None = None,
        source: str = "",
    ):
        """``options``: how the networks run (its ``folds`` and ``checkpoint`` are the loader's);
        ``mirror_axes``: the checkpoint's, default every axis the network sees."""
        self.plans = plans
        self.configuration = (
            plans.configuration(configuration) if isinstance(configuration, str) else configuration
        )
        if not networks:
            raise ValueError("a predictor needs at least one network")
        step_size = options.step_size
        if not 0 < step_size <= 1:
            raise ToolkitError(f"--step must be in (0, 1], not {step_size}")
        self.options = options
        self.device = resolve_device(options.device)
        self.precision = resolve_precision(options.precision, self.device)
        if self.precision == "bf16" and self.device.type == "cpu" and not cpu_has_native_bf16():
            info(
                "warning: this CPU has no native bf16 (avx512_bf16/amx_bf16); bf16 autocast will be slower than fp32"
            )
        self.networks = [n.to(self.device).eval() for n in networks]
        self.compiled = False
        self._compile_tried = False
        dims = self.configuration.spatial_dims
        if mirror_axes is None:
            # axes of the preprocessed (z, y, x) volume; a 2D network mirrors in-plane only
            mirror_axes = (0, 1, 2) if dims == 3 else (1, 2)
        self.mirror_axes = tuple(mirror_axes) if options.use_mirroring else ()
        self.step_size = float(step_size)
        self.images_per_forward = options.images_per_forward or default_images_per_forward(
            self.configuration, self.device
        )
        if self.configuration.is_cascade and previous_stage is not None:
            if previous_stage.configuration.name != self.configuration.previous_stage:
                raise ValueError(
                    f"{self.configuration.name} needs {self.configuration.previous_stage} as its previous stage, not {previous_stage.configuration.name}"
                )
        self.previous_stage = previous_stage
        self.source = source
        if options.compile:
            self.enable_compile()

    # -- construction

    @classmethod
    def from_networks(
        cls,
        plans: Plans,
        configuration: Configuration | str,
        networks: Sequence[nn.Module],
        options: ModelOptions = ModelOptions(),
    ) -> Predictor:
        """Networks already in memory (validation at the end of training)."""
        return cls(plans, configuration, networks, options)

    @classmethod
    def from_model_dir(
        cls, model_dir: str | Path, options: ModelOptions = ModelOptions()
    ) -> Predictor:
        """Load a model folder (ours or nnU-Net v2's; see :func:`~toolkit.inference.loading.load_model`).

        ``options`` default to every fold present and the final checkpoint. For a cascade
        configuration, the first stage's model folder beside it is loaded too, with the same
        options.
        """
        return cls._from_loaded(load_model(model_dir, options), options)

    @classmethod
    def _from_loaded(cls, model: LoadedModel, options: ModelOptions) -> Predictor:
        previous = (
            None if model.first_stage is None else cls._from_loaded(model.first_stage, options)
        )
        return cls(
            model.plans,
            model.configuration,
            model.networks,
            options,
            mirror_axes=model.mirror_axes,
            previous_stage=previous,
            source=str(model.source),
        )

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

    def window_settings(self) -> WindowSettings:
        return WindowSettings(
            self.patch_size,
            self.step_size,
            self.mirror_axes,
            self.images_per_forward,
            self.precision,
        )

    def describe(self) -> str:
        folds = len(self.networks)
        tta = (
            f"mirroring over {len(mirror_combinations(self.mirror_axes))} axis combinations"
            if self.mirror_axes
            else "no mirroring"
        )
        return (
            f"{self.configuration.name}, {folds} fold{'s' if folds != 1 else ''}, patch {'x'.join(map(str, self.configuration.patch_size))}, "
            f"step {self.step_size:g}, {tta}, {self.device.type} "
            f"{describe_precision(self.options.precision, self.precision, self.device)}"
            + self._compile_state()
        )

    def _compile_state(self) -> str:
        if not self.compiled:
            return ""
        if any(getattr(n, "failed", None) for n in self.networks):
            return ", compile failed: eager"
        return ", compiled"

    def enable_compile(self, warn: bool = True) -> bool:
        """Run the networks (and the cascade's first stage's) through torch.compile from now on.

        False when compiling cannot work here (said when ``warn``), and nothing changes.
        """
        if self._compile_tried:
            return self.compiled
        self._compile_tried = True
        if self.previous_stage is not None:
            self.previous_stage.enable_compile(warn)
        self.networks = compile_networks(self.networks, self.device, warn)
        self.compiled = all(isinstance(n, CompiledNetwork) for n in self.networks)
        return self.compiled

    # -- prediction

    def _accumulate_device(self, data_shape: Sequence[int]) -> torch.device:
        if self.device.type != "cuda":
            return torch.device("cpu")
        free, _ = torch.cuda.mem_get_info(self.device)
        fits = fits_on_gpu(data_shape, self.patch_size, self.num_classes, free)
        return self.device if fits else torch.device("cpu")

    def predict_logits(
        self, data: np.ndarray | torch.Tensor, on_windows: Callable[[int], None] | None = None
    ) -> list[torch.Tensor]:
        """Per-class logits ``(z, y, x)`` of preprocessed data (cascade channels included)."""
        tensor = (
            torch.as_tensor(np.asarray(data, dtype=np.float32))
            if not isinstance(data, torch.Tensor)
            else data.float()
        )
        expected = input_channels(self.plans, self.configuration)
        if tensor.shape[0] != expected:
            raise ValueError(
                f"{self.configuration.name} needs {expected} input channels, got {tensor.shape[0]}"
            )
        where = self._accumulate_device(tensor.shape)
        settings = self.window_settings()
        try:
            return sliding_window_logits(
                self.networks, tensor, self.num_classes, settings, self.device, where, on_windows
            )
        except torch.cuda.OutOfMemoryError:
            if where.type != "cuda":
                raise
            # the volume did not fit next to the activations after all: accumulate on the CPU
            torch.cuda.empty_cache()
            return sliding_window_logits(
                self.networks,
                tensor,
                self.num_classes,
                settings,
                self.device,
                torch.device("cpu"),
                on_windows,
            )

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
