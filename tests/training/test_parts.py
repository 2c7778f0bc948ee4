"""Sampler, loss, splits, schedule and checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from toolkit.core.checkpoint import load_checkpoint, save_checkpoint
from toolkit.core.splits import fold_split, load_or_create_splits, make_splits
from toolkit.errors import ToolkitError
from toolkit.training import checkpoint as ck
from toolkit.training.loss import (
    DeepSupervisionLoss,
    deep_supervision_weights,
    downsample_target,
    hard_counts,
    loss_scales,
    pseudo_dice,
    soft_dice,
)
from toolkit.training.sampling import (
    CaseData,
    PatchSampler,
    crop_and_pad,
    crop_range,
    foreground_flags,
)
from toolkit.training.schedule import Schedule, poly_lr

# sampling ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch, forced", [(2, [1]), (3, [2]), (12, [8, 9, 10, 11]), (1, [])])
def test_last_third_of_the_batch_is_forced(batch, forced):
    assert [j for j, f in enumerate(foreground_flags(batch)) if f] == forced


def test_crop_and_pad_reads_inside_and_pads_outside():
    a = np.arange(2 * 4 * 5, dtype=np.float32).reshape(2, 4, 5)
    out = crop_and_pad(a, [-1, 3], (3, 4), -7, np.float32)
    assert out.shape == (2, 3, 4)
    assert (out[:, 0] == -7).all() and (out[:, :, 2:] == -7).all()
    assert np.array_equal(out[:, 1:, :2], a[:, 0:2, 3:5])


def test_crop_range_lets_patch_centres_reach_the_border_and_pads_small_images():
    lows, highs = crop_range((50,), (30,), (20,))
    assert lows == [-5] and highs == [25]  # patch start from 0 to 30 = 50 - 20
    lows, highs = crop_range((10,), (30,), (20,))
    assert lows == highs == [-10]
    # an odd enlargement: the reference's bounds (-need // 2 in Python, rounding down) reach
    # one voxel further beyond the low side than beyond the high side
    assert crop_range((50,), (29,), (20,)) == ([-5], [26])
    assert crop_range((10,), (29,), (20,)) == ([-10], [-9])


def _cases(tiny_dataset):
    folder = tiny_dataset.preprocessed_dir("3d_fullres")
    return [CaseData.open(folder, f"case_{i:02d}") for i in range(10)]


def test_forced_samples_contain_foreground_and_random_ones_vary(tiny_dataset):
    cases = _cases(tiny_dataset)
    sampler = PatchSampler(cases, (8, 8, 8), (12, 12, 12), [False, True])
    rng = np.random.default_rng(0)
    fg_forced, fg_random = 0, 0
    for _ in range(40):
        batch = sampler.sample(rng)
        assert batch.image.shape == (2, 1, 12, 12, 12) and batch.labels.dtype == np.int16
        centre = batch.labels[:, 0, 2:10, 2:10, 2:10]  # the patch inside the enlarged crop
        fg_forced += (centre[1] > 0).any()
        fg_random += (centre[0] > 0).any()
    assert fg_forced == 40 and fg_random < 40


def test_small_images_are_padded_with_outside_label(tiny_dataset):
    cases = _cases(tiny_dataset)
    sampler = PatchSampler(cases, (24, 16, 16), (30, 16, 16), [False])
    batch = sampler.sample(np.random.default_rng(1))
    assert batch.image.shape[2:] == (30, 16, 16)
    assert (batch.labels == -1).any() and (batch.image[batch.labels == -1] == 0).all()


def test_2d_sampler_picks_slices(tiny_dataset):
    cases = _cases(tiny_dataset)
    sampler = PatchSampler(cases, (16, 16), (20, 20), [False, True])
    batch = sampler.sample(np.random.default_rng(2))
    assert batch.image.shape == (2, 1, 20, 20) and (batch.labels[1] > 0).any()


def _case(shape, voxels_by_class, previous=False):
    """A case whose image holds each voxel's slice index, labels set at ``voxels_by_class``."""
    image = np.broadcast_to(np.arange(shape[0], dtype=np.float32)[:, None, None], shape).copy()[
        None
    ]
    labels = np.zeros((1, *shape), dtype=np.int16)
    locations = {}
    for label, voxels in voxels_by_class.items():
        array = np.asarray(voxels, dtype=np.int64).reshape(-1, 3)
        labels[(0, *array.T)] = label
        locations[label] = array
    prev = labels.copy() if previous else None
    return CaseData("case", image, labels, prev, locations)


