"""The cascade's training input: the first stage's logits resampled to the next grid, argmaxed.

Each case here is built so that the rule nnU-Net v2 uses and the one toolkit used before
(softmax, resample the probabilities, argmax; the coarse axis decided on both stages'
spacings) give different labels.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from training_helpers import blob_case, tiny_plans, write_case

from toolkit.core.cascade import next_stage_labels
from toolkit.core.resampling import resample_probabilities
from toolkit.inference.predictor import Predictor
from toolkit.nets.unet import build_network
from toolkit.training import cascade, validation
from toolkit.training.distributed import DistContext
from toolkit.training.job import TrainOptions, prepare
from toolkit.training.schedule import Schedule


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=0))
    return e / e.sum(axis=0)


def _old_rule(logits, first, second, shape):
    """What toolkit did before: probabilities resampled, the coarse axis from both spacings."""
    probabilities = resample_probabilities(
        _softmax(np.asarray(logits, dtype=np.float64)),
        shape,
        first.target_spacing,
        second.target_spacing,
        first.resampling,
    )
    return probabilities.argmax(0)


def _stages(low_spacing, full_spacing):
    plans = tiny_plans(cascade=True)
    low = replace(plans.configurations["3d_lowres"], target_spacing=list(low_spacing))
    full = replace(plans.configurations["3d_cascade_fullres"], target_spacing=list(full_spacing))
    plans.configurations.update({"3d_lowres": low, "3d_cascade_fullres": full})
    return plans, low, full


def test_logits_are_resampled_before_the_argmax():
    plans, low, full = _stages([1.0] * 3, [1.0] * 3)
    # class 0 is never the largest at the two voxels, but wins in their linear mix
    logits = np.array([[2.0, 2.0], [6.0, -6.0], [-6.0, 6.0]]).reshape(3, 1, 1, 2)
    labels = next_stage_labels(
        list(logits), plans=plans, configuration=low, spacing=[1.0] * 3, next_shape=(1, 1, 3)
    )
    assert labels.ravel().tolist() == [1, 0, 2]
    assert _old_rule(logits, low, full, (1, 1, 3)).ravel()[1] != 0


def test_the_coarse_axis_is_decided_on_the_first_stage_spacing_alone():
    # the first stage's grid is not anisotropic, the next one's is (3.33 > 3): nnU-Net passes
    # the first stage's spacing as both spacings, so every axis is linear
    plans, low, full = _stages([2.0, 1.2, 1.2], [1.0, 0.3, 0.3])
    logits = np.array([[0.0, 10.0], [1.0, 0.0]]).reshape(2, 2, 1, 1)
    labels = next_stage_labels(
        list(logits), plans=plans, configuration=low, spacing=[1.0] * 3, next_shape=(4, 1, 1)
    )
    assert labels.ravel().tolist() == [1, 0, 0, 0]
    # nearest neighbour along z, as both spacings made it before
    assert _old_rule(logits, low, full, (4, 1, 1)).ravel().tolist() == [1, 1, 0, 0]


def _striped_logits(shape) -> list[torch.Tensor]:
    """Classes 1 and 2 alternate slice by slice, class 0 moderately likely everywhere."""
    z = np.arange(shape[0]).reshape(-1, 1, 1) % 2
    one = np.where(z == 0, 6.0, -6.0) * np.ones(shape)
    return [torch.full(shape, 2.0), torch.from_numpy(one).float(), torch.from_numpy(-one).float()]


def test_validation_stores_the_argmax_of_resampled_logits_on_the_next_grid(
    tiny_dataset, monkeypatch
):
    plans = tiny_plans(cascade=True)
    plans.save(tiny_dataset.plans_json)
    rng = np.random.default_rng(1)
    for i in range(10):
        image, seg = blob_case(rng, shape=(14, 16, 16))
        write_case(
            tiny_dataset.preprocessed_dir("3d_lowres"), f"case_{i:02d}", image, seg,
            original_shape=(20, 24, 24),
        )  # fmt: skip
    options = TrainOptions(schedule=Schedule(1, 1, 1), device="cpu", quiet=True)
    job = prepare(tiny_dataset, "3d_lowres", 0, options)
    low, full = plans.configuration("3d_lowres"), plans.configuration("3d_cascade_fullres")
    monkeypatch.setattr(
        Predictor, "predict_logits", lambda self, data, *a: _striped_logits(data.shape[1:])
    )
    network = build_network(plans, low, deep_supervision=True)
    validation.validate_fold(job, DistContext(), network, torch.device("cpu"), "fp32")

    logits = np.stack([t.numpy() for t in _striped_logits((14, 16, 16))])
    folder = tiny_dataset.next_stage_dir("3d_lowres", "3d_cascade_fullres")
    for case in job.split.val:
        stored = np.load(cascade.prediction_path(folder, case))
        expected = next_stage_labels(
            list(logits), plans=plans, configuration=low, spacing=[1.0] * 3, next_shape=(20, 24, 24)
        )
        assert stored.shape == (1, 20, 24, 24) and stored.dtype == np.int8
        assert np.array_equal(stored[0], expected)
        assert (expected == 0).any() and (expected == 1).any() and (expected == 2).any()
        assert not np.array_equal(stored[0], _old_rule(logits, low, full, (20, 24, 24)))
