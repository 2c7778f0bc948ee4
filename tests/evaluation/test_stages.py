import json
import math
import os

import numpy as np
import pytest
from evaluation_helpers import (
    add_configuration,
    case_name,
    combine,
    fold_of,
    geometry,
    make_dataset,
    nothing_wrong,
    spurious_blob,
    wrong_left,
    wrong_right,
)

from toolkit.core.selection import Selection
from toolkit.errors import MissingStageError, ToolkitError
from toolkit.evaluation.bootstrap import BootstrapResult
from toolkit.evaluation.report import current_selection
from toolkit.evaluation.stage import EvaluationOptions, evaluate_dataset, select_dataset
from toolkit.evaluation.tables import CSV_COLUMNS, EvaluationSummary, read_cases_csv
from toolkit.inference.ensemble import save_probabilities
from toolkit.io.dataset_json import DatasetInfo, write_dataset_info
from toolkit.io.images import Geometry, write_image
from toolkit.workspace import DatasetPaths, label_file


@pytest.fixture
def toy(tmp_path):
    return make_dataset(tmp_path)


def test_ensemble_chosen_when_better_and_spurious_blob_removed(toy):
    add_configuration(toy, "3d_fullres", combine(wrong_left, spurious_blob))
    add_configuration(toy, "2d", combine(wrong_right, spurious_blob))
    summary = evaluate_dataset(toy, workers=1, quiet=True)
    assert summary.candidate_names == ["2d", "3d_fullres", "2d+3d_fullres"]
    assert summary.chosen == "2d+3d_fullres"
    assert summary.complete and summary.num_cases == 10
    ensemble = summary.candidate("2d+3d_fullres")
    assert ensemble.mean_dice > max(
        summary.candidate("2d").mean_dice, summary.candidate("3d_fullres").mean_dice
    )
    # the ensemble is right everywhere but the blob both configurations predict
    rows = [r for r in read_cases_csv(toy.evaluation_cases_csv) if r.candidate == "2d+3d_fullres"]
    for r in rows:
        i = int(r.case.split("_")[1])
        if r.label == 2 and i % 4 == 3:
            # no tumour in reference or prediction
            assert math.isnan(r.dice) and r.tp == r.fp == r.fn == 0
        elif r.label == 1 and i % 2 == 0:
            assert r.fp == 8 and r.fn == 0
        else:
            assert r.dice == 1.0
    assert ensemble.classes[2].defined_cases == 8  # cases 3 and 7 have no tumour

    selection = select_dataset(toy, workers=1, quiet=True)
    assert selection.candidate == "2d+3d_fullres"
    assert selection.configurations == ["2d", "3d_fullres"] and selection.is_ensemble
    assert selection.folds == [0, 1, 2, 3, 4]
    assert selection.postprocessing.largest_component_foreground
    assert selection.postprocessing.largest_component_classes == []
    assert selection.mean_dice == pytest.approx(ensemble.mean_dice)
    assert selection.mean_dice_postprocessed == pytest.approx(1.0)
    boot = BootstrapResult.from_dict(json.loads(toy.bootstrap_json.read_text()))
    assert selection.interval == boot.candidate("2d+3d_fullres").interval
    assert (
        selection.rank_first_frequency
        == boot.candidate("2d+3d_fullres").rank_first_frequency
        == 1.0
    )
    assert [c.name for c in selection.candidates] == summary.candidate_names
    assert Selection.load(toy.selection_json).to_dict() == selection.to_dict()


def test_ensemble_not_chosen_when_it_only_ties(toy):
    add_configuration(toy, "3d_fullres", nothing_wrong)
    add_configuration(toy, "2d", wrong_right)
    summary = evaluate_dataset(toy, workers=1, quiet=True)
    assert (
        summary.candidate("2d+3d_fullres").mean_dice
        == summary.candidate("3d_fullres").mean_dice
        == 1.0
    )
    assert summary.chosen == "3d_fullres"
    selection = select_dataset(toy, workers=1, quiet=True)
    assert selection.configurations == ["3d_fullres"]
    assert selection.postprocessing.is_identity  # nothing to improve
    assert selection.mean_dice_postprocessed == selection.mean_dice == 1.0


