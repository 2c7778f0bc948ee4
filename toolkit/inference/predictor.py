"""The predictor: a trained model applied to raw images, results in the input's exact geometry.

One case goes: raw ``(c, z, y, x)`` -> :func:`~toolkit.preprocessing.case.preprocess_case`
(exactly what training saw: crop, transpose, normalize, resample) -> for a cascade, the
previous stage's labels as one-hot channels -> sliding window over every fold at once
(:mod:`toolkit.inference.sliding_window`: Gaussian-weighted mean of the folds' and the mirrored
copies' mean logits) -> back to the input's grid (:mod:`toolkit.inference.export`) ->
label map and, on request, softmax probabilities.

A model folder is either ours (``models/<config>/`` with ``plans.json``, ``dataset.json`` and
``fold_k/checkpoint_final.pt``) or one trained by nnU-Net v2 (detected by its files; see
:mod:`toolkit.nets.nnunet_v2`). Nothing outside the folder is read, except for a cascade the
first stage's folder beside it.

Devices: ``auto`` picks CUDA when present. On CUDA the networks run under fp16 autocast and
the volume and its accumulators live on the GPU when they fit in its free memory (else on the
CPU, windows moving across); on the CPU they run in float32 unless ``precision`` says
otherwise. Everything runs in this process: no worker is started, none is left behind.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from toolkit.core.cascade import cascade_channels, labels_on_next_grid
from toolkit.core.checkpoint import KEY_CONFIGURATION, KEY_MIRROR_AXES, KEY_NETWORK, load_checkpoint
from toolkit.core.constants import STEP_SIZE
from toolkit.core.device import cpu_has_native_bf16, resolve_device, resolve_precision
from toolkit.core.plans import Configuration, Plans
from toolkit.core.postprocessing import Postprocessing
from toolkit.core.resampling import case_target_spacing
from toolkit.errors import ToolkitError
from toolkit.inference.export import Prediction, logits_to_original
from toolkit.inference.inputs import InputCase, find_input_cases, read_input_case
from toolkit.inference.sliding_window import (
    WindowSettings,
    count_windows,
    mirror_combinations,
    sliding_window_logits,
)
from toolkit.io.images import Geometry, has_image_suffix, label_dtype, strip_image_suffix
from toolkit.io.preprocessed import CaseProperties
from toolkit.nets import nnunet_v2
from toolkit.nets.unet import build_network, input_channels
from toolkit.preprocessing.case import preprocess_case
from toolkit.progress import info, progress_bar
from toolkit.workspace import (
    CHECKPOINT_BEST,
    CHECKPOINT_FINAL,
    CHECKPOINT_LATEST,
    MODEL_PLANS,
    PROBABILITIES_ENDING,
    DatasetPaths,
)

CHECKPOINTS = {"final": CHECKPOINT_FINAL, "best": CHECKPOINT_BEST, "latest": CHECKPOINT_LATEST}
# share of the GPU's free memory the volume and its accumulators may take; the rest is for
# the network's activations
GPU_ACCUMULATION_SHARE = 0.5
FOLD_PREFIX = "fold_"


@dataclass(frozen=True)
class _LoadOptions:
    """What :meth:`Predictor.from_model_dir` was asked for; a cascade's first stage gets the same."""

    folds: Sequence[int | str] | None
    checkpoint: str
    device: str | torch.device
    use_mirroring: bool
    step_size: float
    precision: str
    images_per_forward: int | None
    compile: bool = False

    def predictor_options(self) -> dict:
        return {
            "compile": self.compile,
            "use_mirroring": self.use_mirroring,
            "step_size": self.step_size,
            "device": self.device,
            "precision": self.precision,
            "images_per_forward": self.images_per_forward,
        }


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


@dataclass(frozen=True)
class CaseReport:
    case: str
    seconds: float
    windows: int
    output: Path


