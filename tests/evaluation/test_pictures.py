import math

import numpy as np
from evaluation_helpers import (
    add_configuration,
    case_name,
    combine,
    fold_of,
    make_dataset,
    spurious_blob,
    wrong_left,
    wrong_right,
)

from toolkit.evaluation.pictures import ShownCase, cases_to_show, picture_section
from toolkit.evaluation.report import write_report
from toolkit.evaluation.stage import evaluate_dataset
from toolkit.evaluation.tables import EvaluationSummary

NAN = math.nan


def shown_as_text(shown):
    return [(s.label, s.roles, s.case) for s in shown]


def test_best_median_and_worst_case_per_class():
    cases = ["a", "b", "c", "d", "e", "f"]
    dice = np.array(
        [
            [0.9, NAN, 0.5],
            [0.2, NAN, 0.5],
            [0.7, 0.4, 0.5],
            [NAN, NAN, 0.5],  # class 1 undefined in d: left out
            [0.95, NAN, 0.5],
            [0.6, NAN, 0.5],
        ]
    )
    shown = cases_to_show(cases, dice, [1, 2, 3])
    assert shown_as_text(shown) == [
        # class 1 ascending: b 0.2, f 0.6, c 0.7, a 0.9, e 0.95; the median: the lower middle
        (1, ("best",), "e"),
        (1, ("median",), "c"),
        (1, ("worst",), "b"),
        # one defined case: all three roles, one picture
        (2, ("best", "median", "worst"), "c"),
        # all equal: ordered by case, so three different cases
        (3, ("best",), "f"),
        (3, ("median",), "c"),
        (3, ("worst",), "a"),
    ]
    assert [s.figure_name for s in shown[:4]] == [
        "segmentation_class1_best",
        "segmentation_class1_median",
        "segmentation_class1_worst",
        "segmentation_class2_best",
    ]
    assert shown[0].dice == 0.95
    assert cases_to_show(cases, np.full((6, 1), NAN), [1]) == []  # never defined: nothing


def test_section_names_cases_dice_and_missing_pictures():
    summary = EvaluationSummary(
        dataset="Toy",
        folds=[0],
        num_folds=1,
        num_cases=2,
        total_cases=2,
        cases=["a", "b"],
        labels={1: "liver", 2: "tumour"},
        nsd_tolerance_mm=2.0,
        tie_tolerance=0.0005,
        chosen="3d_fullres",
    )
    best = ShownCase(1, ("best",), "a", 0.91234)
    worst = ShownCase(1, ("median", "worst"), "b", 0.5)
    lines = picture_section(
        summary, "0, CT", [best, worst], {best: "z 3 of 8"}, {worst: "x.nii.gz: file not found"}
    )
    text = "\n".join(lines)
    assert "## What the segmentations look like" in text and "**3d_fullres**" in text
    assert "**best: a, Dice 0.9123** (z 3 of 8)" in text
    assert "](segmentation_class1_best.png)" in text
    assert "**median = worst: b, Dice 0.5000**: no picture, x.nii.gz: file not found" in text
    assert "### Class 2: tumour\n\nNo case holds this class" in text


def test_report_pictures_and_a_missing_prediction(tmp_path):
    toy = make_dataset(tmp_path, n_cases=5)
    add_configuration(toy, "3d_fullres", combine(wrong_left, spurious_blob))
    add_configuration(toy, "2d", combine(wrong_right, spurious_blob))
    evaluate_dataset(toy, workers=1, quiet=True)
    section = toy.evaluation_report.read_text().split("## What the segmentations look like")[1]
    section = section.split("\n## ")[0]
    assert "**2d+3d_fullres**" in section  # the ensemble is chosen: its argmax is drawn
    assert "### Class 1: liver" in section and "### Class 2: tumour" in section
    pictures = sorted(p.name for p in toy.evaluation.glob("segmentation_*.png"))
    assert pictures == [
        f"segmentation_class{k}_{role}.png" for k in (1, 2) for role in ("best", "median", "worst")
    ]
    for name in pictures:
        assert f"]({name})" in section
        assert (toy.evaluation / name).read_bytes()[:4] == b"\x89PNG"

    # the report again, without one member's probabilities of class 1's worst case
    worst = section.split("**worst: ")[1].split(",")[0]
    assert worst in {case_name(i) for i in range(5)}
    toy.validation_probabilities("2d", fold_of(toy)[worst], worst).unlink()
    write_report(toy)
    section = toy.evaluation_report.read_text().split("## What the segmentations")[1]
    assert f"**worst: {worst}, " in section and "probabilities not found" in section
    assert not (toy.evaluation / "segmentation_class1_worst.png").exists()  # none stale
    assert (toy.evaluation / "segmentation_class1_best.png").is_file()
