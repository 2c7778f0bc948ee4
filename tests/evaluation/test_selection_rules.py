import json
import math

import numpy as np
import pytest

from toolkit.core.postprocessing import Postprocessing
from toolkit.core.selection import CandidateScore, Interval, Selection
from toolkit.errors import ToolkitError
from toolkit.evaluation.candidates import Candidate, build_candidates, pick_best
from toolkit.evaluation.postprocessing import (
    PostprocessingStep,
    choose_postprocessing,
    variant_counts,
    variant_dice,
)


def test_candidates_in_simplicity_order():
    single = ["3d_cascade_fullres", "custom", "3d_lowres", "2d", "3d_fullres"]
    names = [c.name for c in build_candidates(single, ["3d_fullres", "2d", "3d_lowres"])]
    assert names == [
        "2d",
        "3d_fullres",
        "3d_lowres",
        "3d_cascade_fullres",
        "custom",
        "2d+3d_fullres",
        "2d+3d_lowres",
        "3d_fullres+3d_lowres",
    ]
    assert Candidate(("3d_fullres", "2d")).name == "2d+3d_fullres"
    assert Candidate.parse("3d_fullres+2d") == Candidate(("2d", "3d_fullres"))
    with pytest.raises(ToolkitError, match="not a candidate"):
        Candidate.parse("2d+2d")


def test_pick_best_prefers_the_simpler_candidate_within_the_tolerance():
    # columns in simplicity order: 2d, 3d_fullres, 2d+3d_fullres
    assert pick_best(np.array([0.80, 0.85, 0.86])) == 2  # the ensemble is better
    assert pick_best(np.array([0.80, 0.8600, 0.8604])) == 1  # within 0.0005: the single one
    assert pick_best(np.array([0.80, 0.8600, 0.8605])) == 1  # the boundary counts as a tie
    assert pick_best(np.array([0.80, 0.8600, 0.8606])) == 2
    assert pick_best(np.array([np.nan, 0.5, 0.4])) == 1  # NaN never wins
    assert pick_best(np.array([[0.9, 0.1], [0.1, 0.9]])).tolist() == [0, 1]


def _case(spurious: bool, second_component_true: bool = False):
    ref = np.zeros((10, 16, 16), np.uint8)
    ref[2:6, 2:8, 2:8] = 1
    ref[3:5, 3:5, 3:5] = 2
    if second_component_true:
        ref[7:9, 12:14, 12:14] = 1  # the reference itself has a second component
    pred = ref.copy()
    if spurious:
        pred[7:9, 12:14, 12:14] = 1  # a blob that is not in the reference
    return ref, pred


def test_spurious_blob_makes_the_foreground_component_step_kept():
    cases = [_case(spurious=True), _case(spurious=False), _case(spurious=True)]
    counts = np.stack([variant_counts(r, p, [1, 2]) for r, p in cases])
    choice = choose_postprocessing(variant_dice(counts), [1, 2], {1: "a", 2: "b"})
    assert choice.postprocessing == Postprocessing(
        largest_component_foreground=True, largest_component_classes=[]
    )
    first = choice.steps[0]
    assert first.accepted and first.label is None
    assert first.mean_dice_after > first.mean_dice_before
    assert first.mean_dice_after == pytest.approx(1.0)
    # per-class steps change nothing any more, so they are not kept
    assert [s.accepted for s in choice.steps[1:]] == [False, False]
    assert np.allclose(choice.dice, 1.0)


def test_step_that_removes_true_structure_is_rejected():
    cases = [_case(spurious=False, second_component_true=True)] * 3
    counts = np.stack([variant_counts(r, p, [1, 2]) for r, p in cases])
    choice = choose_postprocessing(variant_dice(counts), [1, 2], {1: "a", 2: "b"})
    assert choice.postprocessing.is_identity
    assert choice.steps[0].mean_dice_after < choice.steps[0].mean_dice_before
    assert not any(s.accepted for s in choice.steps)


