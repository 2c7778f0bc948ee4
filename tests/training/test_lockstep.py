"""The toolkit's training step in lockstep with nnU-Net v2's own ``nnUNetTrainer.train_step``:
the same initial weights, the same batches, fp32 on the CPU, a few hundred steps
(``bench/lockstep.py``; the reference half runs in nnU-Net's venv, found through
``TOOLKIT_NNUNET_PYTHON`` or ``bench/.venv-nnunet``)."""

import numpy as np
import pytest
import torch

from bench import lockstep
from toolkit.training.loss import DeepSupervisionLoss


def _reference_missing() -> str | None:
    python = lockstep.reference_python()
    if not python.is_file():
        return f"nnU-Net v2 is not installed: no {python} (set TOOLKIT_NNUNET_PYTHON)"
    return None


def test_the_synthetic_batches_hold_both_classes_in_every_sample():
    images, labels = lockstep.make_batches(3, seed=1)
    assert images.shape == (3, lockstep.BATCH_SIZE, 1, *lockstep.PATCH)
    for sample in labels.reshape(-1, *lockstep.PATCH):
        assert set(np.unique(sample)) == {0, 1, 2}


def test_training_steps_agree_with_nnunet_v2(tmp_path):
    """150 steps, the poly schedule over 15 epochs, per-sample Dice: bit for bit."""
    reason = _reference_missing()
    if reason is not None:
        pytest.skip(reason)
    result = lockstep.lockstep(tmp_path, epochs=15, iterations=10, batch_dice=False)
    first = result["first_step"]
    # each part of the first step on its own
    assert max(first["outputs_max_relative_difference"]) == 0.0  # the network
    assert first["toolkit_loss_of_reference_outputs"] == first["loss_reference"]  # the loss
    assert first["gradient_max_relative_difference"] == 0.0
    # the output weighted 0 gives its head no gradient in either (so no weight decay either)
    assert (
        first["parameters_without_gradient_toolkit"]
        == first["parameters_without_gradient_reference"]
        == ["heads.0.bias", "heads.0.weight"]
    )
    assert first["weights_after_first_step_max_relative_difference"] == 0.0  # the optimiser
    # the whole run: the schedule, every loss, the final weights
    assert result["lrs_equal"]
    assert result["steps"] == 150
    assert result["first_step_loss_differs"] is None, result["loss_max_relative_difference"]
    assert result["final_weights_max_relative_difference"] == 0.0
    # and the network learned something (the comparison is not between two idle runs)
    losses = result["losses_reference"]
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 0.3


def test_clipped_steps_agree_with_nnunet_v2(tmp_path):
    """Batch Dice, the initial heads enlarged so that the first steps are clipped. The total
    gradient norm sums the per-tensor norms in parameter order, which differs between the two
    networks, so the clipping factor may differ in its last bit: float32 tolerance here."""
    reason = _reference_missing()
    if reason is not None:
        pytest.skip(reason)
    result = lockstep.lockstep(tmp_path, epochs=3, iterations=4, batch_dice=True, scale_heads=30.0)
    assert result["clipped_steps"] > 0
    assert result["first_step"]["gradient_max_relative_difference"] == 0.0
    assert result["first_step"]["weights_after_first_step_max_relative_difference"] < 1e-5
    assert result["first_step_over_tolerance"] is None, result["loss_max_relative_difference"]
    assert result["final_weights_max_relative_difference"] < lockstep.WEIGHT_TOLERANCE


def test_the_output_weighted_zero_gives_no_gradient_unless_joined():
    """As nnU-Net v2 leaves it out: its head gets no gradient, so SGD's weight decay and
    momentum leave it alone; distributed training joins it with weight 0 instead."""
    coarse = torch.nn.Parameter(torch.randn((2, 3, 2, 2, 2)))
    fine = torch.nn.Parameter(torch.randn((2, 3, 4, 4, 4)))
    target = torch.randint(0, 3, (2, 1, 4, 4, 4))
    for join, expected in ((False, None), (True, 0.0)):
        coarse.grad = fine.grad = None
        loss = DeepSupervisionLoss([[1, 1, 1], [0.5, 0.5, 0.5]], batch_dice=False, join_unused=join)
        loss([fine, coarse], target).backward()
        assert fine.grad is not None and fine.grad.abs().sum() > 0
        if expected is None:
            assert coarse.grad is None
        else:
            assert torch.equal(coarse.grad, torch.zeros_like(coarse))