def test_single_configuration_without_ensembles(toy):
    add_configuration(toy, "3d_fullres", wrong_left)
    add_configuration(toy, "2d", wrong_right, with_probabilities=False)
    summary = evaluate_dataset(toy, workers=1, quiet=True)
    assert summary.candidate_names == ["2d", "3d_fullres"]
    assert "no ensembles" in summary.notes["2d"]
    summary = evaluate_dataset(toy, EvaluationOptions(ensembles=False), workers=1, quiet=True)
    assert summary.notes == {}


def test_incomplete_configuration_is_left_out_with_the_command_that_completes_it(toy):
    add_configuration(toy, "3d_fullres", wrong_left)
    add_configuration(toy, "3d_lowres", wrong_right, skip={case_name(7)})
    summary = evaluate_dataset(toy, workers=1, quiet=True)
    assert summary.candidate_names == ["3d_fullres"]
    fold = fold_of(toy)[case_name(7)]
    assert f"run `toolkit train Toy 3d_lowres {fold}`" in summary.notes["3d_lowres"]
    assert "3d_lowres" in toy.evaluation_report.read_text()
    # asked for by name, an incomplete configuration is an error naming the file and command
    with pytest.raises(MissingStageError) as info:
        evaluate_dataset(
            toy, EvaluationOptions(configurations=["3d_lowres"]), workers=1, quiet=True
        )
    assert info.value.path == toy.validation_prediction("3d_lowres", fold, case_name(7))
    assert info.value.command == f"toolkit train Toy 3d_lowres {fold}"


def test_nothing_trained_or_no_split(toy):
    with pytest.raises(MissingStageError, match="toolkit train Toy CONFIG FOLD"):
        evaluate_dataset(toy, workers=1, quiet=True)
    add_configuration(toy, "2d", wrong_left, skip={case_name(0)})
    with pytest.raises(MissingStageError) as info:
        evaluate_dataset(toy, workers=1, quiet=True)
    assert info.value.command == "toolkit train Toy 2d 0"
    toy.splits_json.unlink()
    with pytest.raises(MissingStageError) as info:
        evaluate_dataset(toy, workers=1, quiet=True)
    assert info.value.path == toy.splits_json


def test_partial_cross_validation_says_so(toy):
    # fold 4 incomplete: not evaluated
    add_configuration(toy, "2d", wrong_left, skip={case_name(9)})
    summary = evaluate_dataset(toy, EvaluationOptions(folds=[0, 1]), workers=1, quiet=True)
    assert not summary.complete
    assert summary.folds == [0, 1] and summary.num_cases == 4 and summary.total_cases == 10
    assert "partial cross-validation" in toy.evaluation_report.read_text()
    selection = select_dataset(toy, workers=1, quiet=True)
    assert selection.folds == [0, 1] and not selection.complete_cross_validation
    with pytest.raises(ToolkitError, match="do not exist"):
        evaluate_dataset(toy, EvaluationOptions(folds=[7]), workers=1, quiet=True)


def test_bad_predictions_are_errors_naming_the_file(toy):
    add_configuration(toy, "2d", wrong_left)
    path = toy.validation_prediction("2d", 0, case_name(0))
    bad = np.zeros((8, 24, 24), np.uint8)
    bad[0, 0, 0] = 7
    write_image(path, bad, geometry())
    with pytest.raises(ToolkitError, match=r"label value\(s\) \[7\] not declared") as info:
        evaluate_dataset(toy, workers=1, quiet=True)
    assert info.value.path == path
    write_image(path, np.zeros((8, 24, 20), np.uint8), geometry((8, 24, 20)))
    with pytest.raises(ToolkitError, match="does not match the geometry"):
        evaluate_dataset(toy, workers=1, quiet=True)
    add_configuration(toy, "2d", wrong_left)
    add_configuration(toy, "3d_fullres", wrong_right)
    npz = toy.validation_probabilities("3d_fullres", 1, case_name(1))
    np.savez_compressed(npz, probabilities=np.zeros((2, 8, 24, 24), np.float16))
    with pytest.raises(ToolkitError, match="expected") as info:
        evaluate_dataset(toy, workers=1, quiet=True)
    assert info.value.path == npz


