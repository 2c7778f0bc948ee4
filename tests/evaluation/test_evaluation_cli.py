import json
import re

import pytest
from evaluation_helpers import (
    add_configuration,
    combine,
    make_dataset,
    spurious_blob,
    wrong_left,
    wrong_right,
)

from toolkit.cli import main
from toolkit.core.postprocessing import Postprocessing
from toolkit.core.selection import Selection

PNG = b"\x89PNG\r\n\x1a\n"


def _run(argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code or 0


def test_evaluate_then_select_write_every_file_and_plot(workspace, capsys):
    paths = make_dataset(workspace)
    add_configuration(paths, "3d_fullres", combine(wrong_left, spurious_blob))
    add_configuration(paths, "2d", combine(wrong_right, spurious_blob))
    assert _run(["evaluate", "Toy", "--workers", "2", "--quiet"]) == 0
    for path in (
        paths.evaluation_cases_csv,
        paths.evaluation_summary_json,
        paths.bootstrap_json,
        paths.evaluation_report,
    ):
        assert path.is_file(), path
    figures = sorted(p.name for p in paths.evaluation.glob("*.png"))
    assert figures == [
        "bootstrap.png",
        "dice_boxplots.png",
        "differences.png",
        "rank_frequency.png",
    ] + [
        f"segmentation_class{k}_{role}.png" for k in (1, 2) for role in ("best", "median", "worst")
    ]
    for name in figures:
        assert (paths.evaluation / name).read_bytes()[:8] == PNG
    report = paths.evaluation_report.read_text()
    assert f"Not selected yet: run `toolkit select {paths.name}`" in report
    assert "best: 2d+3d_fullres" in capsys.readouterr().err

    assert _run(["select", "Toy", "-q"]) == 0
    err = capsys.readouterr().err
    assert "selected 2d+3d_fullres" in err and "largest component of the foreground" in err
    selection = Selection.load(paths.selection_json)
    assert selection.configurations == ["2d", "3d_fullres"]
    report = paths.evaluation_report.read_text()
    # the report reads without the JSON: choice, interval, frequency, postprocessing and figures
    assert "**2d+3d_fullres** has the best mean foreground Dice" in report
    assert re.search(r"95% interval \[\d\.\d{4}, \d\.\d{4}\]", report)
    assert "| largest connected component of the whole foreground | yes |" in report
    for name in figures:
        assert f"]({name})" in report
    data = json.loads(paths.selection_json.read_text())
    assert data["postprocessing"] == {
        "largest_component_foreground": True,
        "largest_component_classes": [],
    }
    assert data["mean_dice_postprocessed"] > data["mean_dice"]
    # the same choice on its own, as `predict --postprocess` and `ensemble --postprocess` read it
    assert Postprocessing.load(paths.postprocessing_json) == selection.postprocessing


def test_missing_predictions_is_one_line_naming_config_fold_and_command(workspace, capsys):
    paths = make_dataset(workspace)
    add_configuration(paths, "3d_fullres", wrong_left, skip={"case_002"})
    assert _run(["evaluate", "Toy", "--configs", "3d_fullres", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: {paths.validation_prediction('3d_fullres', 2, 'case_002')}: not found: "
        "run `toolkit train Toy 3d_fullres 2` first"
    )
    assert _run(["select", "Toy", "-q"]) == 2
    assert "run `toolkit evaluate Toy` first" in capsys.readouterr().err
    assert _run(["evaluate", "Toy", "--nsd-tolerance", "0", "-q"]) == 2
    assert "--nsd-tolerance must be a positive distance" in capsys.readouterr().err
