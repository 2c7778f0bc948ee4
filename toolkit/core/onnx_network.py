"""The contract of an exported network: ``fold_<k>/network.onnx`` and ``network.json`` beside it.

``network.onnx`` is a fold's inference graph (no deep-supervision heads):

- input ``image``: float32 ``(batch, channels, z, y, x)`` (a 2D configuration's
  ``(batch, channels, y, x)``), the preprocessed patch; for a cascade stage the image channels
  are followed by one one-hot channel per foreground class of the first stage's segmentation;
- output ``logits``: float32 ``(batch, classes, z, y, x)`` (2D: ``(batch, classes, y, x)``),
  raw logits: softmax over the classes, or one sigmoid per region, comes later.

The batch axis is dynamic (mirrored copies and windows are batched together); the spatial
axes are the plan's patch, fixed, because the sliding window only ever feeds that patch
(smaller volumes are padded to it), and static shapes let OpenVINO and ONNX Runtime plan
their kernels and memory once.

``network.json`` (written by ``toolkit export-model --format onnx``, read by the torch-free
predictor) says what the graph alone does not: the configuration, the mirror axes the fold
was trained with, the names and shapes above, the opset.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from toolkit.errors import ToolkitError
from toolkit.io.json_files import read_json

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
BATCH_AXIS = "batch"
# ONNX Runtime reads opsets up to 21 from 1.16 on and OpenVINO from 2024.0; 18 is the lowest
# torch's exporter (torch.export-based) writes, and what Triton's ONNX Runtime backends of
# 2023 on load
OPSET = 18
NETWORK_FORMAT = "toolkit-onnx-network"
NETWORK_FORMAT_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class NetworkSpec:
    """``network.json``: an exported fold's configuration, mirror axes and graph interface."""

    configuration: str
    spatial_dims: int  # 2 or 3
    input_channels: int  # image channels plus a cascade's one-hot channels
    num_classes: int  # output channels (classes, or regions)
    patch_size: list[int]  # the plan's patch, the graph's spatial shape
    mirror_axes: list[int] | None  # axes of the preprocessed (z, y, x) volume; None: unknown
    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME
    opset: int = OPSET
    format: str = NETWORK_FORMAT
    format_version: int = NETWORK_FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, not {self.spatial_dims}")
        if len(self.patch_size) != self.spatial_dims:
            raise ValueError(
                f"patch_size needs {self.spatial_dims} entries, not {list(self.patch_size)}"
            )

    @property
    def input_shape(self) -> list[int | str]:
        return [BATCH_AXIS, self.input_channels, *self.patch_size]

    @property
    def output_shape(self) -> list[int | str]:
        return [BATCH_AXIS, self.num_classes, *self.patch_size]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"input_shape": self.input_shape, "output_shape": self.output_shape}

    @classmethod
    def load(cls, path: Path) -> NetworkSpec:
        data = read_json(
            path,
            what="network description",
            producer="toolkit export-model --format onnx",
            version_key="format_version",
            version=NETWORK_FORMAT_VERSION,
        )
        if data.get("format") != NETWORK_FORMAT:
            raise ToolkitError(f"is not a {NETWORK_FORMAT} file", path)
        try:
            axes = data["mirror_axes"]
            return cls(
                configuration=str(data["configuration"]),
                spatial_dims=int(data["spatial_dims"]),
                input_channels=int(data["input_channels"]),
                num_classes=int(data["num_classes"]),
                patch_size=[int(p) for p in data["patch_size"]],
                mirror_axes=None if axes is None else [int(a) for a in axes],
                input_name=str(data["input_name"]),
                output_name=str(data["output_name"]),
                opset=int(data["opset"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ToolkitError(
                f"network description is incomplete ({type(exc).__name__}: {exc})", path
            ) from None