def test_select_needs_a_current_evaluation(toy):
    with pytest.raises(MissingStageError, match="toolkit evaluate Toy"):
        select_dataset(toy, workers=1, quiet=True)
    add_configuration(toy, "2d", wrong_left)
    add_configuration(toy, "3d_fullres", wrong_right)
    evaluate_dataset(toy, workers=1, quiet=True)
    select_dataset(toy, workers=1, quiet=True)
    assert current_selection(toy)[0] is not None
    # evaluating again (another tolerance) makes the selection out of date, and the report says so
    evaluate_dataset(toy, EvaluationOptions(nsd_tolerance_mm=1.0), workers=1, quiet=True)
    selection, note = current_selection(toy)
    assert selection is None and "earlier evaluation" in note
    assert "earlier evaluation" in toy.evaluation_report.read_text()
    # predictions written after the evaluation: select refuses
    later = toy.evaluation_summary_json.stat().st_mtime_ns + 10**9
    folder = toy.validation_dir("2d", 3)
    os.utime(folder, ns=(later, later))
    with pytest.raises(ToolkitError, match="changed after the evaluation") as info:
        select_dataset(toy, workers=1, quiet=True)
    assert info.value.path == folder


def test_files_are_consistent(toy):
    add_configuration(toy, "2d", wrong_left)
    add_configuration(toy, "3d_fullres", wrong_right)
    summary = evaluate_dataset(toy, workers=1, quiet=True)
    header = toy.evaluation_cases_csv.read_text().splitlines()[0]
    assert header.split(",") == CSV_COLUMNS
    rows = read_cases_csv(toy.evaluation_cases_csv)
    assert len(rows) == 3 * 10 * 2
    loaded = EvaluationSummary.load(toy.evaluation_summary_json)
    assert loaded.to_dict() == summary.to_dict()
    data = json.loads(toy.evaluation_summary_json.read_text())
    assert data["labels"] == {"1": "liver", "2": "tumour"}
    assert data["complete_cross_validation"] is True
    # per-fold means partition the cases
    for c in summary.candidates:
        assert sorted(c.fold_mean_dice) == [0, 1, 2, 3, 4]


def test_two_dimensional_dataset(tmp_path):
    # 2D images are read as (1, y, x); metrics run in 2D and volumes are areas in mm^2
    paths = DatasetPaths(tmp_path / "Flat")
    write_dataset_info(paths.dataset_json, DatasetInfo({"0": "X"}, {"background": 0, "cell": 1}, 5))
    geo = Geometry((0.5, 0.5), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0), (20, 16))
    cases = [f"img{i}" for i in range(5)]
    for i, case in enumerate(cases):
        ref = np.zeros((1, 16, 20), np.uint8)
        ref[0, 4:10, 4 + i : 12 + i] = 1
        pred = np.roll(ref, 1, axis=1)
        write_image(paths.labels_tr / label_file(case), ref, geo)
        write_image(paths.validation_prediction("2d", i, case), pred, geo)
        probs = np.stack([1.0 - pred, pred]).astype(np.float16)
        save_probabilities(paths.validation_probabilities("2d", i, case), probs, geo)
    split = [{"train": [c for c in cases if c != v], "val": [v]} for v in cases]
    paths.splits_json.write_text(json.dumps(split))
    summary = evaluate_dataset(paths, workers=1, quiet=True)
    assert summary.candidate_names == ["2d"]
    row = read_cases_csv(paths.evaluation_cases_csv)[0]
    assert row.ref_volume_mm3 == pytest.approx(48 * 0.25)
    assert row.dice == pytest.approx(2 * 40 / 96)
    assert row.hd95_mm == pytest.approx(0.5)
    assert select_dataset(paths, workers=1, quiet=True).candidate == "2d"