def test_2d_forced_sample_picks_a_class_then_a_voxel_among_its_locations():
    # class 1: one voxel on slice 0 and nine on slice 2; class 2: one voxel on slice 4
    ones = [(0, 8, 8)] + [(2, y, x) for y in (3, 8, 12) for x in (3, 8, 12)]
    case = _case((5, 16, 16), {1: ones, 2: [(4, 8, 8)]})
    sampler = PatchSampler([case], (8, 8), (8, 8), [True])
    rng = np.random.default_rng(0)
    slices = [int(sampler.sample(rng).image[0, 0, 0, 0]) for _ in range(3000)]
    share = {z: slices.count(z) / len(slices) for z in (0, 2, 4)}
    assert abs(share[4] - 0.5) < 0.04  # classes are equally likely
    # within class 1, slices count by their voxels: 1/10 and 9/10 (not 1/2 each)
    assert abs(share[0] - 0.05) < 0.015 and abs(share[2] - 0.45) < 0.04


def test_forced_crop_stays_centred_on_the_voxel_and_may_run_into_padding():
    for corner, centre in [((19, 19, 19), (6, 6, 6)), ((0, 0, 0), (2, 2, 2))]:
        case = _case((20, 20, 20), {1: [corner]})
        sampler = PatchSampler([case], (8, 8, 8), (12, 12, 12), [True])
        labels = sampler.sample(np.random.default_rng(0)).labels[0, 0]
        # upper border: centred, the crop runs 5 voxels into padding; lower border: the
        # crop starts at the lowest random start (-2), as the reference's get_bbox
        assert labels[centre] == 1 and labels.max() == 1
    assert (labels[:2] == -1).all() and (labels[2:, 2:, 2:] >= 0).all()


def test_sampler_hands_the_previous_stage_labels_on_unchanged():
    rng = np.random.default_rng(3)
    voxels = [tuple(int(v) for v in rng.integers(0, 12, 3)) for _ in range(12)]
    case = _case((12, 12, 12), {1: voxels[:6], 2: voxels[6:]}, previous=True)
    sampler = PatchSampler([case], (8, 8, 8), (10, 10, 10), [False, True])
    for _ in range(100):  # perturbing it is the augmentation's job, after the spatial transforms
        labels = sampler.sample(rng).labels
        assert np.array_equal(labels[:, 1], labels[:, 0])


# loss -------------------------------------------------------------------------------------------


def test_deep_supervision_weights_halve_and_drop_the_coarsest():
    assert deep_supervision_weights(4) == pytest.approx([1 / 1.75, 0.5 / 1.75, 0.25 / 1.75, 0.0])
    assert deep_supervision_weights(1) == [1.0]


def test_scales_from_strides_when_the_plan_has_none(tiny_dataset):
    from toolkit.core.plans import Plans

    cfg = Plans.load(tiny_dataset.plans_json).configuration("3d_fullres")
    assert loss_scales(cfg) == [[1.0] * 3, [0.5] * 3]
    targets = downsample_target(
        torch.zeros((2, 1, 16, 16, 16), dtype=torch.long), [[1, 1, 1], [0.5, 0.5, 0.25]]
    )
    assert [t.shape[2:] for t in targets] == [torch.Size([16, 16, 16]), torch.Size([8, 8, 4])]


def test_dice_is_one_for_a_perfect_prediction_and_excludes_background():
    target = torch.zeros((2, 1, 6, 6), dtype=torch.long)
    target[0, 0, :3] = 1
    target[1, 0, 3:] = 2
    perfect = torch.nn.functional.one_hot(target[:, 0], 3).permute(0, 3, 1, 2).float() * 50
    assert soft_dice(perfect, target, batch_dice=True) == pytest.approx(1.0, abs=1e-4)
    # per-sample Dice: class 2 absent in sample 0 gives (0 + eps) / (0 + eps) = 1 too
    assert soft_dice(perfect, target, batch_dice=False) == pytest.approx(1.0, abs=1e-4)
    wrong = perfect.roll(1, dims=1)
    assert soft_dice(wrong, target, batch_dice=True) < 0.01
    loss = DeepSupervisionLoss([[1, 1], [0.5, 0.5]], batch_dice=True)
    value = loss([perfect, perfect[:, :, ::2, ::2]], target)
    assert value == pytest.approx(-1.0, abs=1e-3)


def test_pseudo_dice_from_counts():
    target = torch.tensor([[[0, 1, 1, 2]]])
    logits = torch.nn.functional.one_hot(torch.tensor([[0, 1, 2, 2]]), 3).permute(0, 2, 1).float()
    counts = hard_counts(logits, target)
    assert counts.tolist() == [[1, 1], [0, 1], [1, 0]]
    assert pseudo_dice(counts) == pytest.approx([2 / 3, 2 / 3])
    assert np.isnan(pseudo_dice(torch.zeros((3, 1), dtype=torch.long))[0])


