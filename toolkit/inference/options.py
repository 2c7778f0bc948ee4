"""How a model is loaded and run, as one value.

:class:`ModelOptions` says which weights of a model folder are loaded (``folds``,
``checkpoint``) and how its networks run (``device``, ``use_mirroring``, ``step_size``,
``precision``, ``images_per_forward``, ``compile``). It is made once (from ``toolkit
predict``'s options, the container's ensemble, the trainer's validation) and handed on as it
is: to the loader (:mod:`toolkit.inference.loading`), to the
:class:`~toolkit.inference.predictor.Predictor` and, for a cascade, to its first stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from toolkit.core.constants import STEP_SIZE

if TYPE_CHECKING:  # a type only: the torch-free predictor takes these options too
    import torch


@dataclass(frozen=True, kw_only=True)
class ModelOptions:
    """Which weights of a model folder to load and how to run them; every field has its default."""

    folds: Sequence[int | str] | None = None  # ``fold_<f>`` folders; None: every fold present
    checkpoint: str = "final"  # final, best, latest, or a checkpoint's file name (``*.pt``)
    device: str | torch.device = "auto"  # auto: CUDA when present (torch backend)
    use_mirroring: bool = True  # test-time mirroring over the checkpoint's axes
    step_size: float = STEP_SIZE  # window step as a share of the patch size, in (0, 1]
    precision: str = "auto"  # auto: fp16 on CUDA, bf16 on CPUs with native bf16, else float32
    images_per_forward: int | None = None  # None: by device and dimensionality
    compile: bool = False  # run the networks through torch.compile
    # torch, onnxruntime or openvino (toolkit.inference.runtimes.BACKENDS); None: torch for a
    # model of checkpoints, the first installed runtime for a model of ONNX files
    backend: str | None = None
