"""A killed stage's temporaries are removed by the next run of that stage: preprocess in
``preprocessed/``, evaluate and select in ``evaluation/``, predict and ensemble those of their
own outputs (and nothing else of a user's folder)."""

from __future__ import annotations

import numpy as np
import pytest
from fault_helpers import run, temporaries

from toolkit.convert.stage import convert_task
from toolkit.inference.files import sweep_output_temporaries
from toolkit.synthetic import generate_task
from toolkit.workspace import DatasetPaths

# what a kill mid-write leaves: atomic_path's temporary names
LEFT = ".{}.a1b2c3d4.tmp{}"


@pytest.fixture
def planned(tmp_path, capsys) -> DatasetPaths:
    task = generate_task("mr", tmp_path / "src", n_cases=3, seed=2, shape=(8, 24, 24), n_test=1)
    paths = DatasetPaths(tmp_path / "ws" / "Synth")
    convert_task(task, paths, workers=1, quiet=True)
    assert run(capsys, "fingerprint", paths.root, "-j", "1", "-q")[0] == 0
    assert run(capsys, "plan", paths.root, "--preset", "cpu")[0] == 0
    return paths


def test_preprocess_sweeps_what_a_killed_preprocess_left(planned, capsys):
    assert run(capsys, "preprocess", planned.root, "-c", "2d", "-j", "1", "-q")[0] == 0
    folder = next(planned.preprocessed.iterdir())
    case = sorted(p.name for p in folder.glob("*.npy"))[0]
    np.save(folder / LEFT.format(case, ".npy"), np.zeros(1000))
    kept = folder / "notes.txt"  # not a temporary: kept
    kept.write_text("mine")
    assert run(capsys, "preprocess", planned.root, "-c", "2d", "-j", "1", "-q")[0] == 0
    assert not temporaries(planned.root) and kept.is_file()


def test_evaluate_sweeps_its_folder_before_anything_else(planned, capsys):
    planned.evaluation.mkdir()
    left = planned.evaluation / LEFT.format("cases.csv", ".csv")
    left.write_text("half")
    # nothing is trained: evaluate stops with its one-line error, after sweeping
    code, _, err = run(capsys, "evaluate", planned.root, "-q")
    assert code == 2 and err.startswith("error: ")
    assert not left.exists()


def test_predict_sweeps_only_the_temporaries_of_its_own_outputs(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    mine = [LEFT.format("CASE.nii.gz", ".nii.gz"), LEFT.format("CASE.npz", ".npz")]
    mine.append(LEFT.format("CASE_preview.png", ".png"))
    other = LEFT.format("OTHER.nii.gz", ".nii.gz")  # another writer's, in the user's folder
    for name in [*mine, other]:
        (out / name).write_text("half")
    assert sweep_output_temporaries([out / "CASE.nii.gz"]) == 3
    assert [p.name for p in out.iterdir()] == [other]


def test_run_all_sweeps_its_records_and_the_datasets_own_files(tmp_path):
    from toolkit.pipeline.records import sweep_run_temporaries

    paths = DatasetPaths(tmp_path / "Synth")
    paths.pipeline.mkdir(parents=True)
    left = [
        paths.pipeline / LEFT.format("evaluate.json", ".json"),
        paths.root / LEFT.format("plans.json", ".json"),
        paths.root / LEFT.format("splits.json", ".json"),
    ]
    kept = [paths.root / LEFT.format("notes.txt", ".txt"), paths.root / "plans.json"]
    for path in left + kept:
        path.write_text("{}")
    assert sweep_run_temporaries(paths) == 3
    assert not any(p.exists() for p in left) and all(p.exists() for p in kept)
