"""The cascade: ``3d_cascade_fullres`` sees the ``3d_lowres`` prediction as extra channels.

As in the reference implementation, the first stage's predictions used for training the
second are *out of fold*: at the end of training, ``3d_lowres`` fold ``k`` predicts its own
validation cases (cases it never trained on), resamples the logits to the full-resolution
preprocessed grid and stores their argmax (:func:`toolkit.core.cascade.next_stage_labels`) as
``CASE.npy`` (int8, ``(1, z, y, x)``, memory-mappable) in
``models/3d_lowres/predicted_next_stage/3d_cascade_fullres/``.
After every fold of the split, every training case has one. Training the second stage on the first
stage's predictions of its own training cases would show it near-perfect inputs it never
gets at test time, so it would learn to copy them; out-of-fold predictions have test-time
quality. Consequently a cascade fold needs every low-resolution fold trained first.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from toolkit.core.cascade import next_stage_labels
from toolkit.core.plans import Configuration, Plans
from toolkit.core.splits import Split
from toolkit.errors import ToolkitError
from toolkit.io.atomic import atomic_path
from toolkit.io.preprocessed import load_properties
from toolkit.workspace import DatasetPaths

PREDICTION_SUFFIX = ".npy"


def prediction_path(folder: Path, case: str) -> Path:
    return folder / f"{case}{PREDICTION_SUFFIX}"


def require_previous_stage(
    paths: DatasetPaths,
    plans: Plans,
    configuration: Configuration,
    split: Split,
    splits: list[Split],
) -> Path:
    """The folder of first-stage predictions, after checking every case of the fold has one."""
    previous = configuration.previous_stage
    assert previous is not None
    plans.configuration(previous)
    folder = paths.next_stage_dir(previous, configuration.name)
    missing = [c for c in split.train + split.val if not prediction_path(folder, c).is_file()]
    if missing:
        folds = sorted({k for k, s in enumerate(splits) if set(s.val) & set(missing)})
        commands = " and ".join(f"`toolkit train {paths.name} {previous} {k}`" for k in folds)
        raise ToolkitError(
            f"{len(missing)} case(s) have no {previous} prediction for the cascade (e.g. {missing[0]}): run {commands} first",
            folder,
        )
    return folder


def next_stages(plans: Plans, configuration: Configuration) -> list[Configuration]:
    """Configurations that take this one's predictions as input."""
    return [c for c in plans.configurations.values() if c.previous_stage == configuration.name]


def export_case(
    plans: Plans,
    configuration: Configuration,
    next_configuration: Configuration,
    paths: DatasetPaths,
    case: str,
    logits: Sequence[np.ndarray],
) -> Path:
    """Store one case's first-stage prediction on the next stage's preprocessed grid.

    ``logits`` (one array per class) are on the first stage's preprocessed grid; the labels
    :func:`~toolkit.core.cascade.next_stage_labels` makes of them on the next stage's grid of
    the same case are written as ``(1, z, y, x)``.
    """
    props = load_properties(paths.preprocessed_dir(configuration.data_identifier), case)
    next_props = load_properties(paths.preprocessed_dir(next_configuration.data_identifier), case)
    labels = next_stage_labels(
        logits,
        plans=plans,
        configuration=configuration,
        spacing=props.spacing,
        next_shape=next_props.shape_after_resampling,
    )[None]
    target = prediction_path(
        paths.next_stage_dir(configuration.name, next_configuration.name), case
    )
    with atomic_path(target) as tmp:
        np.save(tmp, labels)
    return target
