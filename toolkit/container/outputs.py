"""What the platform would say about a job's output folder, socket by socket.

Every image output socket needs exactly one single-channel uint8/int8 image at
``/output/<relative_path>/`` with the input's geometry, holding only declared label values
and, for a segmentation, only values its overlay segments allow (0 always is); every JSON
output socket and ``results.json`` must be valid JSON (no NaN); nothing else may be there.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from toolkit.container.entrypoint import OUTPUT_IMAGE, RESULTS_JSON
from toolkit.container.interfaces import Interface, Socket
from toolkit.container.spec import AlgorithmSpec
from toolkit.io.images import Geometry

SEGMENTATION_DTYPES = (sitk.sitkUInt8, sitk.sitkInt8)


def _check_json(path: Path, shown: str) -> list[str]:
    if not path.is_file():
        return [f"no {shown}"]
    try:
        json.loads(path.read_text(), parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        return [f"{shown} is not valid JSON ({exc})"]
    return []


def check_label_image(
    image_path: Path, socket: Socket, spec: AlgorithmSpec, geometry: Geometry
) -> tuple[np.ndarray, list[str]]:
    """What the platform says about one image output socket's file."""
    problems: list[str] = []
    image = sitk.ReadImage(str(image_path))
    if image.GetNumberOfComponentsPerPixel() != 1:
        problems.append(
            f"{socket.slug}: the output has {image.GetNumberOfComponentsPerPixel()} components; a segmentation has one"
        )
    if image.GetPixelID() not in SEGMENTATION_DTYPES:
        problems.append(
            f"{socket.slug}: the output is {image.GetPixelIDTypeAsString()}; a segmentation is uint8 or int8"
        )
    mismatch = geometry.matches(Geometry.of(image))
    if mismatch is not None:
        problems.append(
            f"{socket.slug}: the output's geometry differs from the input's: {mismatch}"
        )
    labels = sitk.GetArrayFromImage(image)
    if labels.ndim == 2:
        labels = labels[None]
    values = set(np.unique(labels).tolist())
    undeclared = sorted(values - set(spec.label_values))
    if undeclared:
        problems.append(f"{socket.slug}: the output holds undeclared label values {undeclared}")
    allowed = socket.allowed_values
    outside = sorted(values - allowed) if allowed is not None else []
    if outside:
        problems.append(
            f"{socket.slug}: the output holds value(s) {outside} outside the socket's overlay segments {sorted(allowed or [])}"
        )
    return labels, problems


def check_output(
    output_dir: Path, spec: AlgorithmSpec, geometry: Geometry, interface: Interface | None = None
) -> tuple[np.ndarray | None, list[str]]:
    """What the platform would say about a job's output: the label array and the problems."""
    interface = interface or spec.interfaces[0]
    problems: list[str] = []
    expected = {output_dir / RESULTS_JSON}
    labels = None
    for socket in interface.label_outputs:
        folder = output_dir / socket.relative_path
        files = sorted(p for p in folder.iterdir()) if folder.is_dir() else []
        if len(files) != 1:
            problems.append(
                f"{socket.relative_path}/ holds {len(files)} files ({', '.join(p.name for p in files) or 'none'}); the platform needs exactly one image"
            )
        image_path = folder / OUTPUT_IMAGE
        expected.add(image_path)
        if not image_path.is_file():
            problems.append(f"no {socket.relative_path}/{OUTPUT_IMAGE}")
            continue
        written, found = check_label_image(image_path, socket, spec, geometry)
        problems += found
        labels = written if labels is None else labels
    for socket in interface.json_outputs:
        expected.add(output_dir / socket.relative_path)
        problems += _check_json(output_dir / socket.relative_path, socket.relative_path)
    stray = sorted(
        str(p.relative_to(output_dir))
        for p in output_dir.rglob("*")
        if p.is_file() and p not in expected
    )
    if stray:
        problems.append(f"unexpected files in /output: {', '.join(stray)}")
    problems += _check_json(output_dir / RESULTS_JSON, RESULTS_JSON)
    return labels, problems


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")
