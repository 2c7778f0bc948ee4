"""The torch predictor: a configuration's networks run by torch, results in the input's exact geometry.

The flow of one case (preprocessing, the cascade's input, the sliding window, the export to
the input's grid) is :class:`~toolkit.inference.case_predictor.CasePredictor`'s; this class
adds how torch runs the networks.

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

from toolkit.core.cascade import input_channels
from toolkit.core.device import (
    cpu_has_native_bf16,
    describe_precision,
    resolve_device,
    resolve_precision,
)
from toolkit.core.plans import Configuration, Plans
from toolkit.inference.case_predictor import CasePredictor
from toolkit.inference.compiled import CompiledNetwork, compile_networks
from toolkit.inference.loading import LoadedModel, load_model
from toolkit.inference.options import ModelOptions
from toolkit.inference.sliding_window import WindowSettings, sliding_window_logits
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


class Predictor(CasePredictor):
    """A configuration's networks (one per fold), run by torch."""

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
        if not networks:
            raise ValueError("a predictor needs at least one network")
        self.device = resolve_device(options.device)
        config = (
            plans.configuration(configuration) if isinstance(configuration, str) else configuration
        )
        super().__init__(
            plans,
            config,
            options,
            mirror_axes=mirror_axes,
            images_per_forward=options.images_per_forward
            or default_images_per_forward(config, self.device),
            previous_stage=previous_stage,
            source=source,
        )
        self.precision = resolve_precision(options.precision, self.device)
        if self.precision == "bf16" and self.device.type == "cpu" and not cpu_has_native_bf16():
            info(
                "warning: this CPU has no native bf16 (avx512_bf16/amx_bf16); bf16 autocast will be slower than fp32"
            )
        self.networks = [n.to(self.device).eval() for n in networks]
        self.compiled = False
        self._compile_tried = False
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
    def fold_count(self) -> int:
        return len(self.networks)

    def window_settings(self) -> WindowSettings:
        return WindowSettings(
            self.patch_size,
            self.step_size,
            self.mirror_axes,
            self.images_per_forward,
            self.precision,
        )

    def runtime_description(self) -> str:
        return (
            f"{self.device.type} "
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
