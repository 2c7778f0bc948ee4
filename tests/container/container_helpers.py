"""A tiny trained-looking dataset for container tests: raw cases, splits, a model folder.

The model is a real U-Net from a hand-written plan (two stages, 4 and 8 features) with
random weights, saved as training saves it (``network`` plus training state), so an export
copies, slims and loads it like a trained one. Nothing here trains.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from toolkit.container.spec import EnsembleSpec
from toolkit.core.checkpoint import network_checkpoint
from toolkit.core.plans import Architecture, Configuration, Normalization, Plans
from toolkit.core.postprocessing import Postprocessing
from toolkit.io.atomic import write_json
from toolkit.io.dataset_json import DatasetInfo, write_dataset_info
from toolkit.io.images import Geometry, write_image
from toolkit.nets.unet import build_network
from toolkit.workspace import (
    CHECKPOINT_FINAL,
    MODEL_DATASET_JSON,
    MODEL_PLANS,
    DatasetPaths,
    channel_file,
    label_file,
)

CONFIG = "3d_fullres"
SHAPE = (8, 16, 16)  # (z, y, x): one window of the patch
SPACING_XYZ = (0.8, 0.9, 2.5)
CASES = [f"case_{i:03d}" for i in range(5)]
LABELS = {"background": 0, "blob": 1, "rim": 2}


def tiny_plans(name: str, channels: tuple[str, ...] = ("MR",)) -> Plans:
    architecture = Architecture(
        features_per_stage=[4, 8],
        kernel_sizes=[[3, 3, 3], [3, 3, 3]],
        strides=[[1, 1, 1], [2, 2, 2]],
        n_conv_per_stage=[1, 1],
        n_conv_per_stage_decoder=[1],
    )
    config = Configuration(
        name=CONFIG,
        data_identifier=f"{CONFIG}_data",
        spatial_dims=3,
        target_spacing=[2.5, 0.9, 0.8],
        median_shape=list(SHAPE),
        patch_size=[8, 16, 16],
        batch_size=2,
        architecture=architecture,
        normalization=[Normalization(scheme="zscore") for _ in channels],
        deep_supervision_scales=[[1.0, 1.0, 1.0]],
    )
    return Plans(
        dataset_name=name,
        channel_names={str(c): n for c, n in enumerate(channels)},
        labels=dict(LABELS),
        transpose_forward=[0, 1, 2],
        transpose_backward=[0, 1, 2],
        original_median_spacing=[2.5, 0.9, 0.8],
        original_median_shape=list(SHAPE),
        configurations={CONFIG: config},
    )


def case_arrays(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(SHAPE)
    centre = np.array(SHAPE) / 2 + rng.uniform(-2, 2, 3)
    distance = np.sqrt(
        ((z - centre[0]) * 2.5) ** 2 + ((y - centre[1]) * 0.9) ** 2 + ((x - centre[2]) * 0.8) ** 2
    )
    label = np.where(distance < 4, 1, np.where(distance < 6, 2, 0)).astype(np.uint8)
    image = (label * 40.0 + rng.normal(100, 10, SHAPE)).astype(np.float32)
    return image, label


def geometry() -> Geometry:
    direction = (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0)  # not the identity, on purpose
    return Geometry(
        spacing=SPACING_XYZ, origin=(10.0, -5.0, 3.0), direction=direction, size=SHAPE[::-1]
    )


def make_dataset(
    workspace: Path,
    name: str = "Dataset900_Tiny",
    folds: tuple[int, ...] = (0, 1),
    channels: tuple[str, ...] = ("MR",),
) -> DatasetPaths:
    """Channel ``c`` is the image plus ``10 * c`` (so channels differ and order matters)."""
    paths = DatasetPaths(workspace / name)
    info = DatasetInfo(
        channel_names={str(c): n for c, n in enumerate(channels)},
        labels=dict(LABELS),
        num_training=len(CASES),
    )
    write_dataset_info(paths.dataset_json, info)
    for k, case in enumerate(CASES):
        image, label = case_arrays(k)
        for c in range(len(channels)):
            write_image(paths.images_tr / channel_file(case, c), image + 10.0 * c, geometry())
        write_image(paths.labels_tr / label_file(case), label, geometry())
    write_json(
        paths.splits_json, [{"train": [c for c in CASES if c != v], "val": [v]} for v in CASES]
    )
    plans = tiny_plans(name, channels)
    plans.save(paths.plans_json)
    model = paths.model_dir(CONFIG)
    plans.save(model / MODEL_PLANS)
    write_dataset_info(model / MODEL_DATASET_JSON, info)
    for fold in folds:
        torch.manual_seed(fold)
        network = build_network(plans, plans.configuration(CONFIG), deep_supervision=True)
        optimizer = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.99)
        checkpoint = network_checkpoint(network.state_dict(), CONFIG) | {
            "optimizer": optimizer.state_dict()
            | {"state": {0: {"momentum_buffer": torch.zeros(3)}}},
            "epoch": 1,
        }
        target = paths.fold_dir(CONFIG, fold) / CHECKPOINT_FINAL
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.save(checkpoint, target)
    return paths


def tiny_ensemble(folds: tuple[int, ...] = (0, 1)) -> EnsembleSpec:
    return EnsembleSpec(
        configurations=[CONFIG],
        folds=list(folds),
        postprocessing=Postprocessing(largest_component_foreground=True),
    )


def write_selection(
    paths: DatasetPaths, folds: tuple[int, ...] = (0, 1), mirroring: bool = True
) -> None:
    """A ``selection.json`` as ``toolkit select`` writes it, choosing the tiny configuration."""
    from toolkit.core.selection import Interval, Selection

    Selection(
        dataset=paths.name,
        candidate=CONFIG,
        configurations=[CONFIG],
        folds=list(folds),
        postprocessing=Postprocessing(largest_component_foreground=True),
        mean_dice=0.5,
        mean_dice_postprocessed=0.52,
        class_dice={1: 0.5, 2: 0.5},
        class_dice_postprocessed={1: 0.52, 2: 0.52},
        interval=Interval(0.4, 0.6),
        rank_first_frequency=1.0,
        labels={1: "blob", 2: "rim"},
        num_cases=len(CASES),
    ).save(paths.selection_json)
