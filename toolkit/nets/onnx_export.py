"""A fold's network as an ONNX file (``export-model --format onnx``), the contract of
:mod:`toolkit.core.onnx_network`.

The graph is the inference network: built without deep-supervision heads (as the predictor
builds it), in evaluation mode, its one output the full-resolution logits. Input and output
names are :data:`~toolkit.core.onnx_network.INPUT_NAME` and
:data:`~toolkit.core.onnx_network.OUTPUT_NAME`; the batch axis is dynamic, the spatial axes
the plan's patch (why: :mod:`toolkit.core.onnx_network`). The opset is
:data:`~toolkit.core.onnx_network.OPSET`. Every file is checked by ``onnx.checker`` before it
is written.

Networks come from :func:`toolkit.inference.loading.load_model`, so anything ``toolkit
predict`` reads exports: the toolkit's model folders and nnU-Net v2's (plain and residual
encoder; classes and regions; both stages of a cascade).
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from toolkit.core.cascade import input_channels
from toolkit.core.onnx_network import BATCH_AXIS, INPUT_NAME, OPSET, OUTPUT_NAME, NetworkSpec
from toolkit.core.plans import Configuration, Plans
from toolkit.errors import ToolkitError

# the largest batch the graph's dynamic axis declares (images per forward pass)
MAX_BATCH = 1024


class _InferenceGraph(nn.Module):
    """The network's full-resolution logits only (a deep-supervision list's first entry)."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        out = self.network(image)
        return out[0] if isinstance(out, list | tuple) else out


@contextlib.contextmanager
def _quiet_exporter_log() -> Iterator[None]:
    """The exporter logs a warning per torchvision operator it cannot register when torchvision
    is absent (the toolkit needs none): not the user's concern."""
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def network_spec(
    plans: Plans, configuration: Configuration, mirror_axes: Sequence[int] | None
) -> NetworkSpec:
    return NetworkSpec(
        configuration=configuration.name,
        spatial_dims=configuration.spatial_dims,
        input_channels=input_channels(plans, configuration),
        num_classes=plans.num_classes,
        patch_size=[int(p) for p in configuration.patch_size],
        mirror_axes=None if mirror_axes is None else [int(a) for a in mirror_axes],
    )


def onnx_bytes(network: nn.Module, spec: NetworkSpec) -> bytes:
    """The network's inference graph as a checked ONNX file (float32, batch axis dynamic)."""
    import onnx

    graph = _InferenceGraph(network).eval().to("cpu", torch.float32)
    example = torch.zeros((2, spec.input_channels, *spec.patch_size), dtype=torch.float32)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "network.onnx"
        with torch.no_grad(), warnings.catch_warnings(), _quiet_exporter_log():
            warnings.simplefilter("ignore")  # the exporter's notes on its own internals
            # torch.export's exporter (the TorchScript one is deprecated); one file, weights
            # inside (external data only matters past 2 GB, which no U-Net of a plan reaches)
            torch.onnx.export(
                graph,
                (example,),
                str(path),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: torch.export.Dim(BATCH_AXIS, min=1, max=MAX_BATCH)},),
                opset_version=OPSET,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
        model = onnx.load(str(path))
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ToolkitError(
            f"the exported {spec.configuration} graph fails onnx.checker: {exc}"
        ) from None
    buffer = io.BytesIO()
    onnx.save_model(model, buffer)
    return buffer.getvalue()


def require_onnx() -> None:
    """One line, not a traceback, when the exporter's packages are missing."""
    import importlib.util

    missing = [m for m in ("onnx",) if importlib.util.find_spec(m) is None]
    if missing:
        raise ToolkitError(
            f"--format onnx needs the {', '.join(missing)} package (a dependency of the toolkit): "
            "pip install onnx onnxscript"
        )