class Predictor:
    """A configuration's networks (one per fold) with everything needed to predict raw images."""

    def __init__(
        self,
        plans: Plans,
        configuration: Configuration | str,
        networks: Sequence[nn.Module],
        *,
        mirror_axes: Sequence[int] | None = None,
        use_mirroring: bool = True,
        step_size: float = STEP_SIZE,
        device: str | torch.device = "auto",
        precision: str = "auto",
        images_per_forward: int | None = None,
        previous_stage: Predictor | None = None,
        source: str = "",
        compile: bool = False,
    ):
        self.plans = plans
        self.configuration = (
            plans.configuration(configuration) if isinstance(configuration, str) else configuration
        )
        if not networks:
            raise ValueError("a predictor needs at least one network")
        if not 0 < step_size <= 1:
            raise ToolkitError(f"--step must be in (0, 1], not {step_size}")
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
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
        self.mirror_axes = tuple(mirror_axes) if use_mirroring else ()
        self.step_size = float(step_size)
        self.images_per_forward = images_per_forward or default_images_per_forward(
            self.configuration, self.device
        )
        if self.configuration.is_cascade and previous_stage is not None:
            if previous_stage.configuration.name != self.configuration.previous_stage:
                raise ValueError(
                    f"{self.configuration.name} needs {self.configuration.previous_stage} as its previous stage, not {previous_stage.configuration.name}"
                )
        self.previous_stage = previous_stage
        self.source = source
        if compile:
            self.enable_compile()

    # -- construction

    @classmethod
    def from_networks(
        cls,
        plans: Plans,
        configuration: Configuration | str,
        networks: Sequence[nn.Module],
        **options,
    ) -> Predictor:
        """Networks already in memory (validation at the end of training). Options as for the constructor."""
        return cls(plans, configuration, networks, **options)

    @classmethod
    def from_model_dir(
        cls,
        model_dir: str | Path,
        folds: Sequence[int | str] | None = None,
        checkpoint: str = "final",
        device: str | torch.device = "auto",
        use_mirroring: bool = True,
        step_size: float = STEP_SIZE,
        precision: str = "auto",
        images_per_forward: int | None = None,
        compile: bool = False,
    ) -> Predictor:
        """Load a model folder (ours or nnU-Net v2's) with the given folds (default: every fold present).

        For a cascade configuration, the first stage's model folder beside it is loaded too,
        with the same options.
        """
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise ToolkitError("model folder not found", model_dir)
        load = _LoadOptions(
            folds,
            checkpoint,
            device,
            use_mirroring,
            step_size,
            precision,
            images_per_forward,
            compile,
        )
        return cls._load(model_dir, load)

    @classmethod
    def _load(cls, model_dir: Path, load: _LoadOptions) -> Predictor:
        if nnunet_v2.is_nnunet_v2_model_dir(model_dir):
            return cls._from_nnunet_v2(model_dir, load)
        return cls._from_toolkit(model_dir, load)

    @classmethod
    def _from_toolkit(cls, model_dir: Path, load: _LoadOptions) -> Predictor:
        plans_path = model_dir / MODEL_PLANS
        if not plans_path.is_file():
            raise ToolkitError(
                "is not a model folder (no plans.json; expected models/<config>/ of a trained dataset or an nnU-Net v2 model folder)",
                model_dir,
            )
        plans = Plans.load(plans_path)
        file_name = _checkpoint_name(load.checkpoint)
        fold_dirs = _fold_dirs(model_dir, load.folds, file_name)
        states, configuration_name, mirror_axes = [], None, None
        for fold_dir in fold_dirs:
            path = fold_dir / file_name
            ckpt = load_checkpoint(path)
            name = ckpt.get(KEY_CONFIGURATION)
            if configuration_name is None:
                configuration_name = name
                mirror_axes = ckpt.get(KEY_MIRROR_AXES)
            elif name != configuration_name:
                raise ToolkitError(
                    f"holds configuration {name!r}, other folds {configuration_name!r}", path
                )
            states.append((path, ckpt[KEY_NETWORK]))
        if not isinstance(configuration_name, str):
            raise ToolkitError(
                "checkpoint does not name its configuration", fold_dirs[0] / file_name
            )
        configuration = plans.configuration(configuration_name)
        networks = [_load_network(plans, configuration, state, path) for path, state in states]
        previous = None
        if configuration.previous_stage:
            # our layout: models/<config>/, the first stage beside it
            previous_dir = DatasetPaths(model_dir.parent.parent).model_dir(
                configuration.previous_stage
            )
            previous = cls._previous_stage(previous_dir, configuration, load)
        return cls(
            plans,
            configuration,
            networks,
            mirror_axes=None if mirror_axes is None else tuple(int(a) for a in mirror_axes),
            previous_stage=previous,
            source=str(model_dir),
            **load.predictor_options(),
        )

    @classmethod
    def _from_nnunet_v2(cls, model_dir: Path, load: _LoadOptions) -> Predictor:
        plans = nnunet_v2.load_plans(model_dir)
        file_name = nnunet_v2.checkpoint_file_name(load.checkpoint)
        fold_dirs = _fold_dirs(model_dir, load.folds, file_name)
        checkpoints = [nnunet_v2.load_checkpoint(d / file_name) for d in fold_dirs]
        names = {c.configuration for c in checkpoints}
        if len(names) != 1:
            raise ToolkitError(f"folds hold different configurations: {sorted(names)}", model_dir)
        name = names.pop()
        if name not in plans.configurations:
            reason = plans.planner.get("not_converted", {}).get(name)
            raise ToolkitError(
                f"configuration {name!r} cannot be used: {reason or 'not in the plans'}",
                model_dir / nnunet_v2.PLANS_FILE,
            )
        configuration = plans.configuration(name)
        networks = [
            _load_network(plans, configuration, c.state_dict, d / file_name)
            for c, d in zip(checkpoints, fold_dirs, strict=True)
        ]
        axes = checkpoints[0].mirror_axes
        if axes is None:
            mirror_axes: tuple[int, ...] = ()
        else:
            # nnU-Net counts axes of the network input; a 2D network's are the volume's last two
            offset = 1 if configuration.spatial_dims == 2 else 0
            mirror_axes = tuple(a + offset for a in axes)
        previous = None
        if configuration.previous_stage:
            previous_dir = nnunet_v2.sibling_model_dir(
                model_dir,
                checkpoints[0].trainer_name,
                str(plans.planner.get("plans_name")),
                configuration.previous_stage,
            )
            previous = cls._previous_stage(previous_dir, configuration, load)
        return cls(
            plans,
            configuration,
            networks,
            mirror_axes=mirror_axes,
            previous_stage=previous,
            source=str(model_dir),
            **load.predictor_options(),
        )

    @classmethod
    def _previous_stage(
        cls, previous_dir: Path, configuration: Configuration, load: _LoadOptions
    ) -> Predictor:
        if not previous_dir.is_dir():
            raise ToolkitError(
                f"{configuration.name} is a cascade: its first stage {configuration.previous_stage} must be trained and lie beside it",
                previous_dir,
            )
        return cls._load(previous_dir, load)

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
            f"step {self.step_size:g}, {tta}, {self.device.type} {self.precision}"
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
        from toolkit.inference.compiled import CompiledNetwork, compile_networks

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

    def _cascade_channels(
        self,
        image: np.ndarray | None,
        geometry: Geometry | None,
        props: CaseProperties,
        previous_grid_labels: np.ndarray | None,
        on_windows: Callable[[int], None] | None,
    ) -> np.ndarray:
        """One-hot foreground channels of the first stage's labels on this stage's grid."""
        if previous_grid_labels is None:
            if self.previous_stage is None:
                raise ToolkitError(
                    f"{self.configuration.name} is a cascade: it needs the {self.configuration.previous_stage} model or its prediction"
                )
            if image is None or geometry is None:
                raise ValueError("the cascade's first stage needs the raw image")
            previous_grid_labels = self.previous_stage.labels_on_grid(
                image, geometry, props, self.configuration, on_windows
            )
        labels = np.asarray(previous_grid_labels)
        if labels.ndim == 4:
            labels = labels[0]
        if tuple(labels.shape) != tuple(props.shape_after_resampling):
            raise ValueError(
                f"previous stage labels of shape {labels.shape} are not on the grid {tuple(props.shape_after_resampling)}"
            )
        return cascade_channels(self.plans, labels)

    def labels_on_grid(
        self,
        image: np.ndarray,
        geometry: Geometry,
        next_props: CaseProperties,
        next_configuration: Configuration,
        on_windows: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """This (first) stage's labels on the next stage's preprocessed grid, as training's cascade export makes them.

        Probabilities are resampled from this stage's grid to the next stage's, then the argmax.
        """
        data, _, props = preprocess_case(image, geometry, self.plans, self.configuration)
        if self.configuration.is_cascade:
            data = np.concatenate(
                [data, self._cascade_channels(image, geometry, props, None, on_windows)]
            )
        logits = self.predict_logits(data, on_windows)
        probabilities = torch.softmax(torch.stack([t.float().cpu() for t in logits]), dim=0).numpy()
        del logits
        return labels_on_next_grid(
            probabilities,
            plans=self.plans,
            configuration=self.configuration,
            next_configuration=next_configuration,
            spacing=props.spacing,
            next_shape=next_props.shape_after_resampling,
        )

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
                    self._cascade_channels(None, None, props, previous_stage, None),
                ]
            )
        logits = self.predict_logits(data, on_windows)
        labels, probabilities = logits_to_original(
            logits, props, self.plans, self.configuration, with_probabilities
        )
        return Prediction(labels, props.original_geometry, probabilities)

    def predict_case(
        self,
        image: np.ndarray,
        geometry: Geometry,
        previous_stage: np.ndarray | None = None,
        with_probabilities: bool = True,
        on_windows: Callable[[int], None] | None = None,
    ) -> Prediction:
        """A raw case ``(c, z, y, x)`` (as read) -> labels and probabilities in the original image's array shape.

        ``previous_stage``: for a cascade, the first stage's label map on the original grid
        ``(z, y, x)``; without it the first stage's model predicts it.
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
        seg = None
        if self.configuration.is_cascade and previous_stage is not None:
            seg = np.asarray(previous_stage)
            if seg.shape[-3:] != image.shape[1:]:
                raise ToolkitError(
                    f"the previous stage's labels of shape {seg.shape} do not match the image {image.shape[1:]}"
                )
        data, grid_seg, props = preprocess_case(
            image.astype(np.float32, copy=False), geometry, self.plans, self.configuration, seg=seg
        )
        if self.configuration.is_cascade:
            previous_grid = None if grid_seg is None else np.where(grid_seg < 0, 0, grid_seg)
            data = np.concatenate(
                [data, self._cascade_channels(image, geometry, props, previous_grid, on_windows)]
            )
        logits = self.predict_logits(data, on_windows)
        del data
        labels, probabilities = logits_to_original(
            logits, props, self.plans, self.configuration, with_probabilities
        )
        return Prediction(labels, geometry, probabilities)

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

    def predict_paths(
        self,
        input_path: str | Path,
        output: str | Path,
        save_probabilities: bool = False,
        postprocessing: Postprocessing | None = None,
        quiet: bool = False,
    ) -> list[CaseReport]:
        """Predict a file or a folder into ``output``: see :func:`predict_paths`."""
        return predict_paths([self], input_path, output, save_probabilities, postprocessing, quiet)


def predict_paths(
    predictors: Sequence[Predictor],
    input_path: str | Path,
    output: str | Path,
    save_probabilities: bool = False,
    postprocessing: Postprocessing | None = None,
    quiet: bool = False,
) -> list[CaseReport]:
    """Predict a file or a folder (see :mod:`toolkit.inference.inputs`) into ``output``.

    Several predictors (configurations) form an ensemble: their probabilities are averaged.
    ``output`` is a folder (``CASE<ending>`` per case, ``CASE.npz`` with probabilities), or a
    file name when the input is one case. Cases are read, predicted and written one at a
    time.
    """
    if not predictors:
        raise ValueError("predict_paths needs at least one predictor")
    channels = {p.num_input_channels for p in predictors}
    if len(channels) != 1:
        raise ToolkitError(
            f"the ensemble's models need different numbers of channels: {sorted(channels)}"
        )
    num_channels = channels.pop()
    cases = find_input_cases(input_path, num_channels)
    targets = _output_paths(cases, Path(output))
    reports = []
    with progress_bar(quiet) as bar:
        case_task = bar.add_task("cases", total=len(cases))
        window_task = bar.add_task("windows", total=None)
        for case, target in zip(cases, targets, strict=True):
            start = time.perf_counter()
            image, geometry = read_input_case(case, num_channels)
            windows = sum(p.estimate_windows(image.shape[1:], geometry) for p in predictors)
            bar.reset(window_task, total=windows, description=case.case)
            counted: list[int] = []

            def advance(n: int, counted=counted) -> None:
                counted.append(n)
                bar.advance(window_task, n)

            if len(predictors) == 1:
                prediction = predictors[0].predict_case(
                    image, geometry, with_probabilities=save_probabilities, on_windows=advance
                )
            else:
                prediction = predict_with_ensemble(
                    predictors, image, geometry, save_probabilities, advance
                )
            del image
            prediction = prediction.postprocessed(postprocessing)
            probabilities_path = _probabilities_path(target) if save_probabilities else None
            prediction.save(target, probabilities_path)
            del prediction
            reports.append(CaseReport(case.case, time.perf_counter() - start, sum(counted), target))
            bar.advance(case_task)
    return reports


def predict_with_ensemble(
    predictors: Sequence[Predictor],
    image: np.ndarray,
    geometry: Geometry,
    with_probabilities: bool = True,
    on_windows: Callable[[int], None] | None = None,
) -> Prediction:
    """An ensemble of configurations: the mean of their probabilities, then the argmax."""
    if not predictors:
        raise ValueError("an ensemble needs at least one predictor")
    total: np.ndarray | None = None
    for p in predictors:
        result = p.predict_case(image, geometry, with_probabilities=True, on_windows=on_windows)
        assert result.probabilities is not None
        if total is None:
            total = result.probabilities
        else:
            total += result.probabilities
        del result
    assert total is not None
    total /= len(predictors)
    labels = np.argmax(total, axis=0).astype(label_dtype(total.shape[0] - 1))
    return Prediction(labels, geometry, total if with_probabilities else None)


def _checkpoint_name(checkpoint: str) -> str:
    if checkpoint in CHECKPOINTS:
        return CHECKPOINTS[checkpoint]
    if checkpoint.endswith(".pt"):
        return checkpoint
    raise ToolkitError(f"--checkpoint must be one of {', '.join(CHECKPOINTS)}, not {checkpoint!r}")


def _fold_dirs(model_dir: Path, folds: Sequence[int | str] | None, file_name: str) -> list[Path]:
    if folds is None:
        found = sorted(
            (p for p in model_dir.glob(f"{FOLD_PREFIX}*") if (p / file_name).is_file()),
            key=_fold_order,
        )
        if not found:
            raise ToolkitError(f"no fold has a {file_name}: train the model first", model_dir)
        return found
    if len(folds) == 0:
        raise ToolkitError("--folds lists no fold")
    dirs = []
    for f in folds:
        d = model_dir / f"{FOLD_PREFIX}{f}"
        if not (d / file_name).is_file():
            raise ToolkitError(f"fold {f} has no {file_name}", d)
        dirs.append(d)
    return dirs


def _fold_order(path: Path) -> tuple[float, str]:
    suffix = path.name[len(FOLD_PREFIX) :]
    return (int(suffix) if suffix.isdigit() else math.inf, suffix)


def _load_network(plans: Plans, configuration: Configuration, state: dict, path: Path) -> nn.Module:
    network = build_network(plans, configuration, deep_supervision=False)
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise ToolkitError(
            f"weights do not fit the planned {configuration.name} network ({detail})", path
        ) from None
    return network


def _probabilities_path(label_path: Path) -> Path:
    return label_path.with_name(strip_image_suffix(label_path.name) + PROBABILITIES_ENDING)


def _output_paths(cases: list[InputCase], output: Path) -> list[Path]:
    if has_image_suffix(output):
        if len(cases) != 1:
            raise ToolkitError(
                f"is a file name but the input holds {len(cases)} cases: give a folder", output
            )
        return [output]
    return [output / f"{c.case}{c.file_ending}" for c in cases]


def summarize(reports: Sequence[CaseReport]) -> None:
    """One line for the person at the terminal: cases, time, peak memory of this process."""
    import resource

    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    total = sum(r.seconds for r in reports)
    info(
        f"predicted {len(reports)} case(s) in {total:.1f} s ({total / max(1, len(reports)):.1f} s per case), peak memory {peak_gb:.2f} GB"
    )
