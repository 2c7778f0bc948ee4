"""A region-based task from start to finish, as a user runs it: convert (regions declared in
the task's dataset.json), run-all --preset smoke, predict (labels and region probabilities),
toolkit ensemble of saved region probabilities, export-container's dry run; metrics are
reported per region name."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from pipeline_helpers import SMOKE_RUN_ALL_ARGS

from toolkit.cli import main
from toolkit.container import wheels
from toolkit.inference.ensemble import load_probabilities
from toolkit.synthetic import generate_task

pytestmark = pytest.mark.slow

REGION_NAMES = ["whole tumour", "tumour core", "enhancing tumour"]


def run(capsys, *args):
    with pytest.raises(SystemExit) as done:
        main([str(a) for a in args])
    out = capsys.readouterr()
    assert (done.value.code or 0) == 0, out.err
    return out.out


@pytest.mark.timeout(3000)
def test_region_task_converts_trains_predicts_and_exports(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(wheels, "runtime_requirements", lambda device, **_: ["numpy==2.4.6"])
    task = generate_task("brats", tmp_path / "src", n_cases=6, n_test=1, seed=3, shape=(16, 32, 32))
    ws = tmp_path / "ws"
    run(capsys, "convert", task, "-w", ws, "--name", "Regions", "--quiet")
    run(
        capsys,
        "run-all",
        "Regions",
        "-w",
        ws,
        *SMOKE_RUN_ALL_ARGS,
    )
    dataset = ws / "Regions"
    summary = json.loads((dataset / "evaluation" / "summary.json").read_text())
    assert list(summary["labels"].values()) == REGION_NAMES
    rows = (dataset / "evaluation" / "cases.csv").read_text()
    assert all(name in rows for name in REGION_NAMES)
    report = (dataset / "evaluation" / "report.md").read_text()
    assert all(f": {name}" in report for name in REGION_NAMES)
    selection = json.loads((dataset / "selection.json").read_text())
    assert list(selection["labels"].values()) == REGION_NAMES
    assert not selection["postprocessing"].get("largest_component_classes")  # regions only
    fold = json.loads(
        (dataset / "models" / "3d_fullres" / "fold_0" / "validation" / "summary.json").read_text()
    )
    assert set(fold["mean_dice"]) == {"1", "2", "3"}

    outputs = []
    for config in ("2d", "3d_fullres"):
        out = tmp_path / f"pred_{config}"
        run(
            capsys,
            "predict",
            "-d",
            "Regions",
            "-w",
            ws,
            "-i",
            task / "imagesTs",
            "-o",
            out,
            "--config",
            config,
            "--device",
            "cpu",
            "--save-probabilities",
            "-q",
        )
        saved = load_probabilities(out / "synthbrats_007.npz")
        assert saved.regions_class_order == (1, 2, 3) and saved.probabilities.shape[0] == 3
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "synthbrats_007.nii.gz")))
        assert set(np.unique(labels).tolist()) <= {0, 1, 2, 3}
        outputs.append(out)
    ensembled = tmp_path / "ensembled"
    run(capsys, "ensemble", "-i", *outputs, "-o", ensembled, "-q")
    members = [load_probabilities(o / "synthbrats_007.npz").probabilities for o in outputs]
    mean = (members[0] + members[1]) / 2
    expected = np.zeros(mean.shape[1:], dtype=np.uint8)
    for channel, value in zip(mean, (1, 2, 3), strict=True):
        expected[channel > 0.5] = value
    got = sitk.GetArrayFromImage(sitk.ReadImage(str(ensembled / "synthbrats_007.nii.gz")))
    assert np.array_equal(got, expected)

    run(capsys, "export-container", "Regions", "-w", ws, "--no-build", "-q")
    record = json.loads((dataset / "export" / "export.json").read_text())
    assert record["test_run"]["identical"] is True and record["test_run"]["ok"] is True
    algorithm = json.loads(
        next((dataset / "export" / "context").rglob("algorithm.json")).read_text()
    )
    assert algorithm["labels"] == {
        "background": 0,
        **dict(zip(REGION_NAMES, (1, 2, 3), strict=True)),
    }
