"""Small synthetic data for the inference tests, written in nnU-Net v2's raw layout.

Each case: a CT-like volume (Hounsfield units: air, a body, an ``organ`` (label 1) holding a
``lesion`` (label 2)) with its label map. Learnable in a few dozen iterations, written with
anisotropic spacing and, on odd cases, a non-identity direction.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from toolkit.core.checkpoint import network_checkpoint
from toolkit.core.plans import Architecture, Configuration, Normalization, Plans
from toolkit.io.images import Geometry, write_image
from toolkit.nets.unet import build_network

LABELS = {"background": 0, "organ": 1, "lesion": 2}
FLIPPED_DIRECTION = (-1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0)  # x flipped, y and z swapped


def make_case(
    seed: int, shape=(20, 48, 40), spacing_zyx=(2.5, 0.9, 0.8)
) -> tuple[np.ndarray, np.ndarray, Geometry]:
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    mm = [z * spacing_zyx[0], y * spacing_zyx[1], x * spacing_zyx[2]]
    extent = [s * sp for s, sp in zip(shape, spacing_zyx, strict=True)]
    body = ((mm[1] - extent[1] / 2) / (0.45 * extent[1])) ** 2 + (
        (mm[2] - extent[2] / 2) / (0.45 * extent[2])
    ) ** 2 < 1
    centre = [e * rng.uniform(0.4, 0.6) for e in extent]
    radii = [rng.uniform(0.22, 0.3) * min(extent[1:]) for _ in range(3)]
    radii[0] = max(radii[0], 2.5 * spacing_zyx[0])
    organ = sum(((m - c) / r) ** 2 for m, c, r in zip(mm, centre, radii, strict=True)) < 1
    lesion = sum(((m - c) / (0.6 * r)) ** 2 for m, c, r in zip(mm, centre, radii, strict=True)) < 1
    image = np.full(shape, -1000.0, dtype=np.float32)
    image[body] = 40.0
    image[organ] = 120.0
    image[lesion] = 220.0
    image += rng.normal(0, 12, size=shape).astype(np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    label[organ] = 1
    label[lesion] = 2
    direction = FLIPPED_DIRECTION if seed % 2 else (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    geometry = Geometry(
        spacing=tuple(float(s) for s in spacing_zyx[::-1]),
        origin=(float(rng.uniform(-50, 50)), float(rng.uniform(-50, 50)), -20.0),
        direction=direction,
        size=tuple(shape[::-1]),
    )
    return image, label, geometry


def write_raw_dataset(
    folder: Path, cases: int = 8, shape=(20, 48, 40), test_cases: int = 2
) -> Path:
    """A raw dataset (nnU-Net v2 layout, also ours): training cases and ``imagesTs`` cases."""
    for i in range(cases + test_cases):
        image, label, geometry = make_case(i, shape)
        case = f"synth_{i:03d}"
        subset = "Tr" if i < cases else "Ts"
        write_image(folder / f"images{subset}" / f"{case}_0000.nii.gz", image, geometry)
        if subset == "Tr":
            write_image(folder / "labelsTr" / f"{case}.nii.gz", label, geometry)
    dataset = {
        "name": "Synth",
        "channel_names": {"0": "CT"},
        "labels": LABELS,
        "numTraining": cases,
        "file_ending": ".nii.gz",
    }
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
    return folder


def make_plans(
    spatial_dims: int = 3,
    patch=(16, 32, 32),
    target_spacing=(2.5, 0.9, 0.8),
    transpose_forward=(0, 1, 2),
    features=(4, 8, 16),
    channels: int = 1,
    cascade: bool = False,
) -> Plans:
    """A small plan: ``3d_fullres`` (or ``2d``), and with ``cascade`` a ``3d_lowres`` + ``3d_cascade_fullres``."""
    n = len(features)
    if spatial_dims == 3:
        kernels = [[1, 3, 3]] + [[3, 3, 3]] * (n - 1)
        strides = [[1, 1, 1], [1, 2, 2]] + [[2, 2, 2]] * (n - 2)
    else:
        kernels = [[3, 3]] * n
        strides = [[1, 1]] + [[2, 2]] * (n - 1)
    architecture = Architecture(list(features), kernels, strides, [2] * n, [2] * (n - 1))
    norm = [Normalization("ct", False, 100.0, 50.0, -200.0, 300.0)] + [Normalization("zscore")] * (
        channels - 1
    )
    transpose_backward = [int(i) for i in np.argsort(transpose_forward)]

    def config(name, spacing, previous=None, next_stage=None, dims=spatial_dims, p=patch):
        return Configuration(
            name=name,
            data_identifier=name,
            spatial_dims=dims,
            target_spacing=list(spacing),
            median_shape=[20, 48, 40],
            patch_size=list(p),
            batch_size=2,
            architecture=architecture,
            normalization=norm,
            previous_stage=previous,
            next_stage=next_stage,
        )

    name = "3d_fullres" if spatial_dims == 3 else "2d"
    configurations = {name: config(name, target_spacing)}
    if cascade:
        low = [s * 2 for s in target_spacing]
        configurations["3d_lowres"] = config("3d_lowres", low, next_stage="3d_cascade_fullres")
        configurations["3d_cascade_fullres"] = config(
            "3d_cascade_fullres", target_spacing, previous="3d_lowres"
        )
    return Plans(
        dataset_name="Synth",
        channel_names={str(i): ("CT" if i == 0 else f"ch{i}") for i in range(channels)},
        labels=dict(LABELS),
        transpose_forward=list(transpose_forward),
        transpose_backward=transpose_backward,
        original_median_spacing=[2.5, 0.9, 0.8],
        original_median_shape=[20, 48, 40],
        configurations=configurations,
    )


def save_model_dir(
    model_dir: Path, plans: Plans, configuration: str, folds=(0,), seed: int = 0
) -> Path:
    """A model folder as training writes it, with randomly initialised networks."""
    model_dir.mkdir(parents=True, exist_ok=True)
    plans.save(model_dir / "plans.json")
    dataset = {
        "channel_names": plans.channel_names,
        "labels": plans.labels,
        "numTraining": 8,
        "file_ending": ".nii.gz",
    }
    (model_dir / "dataset.json").write_text(json.dumps(dataset))
    for k in folds:
        torch.manual_seed(seed + k)
        network = build_network(plans, plans.configuration(configuration), deep_supervision=True)
        (model_dir / f"fold_{k}").mkdir(exist_ok=True)
        torch.save(
            network_checkpoint(network.state_dict(), configuration) | {"epoch": 1},
            model_dir / f"fold_{k}" / "checkpoint_final.pt",
        )
    return model_dir