def test_per_class_step_kept_only_for_the_class_it_helps():
    ref = np.zeros((10, 16, 16), np.uint8)
    ref[2:6, 2:8, 2:8] = 1
    ref[8:10, 0:2, 0:2] = 1  # class 1 truly has a second, small component
    ref[2:6, 9:12, 9:12] = 2  # class 2 apart from class 1
    pred = ref.copy()
    pred[8:10, 13:15, 13:15] = 2  # a spurious class-2 blob
    # the foreground step would keep class 1's box only (losing class 2): rejected;
    # class 1's step would remove its true component: rejected; class 2's step helps: kept
    counts = variant_counts(ref, pred, [1, 2])[None]
    choice = choose_postprocessing(variant_dice(counts), [1, 2], {1: "a", 2: "b"})
    assert choice.postprocessing == Postprocessing(
        largest_component_foreground=False, largest_component_classes=[2]
    )
    assert [s.accepted for s in choice.steps] == [False, False, True]
    assert choice.steps[2].class_dice_after[1] == choice.steps[2].class_dice_before[1]
    assert choice.steps[2].class_dice_after[2] == 1.0


def test_undefined_cases_stay_out_of_the_choice():
    # a case without class 2 in reference and prediction has undefined Dice for it
    ref, pred = _case(spurious=True)
    ref[ref == 2] = 1
    pred[pred == 2] = 1
    counts = variant_counts(ref, pred, [1, 2])[None]
    dice = variant_dice(counts)
    assert math.isnan(dice["none"][0, 1])
    choice = choose_postprocessing(dice, [1, 2], {1: "a", 2: "b"})
    assert choice.postprocessing.largest_component_foreground
    assert math.isnan(choice.steps[0].class_dice_after[2])


def _selection() -> Selection:
    return Selection(
        dataset="Toy",
        candidate="2d+3d_fullres",
        configurations=["2d", "3d_fullres"],
        folds=[0, 1, 2, 3, 4],
        postprocessing=Postprocessing(True, [2]),
        mean_dice=0.81,
        mean_dice_postprocessed=0.83,
        class_dice={1: 0.9, 2: 0.72},
        class_dice_postprocessed={1: 0.9, 2: 0.76},
        interval=Interval(0.78, 0.84),
        rank_first_frequency=0.71,
        labels={1: "liver", 2: "tumour"},
        num_cases=10,
        bootstrap_samples=1000,
        postprocessing_steps=[
            PostprocessingStep("x", None, True, 0.81, 0.82, {1: 0.9, 2: math.nan}, {1: 0.9, 2: 0.7})
        ],
        candidates=[
            CandidateScore(
                "2d", ["2d"], 0.7, Interval(0.6, 0.8), 0.29, 0.11, Interval(0.05, 0.2), 0.97
            )
        ],
        evaluation_digest="abc",
    )


def test_selection_round_trip(tmp_path):
    selection = _selection()
    selection.save(tmp_path / "selection.json")
    loaded = Selection.load(tmp_path / "selection.json")
    assert loaded.to_dict() == selection.to_dict()
    assert loaded.is_ensemble
    assert loaded.postprocessing == Postprocessing(True, [2])
    assert math.isnan(loaded.postprocessing_steps[0].class_dice_before[2])


def test_selection_load_errors_name_the_file(tmp_path):
    path = tmp_path / "Toy" / "selection.json"
    with pytest.raises(ToolkitError, match="toolkit select Toy"):
        Selection.load(path)
    path.parent.mkdir()
    path.write_text("{")
    with pytest.raises(ToolkitError, match="not valid JSON"):
        Selection.load(path)
    data = _selection().to_dict()
    del data["folds"]
    path.write_text(json.dumps(data))
    with pytest.raises(ToolkitError, match="missing key 'folds'") as info:
        Selection.load(path)
    assert info.value.path == path