# splits and schedule -----------------------------------------------------------------------


def test_splits_are_seeded_disjoint_and_cover_every_case(tmp_path):
    cases = [f"c{i:02d}" for i in range(12)]
    splits = make_splits(list(reversed(cases)))
    assert splits == make_splits(cases)
    assert sorted(c for s in splits for c in s.val) == cases
    assert [len(s.val) for s in splits] == [3, 3, 2, 2, 2]
    for s in splits:
        assert not set(s.train) & set(s.val) and s.train == sorted(s.train)
    path = tmp_path / "splits.json"
    first = load_or_create_splits(path, cases)
    assert load_or_create_splits(path, cases[:5]) == first  # written once, then reused
    with pytest.raises(ToolkitError, match="fold 7 does not exist"):
        fold_split(first, 7, cases, path)
    with pytest.raises(ToolkitError, match="not preprocessed"):
        fold_split(first, 0, cases[:3], path)
    with pytest.raises(ToolkitError, match="at least 5"):
        make_splits(cases[:3])


def test_poly_schedule():
    s = Schedule(epochs=10)
    assert s.lr(0) == pytest.approx(0.01) and s.lr(5) == pytest.approx(0.01 * 0.5**0.9)
    assert poly_lr(999, 1000, 0.01) == pytest.approx(0.01 * 0.001**0.9)
    with pytest.raises(ToolkitError, match="--epochs"):
        Schedule(epochs=0)


# checkpoints --------------------------------------------------------------------------------


def test_checkpoint_round_trip_with_weights_only(tmp_path):
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    net(torch.ones(1, 3)).sum().backward()
    opt.step()
    state = ck.TrainingState(
        epoch=3, iteration=2, partial_train_losses=[0.5], history=[{"epoch": 0, "train_loss": 1.0}]
    )
    data = ck.build_checkpoint(
        net.state_dict(),
        "3d_fullres",
        {"patch_size": [1, 2, 3]},
        opt.state_dict(),
        None,
        state,
        {"seed": 1},
    )
    path = tmp_path / "checkpoint_latest.pt"
    save_checkpoint(path, data)
    loaded = torch.load(path, weights_only=True)
    assert torch.equal(loaded["network"]["weight"], net.weight)
    back = load_checkpoint(path)
    assert ck.training_state(back) == state
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    snapshot = ck.rng_state()
    torch.rand(7)
    ck.restore_rng_state(snapshot)
    assert torch.equal(torch.rand(3), expected)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_latest.pt"]


def test_damaged_checkpoint_is_a_one_line_error(tmp_path):
    bad = tmp_path / "checkpoint_latest.pt"
    bad.write_bytes(b"\x80\x02garbage")
    with pytest.raises(ToolkitError, match="cannot be loaded as a checkpoint"):
        load_checkpoint(bad)


def test_with_an_ignore_label_every_sample_is_centred_on_an_annotated_voxel():
    # annotated voxels only on slice 3 (the rest of the case holds the ignore value)
    annotated = np.asarray([(3, y, x) for y in range(16) for x in range(16)], dtype=np.int64)
    case = _case((8, 16, 16), {})
    case.annotated = annotated
    sampler = PatchSampler([case], (1, 8, 8), (1, 8, 8), [False, True], annotated_only=True)
    rng = np.random.default_rng(0)
    for _ in range(20):  # a slice of one voxel: the slice drawn is the centre's
        assert (sampler.sample(rng).image.max(axis=(1, 2, 3, 4)) == 3).all()
    plain = PatchSampler([case], (1, 8, 8), (1, 8, 8), [False], annotated_only=False)
    drawn = {float(plain.sample(rng).image.max()) for _ in range(40)}
    assert len(drawn) > 1  # without the ignore label a random crop may lie anywhere


def test_forced_samples_pick_among_regions_by_their_keys():
    case = _case((5, 16, 16), {})
    case.locations = {"1,2,3": np.asarray([(0, 8, 8)]), "3": np.asarray([(4, 8, 8)])}
    sampler = PatchSampler([case], (8, 8), (8, 8), [True])
    rng = np.random.default_rng(0)
    slices = [int(sampler.sample(rng).image[0, 0, 0, 0]) for _ in range(400)]
    assert set(slices) == {0, 4} and abs(slices.count(4) / 400 - 0.5) < 0.1
