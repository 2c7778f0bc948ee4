"""The torch-free predictor: a model folder of ONNX networks run by ONNX Runtime or OpenVINO.

A model folder of ONNX networks is laid out as ours (``models/<config>/`` with ``plans.json``
and ``dataset.json``) with ``fold_<k>/network.onnx`` and ``network.json`` in place of the
checkpoints (:mod:`toolkit.core.onnx_network`; ``toolkit export-model --format onnx`` writes
them, ``toolkit import-model`` installs them). Everything but the network call is
:class:`~toolkit.inference.case_predictor.CasePredictor`'s, on numpy arrays
(:class:`~toolkit.inference.windows.NumpyOps`). Nothing this module imports imports torch;
``tests/inference/test_runtime.py`` runs a whole prediction with torch made unimportable.

:func:`load_predictor` is the one place that picks the predictor of a model folder and a
``--backend``: the torch predictor is imported only when torch runs the model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from toolkit.core.cascade import input_channels
from toolkit.core.onnx_network import NetworkSpec
from toolkit.core.plans import Configuration, Plans
from toolkit.errors import ToolkitError
from toolkit.inference.case_predictor import CasePredictor
from toolkit.inference.folds import FOLD_PREFIX, fold_dirs
from toolkit.inference.options import ModelOptions
from toolkit.inference.runtimes import (
    TORCH,
    NetworkIO,
    check_runtime_precision,
    choose_backend,
    runtime_forward,
)
from toolkit.inference.windows import Forward, NumpyOps, slice_forward, sweep_logits
from toolkit.workspace import MODEL_PLANS, NETWORK_JSON, NETWORK_ONNX, DatasetPaths

# images per forward pass on the CPU, as the torch predictor's: a runtime's kernels use every
# core on one image already, and a full-size 3D network's activations for one 128^3 patch
# take over a gigabyte (the platform's jobs get 7 GiB by default)
DEFAULT_IMAGES_PER_FORWARD = {3: 1, 2: 4}


def is_onnx_model_dir(model_dir: Path) -> bool:
    """Whether a model folder holds exported ONNX networks (``fold_*/network.onnx``)."""
    return any(Path(model_dir).glob(f"{FOLD_PREFIX}*/{NETWORK_ONNX}"))


class RuntimePredictor(CasePredictor):
    """A configuration's ONNX networks (one per fold), run by ONNX Runtime or OpenVINO."""

    def __init__(
        self,
        plans: Plans,
        configuration: Configuration,
        forwards: Sequence[Forward],
        options: ModelOptions,
        *,
        backend: str,
        mirror_axes: Sequence[int] | None,
        previous_stage: RuntimePredictor | None = None,
        source: str = "",
    ):
        if not forwards:
            raise ValueError("a predictor needs at least one network")
        super().__init__(
            plans,
            configuration,
            options,
            mirror_axes=mirror_axes,
            images_per_forward=options.images_per_forward
            or DEFAULT_IMAGES_PER_FORWARD[configuration.spatial_dims],
            previous_stage=previous_stage,
            source=source,
        )
        self.backend = backend
        self.forwards = [slice_forward(f, configuration.spatial_dims) for f in forwards]

    @classmethod
    def from_model_dir(
        cls, model_dir: str | Path, options: ModelOptions, backend: str
    ) -> RuntimePredictor:
        """A model folder of ONNX networks with ``options.folds`` (default: every fold
        present); a cascade's first stage from the folder beside it, with the same options."""
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise ToolkitError("model folder not found", model_dir)
        if options.checkpoint != "final":
            raise ToolkitError(
                f"--checkpoint {options.checkpoint}: an exported model holds its final "
                "weights only",
                model_dir,
            )
        if options.compile:
            raise ToolkitError(f"--compile is torch's: --backend {backend} compiles by itself")
        check_runtime_precision(backend, options.precision)
        plans = Plans.load(model_dir / MODEL_PLANS)
        dirs = fold_dirs(model_dir, options.folds, NETWORK_ONNX)
        specs = [NetworkSpec.load(d / NETWORK_JSON) for d in dirs]
        names = {s.configuration for s in specs}
        if len(names) != 1:
            raise ToolkitError(f"folds hold different configurations: {sorted(names)}", model_dir)
        configuration = plans.configuration(names.pop())
        for spec, d in zip(specs, dirs, strict=True):
            _check_spec(spec, plans, configuration, d / NETWORK_JSON)
        forwards = [
            runtime_forward(
                backend,
                d / NETWORK_ONNX,
                NetworkIO(spec.input_name, spec.output_name),
                precision=options.precision,
            )
            for spec, d in zip(specs, dirs, strict=True)
        ]
        previous = None
        if configuration.previous_stage:
            first_dir = DatasetPaths(model_dir.parent.parent).model_dir(
                configuration.previous_stage
            )
            if not first_dir.is_dir():
                raise ToolkitError(
                    f"{configuration.name} is a cascade: its first stage {configuration.previous_stage} must lie beside it",
                    first_dir,
                )
            previous = cls.from_model_dir(first_dir, options, backend)
        axes = specs[0].mirror_axes
        return cls(
            plans,
            configuration,
            forwards,
            options,
            backend=backend,
            mirror_axes=None if axes is None else tuple(axes),
            previous_stage=previous,
            source=str(model_dir),
        )

    @property
    def fold_count(self) -> int:
        return len(self.forwards)

    def runtime_description(self) -> str:
        precision = self.options.precision
        return (
            f"{self.backend} cpu {'its own precision (auto)' if precision == 'auto' else precision}"
        )

    def predict_logits(
        self, data: np.ndarray, on_windows: Callable[[int], None] | None = None
    ) -> list[np.ndarray]:
        data = np.asarray(data, dtype=np.float32)
        return sweep_logits(
            self.forwards,
            data,
            self.num_classes,
            patch_size=self.patch_size,
            step_size=self.step_size,
            mirror_axes=self.mirror_axes,
            images_per_forward=self.images_per_forward,
            ops=NumpyOps(),
            on_windows=on_windows,
        )


def _check_spec(spec: NetworkSpec, plans: Plans, configuration: Configuration, path: Path) -> None:
    """The exported graph's interface agrees with the plans beside it."""
    expected = {
        "spatial_dims": configuration.spatial_dims,
        "patch_size": [int(p) for p in configuration.patch_size],
        "num_classes": plans.num_classes,
        "input_channels": input_channels(plans, configuration),
    }
    for key, value in expected.items():
        if getattr(spec, key) != value:
            raise ToolkitError(
                f"{key} is {getattr(spec, key)}, but the plans beside it say {value}", path
            )


def load_predictor(model_dir: Path, options: ModelOptions) -> CasePredictor:
    """The predictor of a model folder with ``options.backend`` (default: torch for
    checkpoints, the first installed runtime for ONNX networks)."""
    onnx = is_onnx_model_dir(model_dir)
    backend = choose_backend(options.backend, onnx_model=onnx)
    if backend == TORCH:
        if onnx:
            raise ToolkitError(
                "holds ONNX networks, which --backend torch cannot run: use --backend "
                "openvino or onnxruntime",
                model_dir,
            )
        from toolkit.inference.predictor import Predictor  # torch: only for torch models

        return Predictor.from_model_dir(model_dir, options)
    if not onnx:
        raise ToolkitError(
            f"holds no ONNX networks for --backend {backend}: export them first with "
            "`toolkit export-model DATASET --format onnx` (then `toolkit import-model`)",
            model_dir,
        )
    return RuntimePredictor.from_model_dir(model_dir, options, backend)
