import json

from evaluation_helpers import (
    add_configuration,
    combine,
    fold_of,
    make_dataset,
    spurious_blob,
    wrong_left,
)

from toolkit.evaluation.budget import describe_budget
from toolkit.evaluation.stage import evaluate_dataset


def test_budget_line_says_a_small_budget_and_no_mirroring():
    quick = {"epochs": 4, "iterations_per_epoch": 40, "mirroring": False, "precision": "fp32"}
    method = {"epochs": 1000, "iterations_per_epoch": 250, "mirroring": True}
    assert describe_budget("3d_fullres", [quick, quick]) == (
        "3d_fullres: 4 x 40 iterations, validation **without** test-time mirroring, fp32 per fold"
    )
    assert describe_budget("2d", [method]) == (
        "2d: 1000 x 250 iterations (the method's), validation with test-time mirroring per fold"
    )
    both = describe_budget("2d", [method, quick])
    assert "(the method's)" in both and "; 4 x 40" in both
    assert "not recorded" in describe_budget("2d", [])


def test_report_names_the_recorded_budget(tmp_path):
    toy = make_dataset(tmp_path, n_cases=5)
    add_configuration(toy, "3d_fullres", combine(wrong_left, spurious_blob))
    budget = {"epochs": 4, "iterations_per_epoch": 40, "mirroring": False}
    for fold in set(fold_of(toy).values()):
        summary = toy.validation_summary("3d_fullres", fold)
        summary.write_text(json.dumps({"cases": [], "training": budget}))
    evaluate_dataset(toy, workers=1, quiet=True)
    report = toy.evaluation_report.read_text()
    assert "- Training: 3d_fullres: 4 x 40 iterations, validation **without**" in report
