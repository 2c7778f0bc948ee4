"""Fixtures of the training tests (helpers in ``training_helpers``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from training_helpers import LABELS, blob_case, tiny_plans, write_case

from toolkit.workspace import DatasetPaths


@pytest.fixture
def tiny_dataset(workspace):
    """10 preprocessed cases, plans and dataset.json in a fresh workspace."""
    paths = DatasetPaths(workspace / "Tiny")
    paths.raw.mkdir(parents=True)
    paths.dataset_json.write_text(
        json.dumps(
            {
                "channel_names": {"0": "MR"},
                "labels": LABELS,
                "numTraining": 10,
                "file_ending": ".nii.gz",
            }
        )
    )
    tiny_plans().save(paths.plans_json)
    rng = np.random.default_rng(0)
    for i in range(10):
        image, seg = blob_case(rng)
        write_case(
            paths.preprocessed_dir("3d_fullres"), f"case_{i:02d}", image, seg, paths.labels_tr
        )
    return paths
