"""The loss and pseudo-Dice for regions and the ignore label (nnU-Net v2's DC_and_BCE_loss and
DC_and_CE_loss with ignore_label), checked by their properties and, where the reference is
installed, against nnU-Net v2's own loss classes on the same tensors."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from toolkit.core.labels import label_model
from toolkit.training.loss import DeepSupervisionLoss, hard_counts, pseudo_dice, segmentation_loss

REPO = Path(__file__).resolve().parents[2]
NNUNET_PYTHON = Path(
    os.environ.get("TOOLKIT_NNUNET_PYTHON", REPO / "bench" / ".venv-nnunet" / "bin" / "python")
)
BRATS = {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": [3]}
REGIONS = label_model(BRATS, [1, 2, 3])
REGIONS_IGNORE = label_model({**BRATS, "ignore": 4}, [1, 2, 3])
CLASSES_IGNORE = label_model({"background": 0, "a": 1, "b": 2, "ignore": 3})


def _batch(seed: int, outputs: int, top: int, shape=(2, 6, 8, 8)):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn((shape[0], outputs, *shape[1:]), generator=g)
    target = torch.randint(0, top + 1, (shape[0], 1, *shape[1:]), generator=g)
    return logits, target


def test_region_loss_is_bce_minus_dice_over_every_region():
    logits, target = _batch(0, 3, 3)
    regions = torch.stack([(target[:, 0] >= v) for v in (1, 2, 3)], 1).float()
    probabilities = torch.sigmoid(logits)
    axes = (2, 3, 4)
    dice = (2 * (probabilities * regions).sum(axes) + 1e-5) / (
        probabilities.sum(axes) + regions.sum(axes) + 1e-5
    )
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, regions)
    expected = bce - dice.mean()
    assert float(segmentation_loss(logits, target, REGIONS, batch_dice=False)) == pytest.approx(
        float(expected), abs=1e-5
    )


@pytest.mark.parametrize("labels, outputs", [(REGIONS_IGNORE, 3), (CLASSES_IGNORE, 3)])
def test_ignored_voxels_change_neither_loss_nor_gradient(labels, outputs):
    logits, target = _batch(1, outputs, labels.ignore)
    logits.requires_grad_()
    loss = segmentation_loss(logits, target, labels, batch_dice=True)
    loss.backward()
    ignored = (target == labels.ignore).expand_as(logits)
    assert ignored.any() and (logits.grad[ignored] == 0).all()
    changed = logits.detach().clone()
    changed[ignored] = torch.randn(int(ignored.sum()))  # any prediction where nothing is known
    again = segmentation_loss(changed, target, labels, batch_dice=True)
    assert float(again) == pytest.approx(float(loss.detach()), abs=1e-6)


def test_a_batch_without_annotation_has_dice_only_and_no_nan():
    logits, _ = _batch(2, 3, 3)
    target = torch.full((2, 1, 6, 8, 8), 3)
    for labels in (CLASSES_IGNORE, label_model({**BRATS, "ignore": 4}, [1, 2, 3])):
        fill = torch.full_like(target, labels.ignore)
        value = segmentation_loss(logits, fill, labels, batch_dice=False)
        assert torch.isfinite(value)


def test_deep_supervision_loss_uses_the_region_loss_at_every_scale():
    loss = DeepSupervisionLoss([[1, 1, 1], [1, 0.5, 0.5]], batch_dice=False, labels=REGIONS)
    logits, target = _batch(3, 3, 3)
    coarse = torch.randn((2, 3, 6, 4, 4))
    total = loss([logits, coarse], target)
    assert float(total) == pytest.approx(float(loss.one(logits, target)), abs=1e-6)  # weights 1, 0


def test_pseudo_dice_counts_per_region_and_skips_ignored_voxels():
    target = torch.tensor([[[0, 1, 2, 3, 4, 4]]])
    logits = torch.tensor(
        [[[-1.0, 1, 1, 1, 1, -1], [-1.0, -1, 1, 1, 1, 1], [-1.0, -1, -1, 1, 1, 1]]]
    )
    counts = hard_counts(logits, target, REGIONS_IGNORE)
    assert counts.T.tolist() == [
        [3, 0, 0],
        [2, 0, 0],
        [1, 0, 0],
    ]  # the ignored voxels count nowhere
    assert pseudo_dice(counts) == [1.0, 1.0, 1.0]
    classes = hard_counts(
        torch.tensor([[[5.0, 0, 0, 0], [0, 5, 0, 5], [0, 0, 5, 0]]]),
        torch.tensor([[[0, 1, 2, 3]]]),
        CLASSES_IGNORE,
    )
    assert classes.T.tolist() == [[1, 0, 0], [1, 0, 0]]


_REFERENCE = r"""
import json, sys
import numpy as np, torch
from batchgeneratorsv2.transforms.utils.seg_to_regions import ConvertSegmentationToRegionsTransform
from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss, DC_and_CE_loss
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
data = np.load(sys.argv[1])
out = {}
for batch_dice in (False, True):
    for name in ("regions", "regions_ignore", "classes_ignore"):
        logits = torch.from_numpy(data[name + "_logits"])
        target = torch.from_numpy(data[name + "_target"]).long()
        if name.startswith("regions"):
            regions = [(1, 2, 3), (2, 3), (3,)] + ([4] if name.endswith("ignore") else [])
            convert = ConvertSegmentationToRegionsTransform(regions, 0)
            target = torch.stack([convert._apply_to_segmentation(t) for t in target])
            loss = DC_and_BCE_loss({}, {"batch_dice": batch_dice, "do_bg": True, "smooth": 1e-5, "ddp": False},
                                   use_ignore_label=name.endswith("ignore"), dice_class=MemoryEfficientSoftDiceLoss)
        else:
            loss = DC_and_CE_loss({"batch_dice": batch_dice, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                                  weight_ce=1, weight_dice=1, ignore_label=3, dice_class=MemoryEfficientSoftDiceLoss)
        out[f"{name}_{batch_dice}"] = float(loss(logits, target))
print("RESULT " + json.dumps(out))
"""


def _reference_missing() -> str | None:
    if not NNUNET_PYTHON.is_file():
        return f"nnU-Net v2 is not installed: no {NNUNET_PYTHON} (make it with `make reference`, or set TOOLKIT_NNUNET_PYTHON)"
    return None


def test_losses_match_nnunet_v2(tmp_path):
    reason = _reference_missing()
    if reason is not None:
        pytest.skip(reason)
    cases = {
        "regions": (REGIONS, 3),
        "regions_ignore": (REGIONS_IGNORE, 4),
        "classes_ignore": (CLASSES_IGNORE, 3),
    }
    arrays, ours = {}, {}
    for seed, (name, (labels, top)) in enumerate(cases.items()):
        logits, target = _batch(10 + seed, 3, top)
        arrays[name + "_logits"] = logits.detach().numpy()
        arrays[name + "_target"] = target.numpy()
        for batch_dice in (False, True):
            ours[f"{name}_{batch_dice}"] = float(
                segmentation_loss(logits, target, labels, batch_dice=batch_dice)
            )
    np.savez(tmp_path / "batches.npz", **arrays)
    script = tmp_path / "reference.py"
    script.write_text(_REFERENCE)
    result = subprocess.run(
        [str(NNUNET_PYTHON), str(script), str(tmp_path / "batches.npz")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = [x for x in result.stdout.splitlines() if x.startswith("RESULT ")][-1]
    theirs = json.loads(line[len("RESULT ") :])
    for key, value in ours.items():
        assert value == pytest.approx(theirs[key], abs=1e-5), key
